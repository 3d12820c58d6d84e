"""``POST /api/advise``: the platform advisor over REST (same service as ``qunfa advise``)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from qunfa.domain.advisor import AdvisorError, Need
from qunfa.services.advisor import recommend

router = APIRouter(tags=["advisor"])


class AdviseBody(BaseModel):
    audience: int = Field(ge=1, description="number of people to reach")
    per_week: float = Field(default=1.0, gt=0, le=70, description="sends per person per week")
    content: Literal["marketing", "notification", "education", "ecommerce"] = "marketing"
    per_person_data: bool = Field(default=False, description="per-person results are needed")
    budget: Literal["low", "medium", "high"] = "medium"
    audience_kind: Literal["customers", "employees"] = "customers"
    sms_price_per_segment: float | None = Field(default=None, ge=0)
    sms_segments: int = Field(default=1, ge=1)


class RecommendationPublic(BaseModel):
    channel: str
    title: str
    score: float
    supported: bool
    reasons: list[str]
    warnings: list[str]
    source: str


class AdvicePublic(BaseModel):
    need: dict[str, Any]
    scenarios: list[str] = Field(description="rows of the seeds' scenario table that apply")
    ranked: list[RecommendationPublic]


@router.post("/api/advise", response_model=AdvicePublic)
def advise(body: AdviseBody) -> dict[str, Any]:
    """Channels ranked best first, with reasons and warnings drawn from the rule files."""
    need = Need(
        body.audience,
        body.per_week,
        body.content,
        body.per_person_data,
        body.budget,
        body.audience_kind,
    )
    settings: dict[str, Any] = {"sms_segments": body.sms_segments}
    if body.sms_price_per_segment is not None:
        settings["sms_price_per_segment"] = body.sms_price_per_segment
    try:
        return recommend(need, settings).as_dict()
    except AdvisorError as exc:
        raise HTTPException(422, str(exc)) from None
