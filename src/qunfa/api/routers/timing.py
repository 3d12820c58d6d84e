"""Recurring series' runs and the send-time optimisation report (docs/time.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from qunfa.api.deps import ContainerDep
from qunfa.services import scheduling, sto
from qunfa.services.campaigns import CampaignError

router = APIRouter(prefix="/api/campaigns", tags=["timing"])


@router.get("/{campaign_id}/runs")
def runs(campaign_id: int, c: ContainerDep) -> dict[str, Any]:
    """A recurring series, its runs (newest first) and its next fire time."""
    try:
        return scheduling.runs(c, campaign_id)
    except CampaignError as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/{campaign_id}/sto-report")
def sto_report(campaign_id: int, c: ContainerDep, window_hours: float = 72.0) -> dict[str, Any]:
    """Open/click rates per variant (``sto`` / ``holdout``) and the lift."""
    try:
        return sto.report(c, campaign_id, window_hours)
    except CampaignError as exc:
        raise HTTPException(404, str(exc)) from None
