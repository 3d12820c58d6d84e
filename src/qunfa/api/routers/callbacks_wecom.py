"""WeCom callbacks (回调): URL verification and encrypted events, verified before anything is read.

``GET /callbacks/wecom/{corpid}?msg_signature&timestamp&nonce&echostr``: the echostr is
*encrypted*; verify the signature over it, decrypt, and answer the plaintext exactly (no quotes
or newline). ``POST`` carries ``<xml><ToUserName/><AgentID/><Encrypt/></xml>``, signed the same
way and encrypted with WXBizMsgCrypt (receive id = corpid). Events such as
``change_external_contact`` (add/del/del_follow_user …) are stored in the ``events`` table,
deduplicated on (corpid, Event, ChangeType, ExternalUserID, CreateTime) because the platform
retries a callback 3 times. A callback that fails verification gets 403.
"""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy.exc import IntegrityError

from qunfa.api.deps import ContainerDep
from qunfa.bootstrap import Container
from qunfa.crypto.wxbizmsgcrypt import CryptoError, WXBizMsgCrypt, parse_xml
from qunfa.services.accounts import AccountError
from qunfa.storage.models import Account, Event

router = APIRouter(prefix="/callbacks", tags=["callbacks"])
log = logging.getLogger("qunfa.callbacks")


def _account(c: Container, corpid: str) -> Account:
    """The corp's customer-contact account (app_id = corpid), else any of its app accounts."""
    try:
        found: Account = c.accounts.get(corpid)
        return found
    except AccountError:
        others: list[Account] = c.accounts.all()
        for acc in others:
            if acc.channel.startswith("wecom") and acc.app_id.startswith(f"{corpid}:"):
                return acc
    raise HTTPException(404, f"no WeCom account for corpid {corpid}")


def _crypt(c: Container, corpid: str) -> tuple[Account, WXBizMsgCrypt]:
    acc = _account(c, corpid)
    creds = c.accounts.credentials(acc)
    try:
        return acc, WXBizMsgCrypt(creds.get("token", ""), creds.get("encoding_aes_key", ""), corpid)
    except CryptoError:
        raise HTTPException(
            409, "the account has no valid callback token / EncodingAESKey"
        ) from None


def record_event(c: Container, acc: Account, corpid: str, fields: dict[str, str]) -> bool:
    """Insert one event row; False when it is a retry of one already stored."""
    key = (
        f"{corpid}:{fields.get('Event', '')}:{fields.get('ChangeType', '')}:"
        f"{fields.get('ExternalUserID', '')}:{fields.get('CreateTime', '')}"
    )
    kind = f"wecom.{fields.get('Event') or fields.get('MsgType', 'unknown')}"
    with c.sessions() as s:
        s.add(
            Event(
                account_id=acc.id,
                kind=kind[:64],
                dedupe_key=key[:200],
                payload=dict(fields),
                received_at=time.time(),
            )
        )
        try:
            s.commit()
        except IntegrityError:
            s.rollback()
            return False
    return True


@router.get("/wecom/{corpid}", response_class=PlainTextResponse)
def wecom_verify(
    corpid: str, c: ContainerDep, msg_signature: str, timestamp: str, nonce: str, echostr: str
) -> str:
    """URL verification: the reply is the decrypted echostr, byte for byte."""
    _, crypt = _crypt(c, corpid)
    try:
        return crypt.verify_url(msg_signature, timestamp, nonce, echostr)
    except CryptoError as exc:
        log.warning("rejected WeCom URL check for %s: %s", corpid, exc)
        raise HTTPException(403, f"URL check failed verification ({exc.code})") from None


@router.post("/wecom/{corpid}", response_class=PlainTextResponse)
async def wecom_event(corpid: str, request: Request, c: ContainerDep) -> str:
    acc, crypt = _crypt(c, corpid)
    qp = request.query_params
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        inner = crypt.decrypt_message(
            body, qp.get("msg_signature", ""), qp.get("timestamp", ""), qp.get("nonce", "")
        )
        fields = parse_xml(inner)
    except CryptoError as exc:
        log.warning("rejected WeCom callback for %s: %s", corpid, exc)
        raise HTTPException(403, f"callback failed verification ({exc.code})") from None
    fresh = record_event(c, acc, corpid, fields)
    if fresh and fields.get("Event") == "change_external_contact":  # consent: docs/consent.md
        c.consent.wecom_removed(acc, fields)
    c.behaviour.on_wecom_event(acc, fields)  # customer added / app message → person events
    log.info(
        "WeCom callback %s %s/%s%s", corpid, fields.get("Event"), fields.get("ChangeType"),
        "" if fresh else " (duplicate)",
    )  # fmt: skip
    return "success"
