"""The review workflow over REST (docs/review.md): check, submit, approve, reject, schedule, edit.

Who acts: the ``X-Qunfa-Actor`` header names the person doing the step (qunfa has no login yet;
a reverse proxy that authenticates people should set it). Without it the actor is ``api``, so
two anonymous callers are the same person and cannot approve each other's campaigns.

Errors: 404 unknown campaign; 403 the four-eyes rule (an author approving their own); 422 a
missing comment or invalid content; 409 any other refusal (state, gate). The body's ``detail``
names the rule and what to do.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Header, HTTPException
from pydantic import BaseModel, Field

from qunfa.api.deps import ContainerDep
from qunfa.domain.review import ReviewError
from qunfa.services.campaigns import CampaignError

router = APIRouter(prefix="/api/campaigns", tags=["review"])
DEFAULT_ACTOR = "api"

Actor = Annotated[
    str,
    Header(
        alias="X-Qunfa-Actor",
        description="who does this step (recorded in the review and audit logs)",
    ),
]


def _status(exc: Exception) -> int:
    if isinstance(exc, ReviewError):
        return {"review.four_eyes": 403, "review.comment": 422, "review.actor": 422}.get(
            exc.rule, 409
        )
    if str(exc).startswith("no campaign "):
        return 404
    return 409


class Comment(BaseModel):
    comment: str = Field(default="", examples=["目标人群已确认"])


class RejectBody(BaseModel):
    comment: str = Field(min_length=1, examples=["“最佳”是广告法极限词，请改写"])


class ScheduleBody(BaseModel):
    at: datetime = Field(
        description="when to start; a time without an offset is China time (Asia/Shanghai)",
        examples=["2026-12-01T20:00:00"],
    )


class ContentEdit(BaseModel):
    content: dict[str, Any] = Field(examples=[{"msgtype": "text", "text": {"content": "你好"}}])


def _review(c: Any, campaign_id: int) -> dict[str, Any]:
    result: dict[str, Any] = c.review.summary(campaign_id)
    return result


@router.post("/{campaign_id}/check")
def check_campaign(
    campaign_id: int, c: ContainerDep, actor: Actor = DEFAULT_ACTOR
) -> dict[str, Any]:
    """Run the compliance check (and template checks) on every text field; the stored report."""
    try:
        result = c.review.check(campaign_id, actor)
    except (CampaignError, ReviewError) as exc:
        raise HTTPException(_status(exc), str(exc)) from None
    summary: dict[str, Any] = result.summary
    return summary


@router.post("/{campaign_id}/submit")
def submit_campaign(
    campaign_id: int, c: ContainerDep, body: Comment | None = None, actor: Actor = DEFAULT_ACTOR
) -> dict[str, Any]:
    """Ask for approval (runs the check if the current content has none)."""
    try:
        c.review.submit(campaign_id, actor, body.comment if body else "")
    except (CampaignError, ReviewError) as exc:
        raise HTTPException(_status(exc), str(exc)) from None
    return _review(c, campaign_id)


@router.post("/{campaign_id}/approve")
def approve_campaign(
    campaign_id: int, c: ContainerDep, body: Comment | None = None, actor: Actor = DEFAULT_ACTOR
) -> dict[str, Any]:
    """Approve the current content; 403 when the actor is the campaign's author."""
    try:
        c.review.approve(campaign_id, actor, body.comment if body else "")
    except (CampaignError, ReviewError) as exc:
        raise HTTPException(_status(exc), str(exc)) from None
    return _review(c, campaign_id)


@router.post("/{campaign_id}/reject")
def reject_campaign(
    campaign_id: int, body: RejectBody, c: ContainerDep, actor: Actor = DEFAULT_ACTOR
) -> dict[str, Any]:
    """Send it back to the author; the comment is required."""
    try:
        c.review.reject(campaign_id, actor, body.comment)
    except (CampaignError, ReviewError) as exc:
        raise HTTPException(_status(exc), str(exc)) from None
    return _review(c, campaign_id)


@router.post("/{campaign_id}/schedule")
def schedule_campaign(
    campaign_id: int, body: ScheduleBody, c: ContainerDep, actor: Actor = DEFAULT_ACTOR
) -> dict[str, Any]:
    """Start at ``at`` (the worker's sweeper starts it); it must pass the gate now."""
    at = body.at if body.at.tzinfo else body.at.replace(tzinfo=ZoneInfo("Asia/Shanghai"))
    try:
        c.review.schedule(campaign_id, at.timestamp(), actor)
    except (CampaignError, ReviewError) as exc:
        raise HTTPException(_status(exc), str(exc)) from None
    return _review(c, campaign_id)


@router.patch("/{campaign_id}")
def edit_campaign(
    campaign_id: int, body: ContentEdit, c: ContainerDep, actor: Actor = DEFAULT_ACTOR
) -> dict[str, Any]:
    """Replace the content; an approval of the old content is voided (submit it again)."""
    try:
        c.campaigns.edit_content(campaign_id, body.content, actor)
    except (CampaignError, ReviewError) as exc:
        code = 422 if not str(exc).startswith(("no campaign ", f"campaign {campaign_id} is")) else 0
        raise HTTPException(code or _status(exc), str(exc)) from None
    return _review(c, campaign_id)


@router.get("/{campaign_id}/review")
def campaign_review(campaign_id: int, c: ContainerDep) -> dict[str, Any]:
    """Review state, the gate's current answer, the last check and the review log."""
    try:
        return _review(c, campaign_id)
    except (CampaignError, ReviewError) as exc:
        raise HTTPException(_status(exc), str(exc)) from None
