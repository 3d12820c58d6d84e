"""Pushed per-recipient receipts: SMS status reports and e-mail bounces.

- ``POST /callbacks/sms_tencent/{sdk_app_id}``: Tencent's status-report array
  (``sid``, ``report_status`` SUCCESS|FAIL, ``errmsg``, ``description`` …); answers
  ``{"result": 0, "errmsg": "OK"}``.
- ``POST /callbacks/sms_aliyun/{access_key_id}``: Aliyun's SmsReport array (``biz_id``,
  ``phone_number``, ``success``, ``err_code``, ``err_msg`` …); answers
  ``{"code": 0, "msg": "成功"}``.
- ``POST /callbacks/email/{from_address}``: ``{"bounces": [{message_id, status, diagnostic}]}``.

Each receipt names the per-recipient message id the adapter returned at send time (Tencent
SerialNo; ``"{BizId}:{+86…}"`` for Aliyun; the Message-ID for e-mail) and goes to
``Reconciler.apply_receipts``. Neither SMS platform signs its reports, so the receiving URL is
the secret: when the account's credentials hold ``callback_token``, the URL must carry
``?token=<it>`` (compared in constant time) or the request is refused with 403.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy import select

from qunfa.api.deps import ContainerDep
from qunfa.channels.base import RecipientOutcome
from qunfa.channels.sms_common import PhoneError, normalize_cn_phone
from qunfa.storage.models import Account

router = APIRouter(prefix="/callbacks", tags=["callbacks"])
log = logging.getLogger("qunfa.callbacks")


def _account(c: ContainerDep, channel: str, app_id: str, request: Request) -> Account:
    with c.sessions() as s:
        acc = s.scalars(
            select(Account).where(Account.channel == channel, Account.app_id == app_id)
        ).one_or_none()
    if acc is None:
        raise HTTPException(404, f"no {channel} account {app_id}")
    expected = c.accounts.credentials(acc).get("callback_token", "")
    given = request.query_params.get("token", "")
    if expected and not hmac.compare_digest(expected.encode(), given.encode()):
        raise HTTPException(403, "token does not match the account's callback_token")
    return acc


def _apply(c: ContainerDep, acc: Account, receipts: list[tuple[str, RecipientOutcome]]) -> int:
    changed: int = c.reconciler.apply_receipts(acc, receipts)
    log.info("%s %s: %d receipts, %d deliveries changed", acc.channel, acc.app_id,
             len(receipts), changed)  # fmt: skip
    return changed


async def _items(request: Request, key: str | None = None) -> list[dict[str, Any]]:
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "body is not JSON") from None
    if key is not None and isinstance(body, dict):
        body = body.get(key, [])
    if isinstance(body, dict):
        body = [body]
    if not isinstance(body, list) or not all(isinstance(i, dict) for i in body):
        raise HTTPException(400, "expected a JSON array of report objects")
    return body


@router.post("/sms_tencent/{sdk_app_id}")
async def sms_tencent_reports(sdk_app_id: str, request: Request, c: ContainerDep) -> dict[str, Any]:
    acc = _account(c, "sms_tencent", sdk_app_id, request)
    receipts = []
    for item in await _items(request):
        ok = str(item.get("report_status", "")).upper() == "SUCCESS"
        reason = None if ok else f"{item.get('errmsg', '')} {item.get('description', '')}".strip()
        receipts.append(
            (str(item.get("sid", "")), RecipientOutcome("sent" if ok else "failed", reason))
        )
    changed = c.reconciler.apply_receipts(acc, receipts)
    log.info(
        "sms_tencent %s: %d reports, %d deliveries changed", sdk_app_id, len(receipts), changed
    )
    return {"result": 0, "errmsg": "OK"}


@router.post("/sms_aliyun/{access_key_id}")
async def sms_aliyun_reports(
    access_key_id: str, request: Request, c: ContainerDep
) -> dict[str, Any]:
    acc = _account(c, "sms_aliyun", access_key_id, request)
    receipts = []
    for item in await _items(request):
        try:
            phone = normalize_cn_phone(str(item.get("phone_number", "")))
        except PhoneError:
            log.warning("sms_aliyun %s: report for an unparseable number skipped", access_key_id)
            continue
        ok = item.get("success") in (True, "true", "True", 1)
        reason = None if ok else f"{item.get('err_code', '')} {item.get('err_msg', '')}".strip()
        msg_id = f"{item.get('biz_id', '')}:{phone}"
        receipts.append((msg_id, RecipientOutcome("sent" if ok else "failed", reason)))
    changed = c.reconciler.apply_receipts(acc, receipts)
    log.info(
        "sms_aliyun %s: %d reports, %d deliveries changed", access_key_id, len(receipts), changed
    )
    return {"code": 0, "msg": "成功"}


@router.post("/email/{from_address}")
async def email_bounces(from_address: str, request: Request, c: ContainerDep) -> dict[str, Any]:
    acc = _account(c, "email", from_address, request)
    receipts = [
        (
            str(item.get("message_id", "")),
            RecipientOutcome(
                "failed", f"bounced: {item.get('status', '')} {item.get('diagnostic', '')}".strip()
            ),
        )
        for item in await _items(request, "bounces")
    ]
    changed = _apply(c, acc, receipts)
    return {"ok": True, "changed": changed}
