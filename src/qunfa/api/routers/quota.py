"""Quotas and the dry run over REST (docs/quotas.md).

``POST /api/campaigns/{id}/plan?dry_run=true`` reports what planning would do and changes
nothing; without ``dry_run`` it plans for real (through the review gate: 409 with its reason).
``GET /api/accounts/{id}/quota`` lists usage, reservations and what is left per rule and period.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from qunfa.api.deps import ContainerDep
from qunfa.services.accounts import AccountError
from qunfa.services.campaigns import CampaignError

router = APIRouter(tags=["quota"])


@router.post("/api/campaigns/{campaign_id}/plan")
def plan_campaign(campaign_id: int, c: ContainerDep, dry_run: bool = False) -> dict[str, Any]:
    """Plan a draft, or (``dry_run=true``) report reach, drops, cost, timeline and risk."""
    try:
        if dry_run:
            report: dict[str, Any] = c.dryrun.run(campaign_id)
            return report
        done = c.campaigns.plan(campaign_id)
    except CampaignError as exc:
        code = 404 if "no campaign" in str(exc) else 409
        raise HTTPException(code, str(exc)) from None
    except ValueError as exc:  # the gate (GateClosed), quota/cap options: the rule is named
        raise HTTPException(409, str(exc)) from None
    return {
        "campaign_id": campaign_id,
        "recipients": done.recipients,
        "batches": done.batches,
        "seconds": done.seconds,
    }


@router.get("/api/accounts/{account_id}/quota")
def account_quota(account_id: int, c: ContainerDep) -> list[dict[str, Any]]:
    """Per rule and period: limit, sent, reported, reserved, remaining, when it resets."""
    try:
        rows: list[dict[str, Any]] = c.quota.show(account_id)
    except AccountError as exc:
        raise HTTPException(404, str(exc)) from None
    return rows
