"""Platform callbacks: verified (signature) and decrypted (safe mode) before anything is read.

Official Account: ``GET`` answers the URL check with ``echostr``; ``POST`` carries events such
as MASSSENDJOBFINISH, encrypted with WXBizMsgCrypt when ``encrypt_type=aes``. A callback that
fails verification gets 403 and is never parsed further; nothing secret is logged.
"""

from __future__ import annotations

import hmac
import logging

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import PlainTextResponse

from qunfa.api.deps import ContainerDep
from qunfa.crypto.wxbizmsgcrypt import CryptoError, WXBizMsgCrypt, parse_xml, signature
from qunfa.services.accounts import AccountError

router = APIRouter(prefix="/callbacks", tags=["callbacks"])
log = logging.getLogger("qunfa.callbacks")


def _credentials(c: ContainerDep, appid: str) -> tuple[object, dict[str, str]]:
    try:
        acc = c.accounts.get(appid)
    except AccountError:
        raise HTTPException(404, f"no account with appid {appid}") from None
    return acc, c.accounts.credentials(acc)


def _check_plain(token: str, sig: str, timestamp: str, nonce: str) -> None:
    if not token or not hmac.compare_digest(signature(token, timestamp, nonce), sig):
        raise HTTPException(403, "signature does not match the account's token")


@router.get("/wechat/{appid}", response_class=PlainTextResponse)
def wechat_verify(
    appid: str, c: ContainerDep, signature: str, timestamp: str, nonce: str, echostr: str
) -> str:
    """The Official Account URL check: verify the signature, echo ``echostr`` verbatim."""
    _, creds = _credentials(c, appid)
    _check_plain(creds.get("token", ""), signature, timestamp, nonce)
    return echostr


@router.post("/wechat/{appid}", response_class=PlainTextResponse)
async def wechat_event(appid: str, request: Request, c: ContainerDep) -> str:
    acc, creds = _credentials(c, appid)
    qp = request.query_params
    timestamp, nonce = qp.get("timestamp", ""), qp.get("nonce", "")
    _check_plain(creds.get("token", ""), qp.get("signature", ""), timestamp, nonce)
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        if qp.get("encrypt_type") == "aes":
            crypt = WXBizMsgCrypt(creds["token"], creds["encoding_aes_key"], appid)
            inner = crypt.decrypt_message(body, qp.get("msg_signature", ""), timestamp, nonce)
        else:
            inner = body
        fields = parse_xml(inner)
    except CryptoError as exc:
        log.warning("rejected callback for %s: %s", appid, exc)
        raise HTTPException(403, f"callback failed verification ({exc.code})") from None
    result = c.reconciler.handle_wechat_event(acc, fields)
    log.info("callback %s %s → %s", appid, fields.get("Event", fields.get("MsgType")), result)
    return "success"
