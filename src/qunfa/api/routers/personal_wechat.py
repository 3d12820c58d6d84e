"""Personal WeChat, assisted-manual, over REST: the person's batch queue, marks, tracked links.

qunfa never automates the WeChat client; these endpoints serve the person who sends by hand.
``GET /t/{token}`` is the public tracked link put into each batch's text: it records the click
and redirects (302) to the campaign's url.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from qunfa.api.deps import ContainerDep
from qunfa.services.accounts import AccountError
from qunfa.services.personal import MarkConflict, NotFound, PersonalError, PersonalService

router = APIRouter(tags=["personal_wechat"])
_TOKEN = re.compile(r"^[0-9a-f]{16}$")


class PreparedBatchPublic(BaseModel):
    batch_id: int
    key: str
    campaign_id: int
    campaign: str
    batch_no: int
    size: int
    text: str = Field(description="copy-ready text, tracked link included")
    remarks: list[str] = Field(description="friends' remark names to pick in 群发助手")
    link: str | None
    handed_over_at: float | None
    warnings: list[str]


class MarkBody(BaseModel):
    outcome: Literal["sent", "failed", "throttled"] = Field(
        description="sent; failed (nothing went out); throttled (WeChat warned or limited the "
        "account: the campaign's remaining batches are cancelled and it is paused)"
    )
    note: str | None = Field(default=None, max_length=500)


class MarkPublic(BaseModel):
    batch_id: int
    outcome: str
    changed: bool = Field(description="false when the same mark was already recorded")
    batch_state: str
    campaign_state: str
    cancelled: int


@router.get("/api/personal_wechat/{account}/batches", response_model=list[PreparedBatchPublic])
def due_batches(
    account: str, c: ContainerDep, campaign_id: int | None = None
) -> list[dict[str, Any]]:
    """Batches handed over to the person and not yet marked, oldest first."""
    try:
        batches = PersonalService(c).due_batches(account, campaign_id)
    except (AccountError, NotFound) as exc:
        raise HTTPException(404, str(exc)) from None
    except PersonalError as exc:
        raise HTTPException(422, str(exc)) from None
    return [asdict(b) for b in batches]


@router.post("/api/personal_wechat/batches/{batch_id}/mark", response_model=MarkPublic)
def mark_batch(batch_id: int, body: MarkBody, c: ContainerDep) -> dict[str, Any]:
    """Record how a batch went; repeating a mark is a no-op, a conflicting one is a 409."""
    try:
        result = PersonalService(c).mark(batch_id, body.outcome, body.note)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except MarkConflict as exc:
        raise HTTPException(409, str(exc)) from None
    except PersonalError as exc:
        raise HTTPException(422, str(exc)) from None
    return asdict(result)


@router.get("/t/{token}", include_in_schema=False)
def tracked_link(token: str, request: Request, c: ContainerDep) -> RedirectResponse:
    """A tracked link was opened: record the click, send the reader on (302)."""
    if not _TOKEN.match(token):
        raise HTTPException(404, "no such link")
    try:
        url = PersonalService(c).click(token, request.headers.get("user-agent"))
    except NotFound:
        raise HTTPException(404, "no such link") from None
    return RedirectResponse(url, status_code=302)
