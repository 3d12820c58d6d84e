"""Campaigns over REST: list, show, create, send."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from qunfa.api.deps import ContainerDep
from qunfa.api.routers.review import DEFAULT_ACTOR
from qunfa.api.routers.review import Actor as ReviewActor
from qunfa.services.accounts import AccountError
from qunfa.services.campaigns import CampaignError

router = APIRouter(prefix="/api/campaigns", tags=["campaigns"])


class CampaignCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    channel: str = Field(examples=["wechat_oa"])
    account: str = Field(description="account id or appid")
    audience: str = Field(examples=["all", "tag:VIP"])
    content: dict[str, Any] = Field(examples=[{"msgtype": "text", "text": {"content": "你好"}}])
    as_list: bool = Field(default=False, description="send a tag/everyone as openid lists")
    options: dict[str, Any] = Field(
        default_factory=dict, examples=[{"remind_every_hours": 4}], description="campaign options"
    )


class CampaignPublic(BaseModel):
    id: int
    uid: str
    name: str
    channel: str
    account: str
    audience: str
    mode: str
    state: str
    planned: int
    batches: dict[str, dict[str, int]]
    deliveries: dict[str, int]
    platform: dict[str, int | None]
    last_error: str | None
    links: dict[str, Any] | None = Field(
        default=None, description="tracked-link clicks per link (null: no tracked links)"
    )
    created_at: float
    started_at: float | None
    finished_at: float | None


@router.get("", response_model=list[CampaignPublic])
def list_campaigns(c: ContainerDep) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = c.campaigns.all()
    return result


@router.get("/{campaign_id}", response_model=CampaignPublic)
def get_campaign(campaign_id: int, c: ContainerDep) -> dict[str, Any]:
    try:
        result: dict[str, Any] = c.campaigns.status(campaign_id)
    except CampaignError as exc:
        raise HTTPException(404, str(exc)) from None
    return result


@router.post("", response_model=CampaignPublic, status_code=201)
def create_campaign(
    body: CampaignCreate, c: ContainerDep, actor: ReviewActor = DEFAULT_ACTOR
) -> dict[str, Any]:
    """Create a draft; ``X-Qunfa-Actor`` is its author (who may not approve it)."""
    try:
        camp = c.campaigns.create(**body.model_dump(), created_by=actor)
    except (CampaignError, AccountError, ValueError) as exc:
        raise HTTPException(422, str(exc)) from None
    result: dict[str, Any] = c.campaigns.status(camp.id)
    return result


@router.post("/{campaign_id}/send", response_model=CampaignPublic)
def send_campaign(
    campaign_id: int, c: ContainerDep, actor: ReviewActor = DEFAULT_ACTOR
) -> dict[str, Any]:
    """Check (if needed), plan and queue; 409 with the gate's reason when it may not be sent."""
    try:
        c.campaigns.start(campaign_id, actor=actor)
    except CampaignError as exc:
        raise HTTPException(409, str(exc)) from None
    result: dict[str, Any] = c.campaigns.status(campaign_id)
    return result


class SenderPublic(BaseModel):
    batch_no: int
    userid: str
    sent: bool
    send_time: int | None


@router.get("/{campaign_id}/senders", response_model=list[SenderPublic])
def campaign_senders(campaign_id: int, c: ContainerDep) -> list[SenderPublic]:
    """Staff members of the campaign's open tasks (WeCom) and whether each has sent."""
    return [SenderPublic(**vars(x)) for x in c.tasks.senders(campaign_id)]


@router.post("/{campaign_id}/cancel", response_model=CampaignPublic)
def cancel_campaign(campaign_id: int, c: ContainerDep) -> dict[str, Any]:
    try:
        c.campaigns.cancel(campaign_id)
    except (CampaignError, ValueError) as exc:
        raise HTTPException(409, str(exc)) from None
    result: dict[str, Any] = c.campaigns.status(campaign_id)
    return result


check_router = APIRouter(prefix="/api/check", tags=["compliance"])


class CheckRequest(BaseModel):
    text: str = Field(min_length=1, examples=["全网最低价！转发到朋友圈领红包"])
    channel: str = Field(default="wechat_oa")
    variables: list[str] = Field(
        default_factory=list,
        description="campaign variables the text may use",
        examples=[["coupon"]],
    )
    sign_name: str = Field(default="", description="SMS signature, counted in the length")


@check_router.post("")
def check_text(body: CheckRequest) -> dict[str, Any]:
    """The compliance report (findings with rule, category, severity, the matched text and its
    position in the original text, a suggestion, a verdict per channel) with the channel's
    ``lint`` findings and the ``template`` issues next to it. ``verdict`` is the strictest of
    all three (``compliance_verdict`` is the engine's alone): a hard limit or an unknown
    variable blocks."""
    from qunfa.compliance import default_checker
    from qunfa.content.check import check_message, combine, text_content

    try:
        report = default_checker().check(body.text, body.channel)
        content = check_message(
            text_content(body.text, body.channel),
            body.channel,
            variables=body.variables,
            sign_name=body.sign_name,
        )
    except (KeyError, ValueError) as exc:
        raise HTTPException(422, str(exc)) from None
    result: dict[str, Any] = report.to_dict() | content.to_dict()
    result |= {"verdict": combine(report.verdict, content), "compliance_verdict": report.verdict}
    return result


@router.get("/{campaign_id}/preview")
def preview_campaign(campaign_id: int, contact: int, c: ContainerDep) -> dict[str, Any]:
    """The campaign's content as ``contact`` would receive it (templates rendered with the
    contact's fields; a material reference resolved for the campaign's channel)."""
    from qunfa.services.materials import MaterialError

    try:
        c.campaigns.get(campaign_id)
    except CampaignError as exc:
        raise HTTPException(404, str(exc)) from None
    try:
        result: dict[str, Any] = c.materials.preview(campaign_id, contact)
    except MaterialError as exc:
        raise HTTPException(422, str(exc)) from None
    return result
