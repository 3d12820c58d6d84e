"""Consent, suppressions and the withdrawal routes people and platforms use (docs/consent.md).

- ``POST /api/consent``: grant or withdraw for a contact id or an address + kind.
- ``GET /api/contacts/{id}/consent``: the person's state per scope and ledger.
- ``GET/POST/DELETE /api/suppressions``: the global suppression list (addresses in the body,
  never in a URL, so they stay out of access logs).
- ``GET /u/{token}`` shows a confirmation page; ``POST /u/{token}`` (RFC 8058 one-click, body
  ``List-Unsubscribe=One-Click``, or the page's button) withdraws e-mail consent.
- ``POST /callbacks/sms_tencent/{sdk_app_id}/reply``: Tencent's 回复短信 push (a JSON object or
  array: ``extend``, ``mobile``, ``nationcode``, ``sign``, ``text``, ``time``), answered
  ``{"result": 0, "errmsg": "OK"}``; ``POST /callbacks/sms_aliyun/{access_key_id}/reply``:
  Aliyun's SmsUp messages (array: ``phone_number``, ``content``, ``sign_name``, ``send_time``,
  ``dest_code``, ``sequence_id``), answered ``{"code": 0, "msg": "成功"}``. Same URL token
  check as the receipts routes. An unsubscribe keyword withdraws SMS consent for the number.
"""

from __future__ import annotations

import html
import logging
import time
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from qunfa.api.deps import ContainerDep
from qunfa.api.routers.callbacks_receipts import _account, _items
from qunfa.domain.consent import ConsentError

router = APIRouter(tags=["consent"])
log = logging.getLogger("qunfa.consent")


class ConsentIn(BaseModel):
    action: Literal["grant", "withdraw"]
    contact_id: int | None = None
    kind: str | None = Field(None, description="phone | email | openid | external_userid …")
    address: str | None = None
    scope: str | None = Field(None, description="a channel or scope (sms, email, …, *)")
    source: str = "api"
    wording_version: str | None = None
    evidence: str | dict[str, Any] | None = None


class SuppressionIn(BaseModel):
    kind: str
    address: str
    scope: str | None = None
    reason: str = "manual"


def _bad(exc: ValueError) -> HTTPException:
    return HTTPException(422, str(exc))


@router.post("/api/consent")
def record_consent(body: ConsentIn, c: ContainerDep) -> dict[str, Any]:
    target: dict[str, Any] = {
        "scope": body.scope, "contact_id": body.contact_id, "kind": body.kind,
        "address": body.address, "source": body.source,
        "wording_version": body.wording_version, "evidence": body.evidence, "actor": "api",
    }  # fmt: skip
    try:
        record = c.consent.grant if body.action == "grant" else c.consent.withdraw
        res = record(**target)
    except ConsentError as exc:
        raise _bad(exc) from None
    return {"scope": res.scope, "contacts": res.contacts, "recorded": res.recorded,
            "suppressions_changed": res.suppressed}  # fmt: skip


@router.get("/api/contacts/{contact_id}/consent")
def contact_consent(contact_id: int, c: ContainerDep) -> dict[str, Any]:
    state: dict[str, Any] = c.consent.state(contact_id)
    return {**state, "ledger": c.consent.ledger(contact_id)}


@router.get("/api/suppressions")
def list_suppressions(
    c: ContainerDep,
    scope: str | None = None,
    kind: str | None = None,
    limit: int = 100,
    after_id: int = 0,
) -> dict[str, Any]:
    try:
        items = c.consent.list_suppressions(scope, kind, min(limit, 1000), after_id)
    except ConsentError as exc:
        raise _bad(exc) from None
    return {"items": items, "next_after_id": items[-1]["id"] if items else None}


@router.post("/api/suppressions", status_code=201)
def add_suppression(body: SuppressionIn, c: ContainerDep) -> dict[str, Any]:
    try:
        added = c.consent.suppress(
            body.kind, body.address, body.scope, reason=body.reason, source="api", actor="api"
        )
    except ConsentError as exc:
        raise _bad(exc) from None
    return {"added": bool(added)}


@router.delete("/api/suppressions")
def remove_suppression(body: SuppressionIn, c: ContainerDep) -> dict[str, Any]:
    try:
        removed = c.consent.unsuppress(body.kind, body.address, body.scope, actor="api")
    except ConsentError as exc:
        raise _bad(exc) from None
    return {"removed": removed}


# -- e-mail one-click unsubscribe -----------------------------------------------------------------
_PAGE = """<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">
<title>{title}</title></head><body><h1>{title}</h1><p>{text}</p>{form}</body></html>"""


@router.get("/u/{token}", response_class=HTMLResponse)
def unsubscribe_page(token: str, c: ContainerDep) -> HTMLResponse:
    """Confirmation page: a GET never unsubscribes (link scanners and previews fetch links)."""
    if c.consent.resolve_token(token) is None:
        raise HTTPException(404, "this unsubscribe link is not valid")
    form = (
        f'<form method="post" action="/u/{html.escape(token)}">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">退订 / Unsubscribe</button></form>'
    )
    return HTMLResponse(
        _PAGE.format(title="退订邮件 / Unsubscribe", text="不再接收这类邮件？", form=form)
    )


@router.post("/u/{token}", response_class=HTMLResponse)
async def unsubscribe(token: str, request: Request, c: ContainerDep) -> HTMLResponse:
    """RFC 8058 one-click (or the page's button): withdraw e-mail consent, idempotently."""
    body = (await request.body()).decode("utf-8", errors="replace")[:200]
    evidence = {"body": body, "at": time.time(), "user_agent": request.headers.get("user-agent")}
    if c.consent.unsubscribe(token, evidence) is None:
        raise HTTPException(404, "this unsubscribe link is not valid")
    return HTMLResponse(
        _PAGE.format(title="已退订 / Unsubscribed", text="您将不再收到这类邮件。", form="")
    )


# -- SMS replies (上行短信) ------------------------------------------------------------------------
@router.post("/callbacks/sms_tencent/{sdk_app_id}/reply")
async def sms_tencent_reply(sdk_app_id: str, request: Request, c: ContainerDep) -> dict[str, Any]:
    acc = _account(c, "sms_tencent", sdk_app_id, request)
    for item in await _items(request):
        phone = f"+{item.get('nationcode') or '86'}{item.get('mobile', '')}"
        _reply(c, acc, phone, str(item.get("text", "")), str(item.get("time", "")), item)
    return {"result": 0, "errmsg": "OK"}


@router.post("/callbacks/sms_aliyun/{access_key_id}/reply")
async def sms_aliyun_reply(access_key_id: str, request: Request, c: ContainerDep) -> dict[str, Any]:
    acc = _account(c, "sms_aliyun", access_key_id, request)
    for item in await _items(request):
        text = str(item.get("content", ""))
        _reply(
            c, acc, str(item.get("phone_number", "")), text, str(item.get("send_time", "")), item
        )
    return {"code": 0, "msg": "成功"}


def _reply(c: ContainerDep, acc: Any, phone: str, text: str, at: str, raw: Any) -> None:
    try:
        done = c.consent.sms_reply(acc, phone, text, at, raw)
    except ConsentError:
        log.warning("%s %s: a reply from an unparseable number skipped", acc.channel, acc.app_id)
        return
    log.info("%s %s: SMS reply %s", acc.channel, acc.app_id, done)
