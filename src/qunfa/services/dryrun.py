"""Dry run: plan a campaign for real, report, then remove every trace (``docs/quotas.md``).

"Planning for real gives the same numbers as the dry run" holds by construction: the dry run
calls the very same :meth:`CampaignService.plan` — consent, caps, quotas, time windows, pacing
— on the campaign's own rows, reads the outcome, then deletes what planning wrote (deliveries,
batches, reservations, the segment snapshot) and restores the campaign row as it was. Planning
is many transactions (keyset pages), so one rolled-back transaction cannot hold it; plan-then-
delete can, and a crash in between leaves a campaign in ``planning`` that a real plan redoes.

The dry run is advisory: it runs without the review gate (a plan for real still needs it),
and it creates no fallback campaign (its size is reported instead).
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update

from qunfa.channels.registry import channel_class
from qunfa.domain import quota as dom
from qunfa.domain.states import CampaignState
from qunfa.services.campaigns import CampaignError, CampaignService
from qunfa.services.quota import dry_run
from qunfa.storage import quota_sql as q
from qunfa.storage.models import (
    Batch,
    Campaign,
    Delivery,
    QuotaReservation,
    SegmentSnapshot,
)

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

COMPLAINT_DAYS = 30


class _NoGate:
    """The review service with an open gate: the dry run is advice, not a plan."""

    def __init__(self, review: Any) -> None:
        self._review = review

    def require(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._review, name)


class _Advisory:
    """The container as the planner sees it during a dry run: everything real but the gate."""

    def __init__(self, c: Container) -> None:
        self._c = c
        self.review = _NoGate(c.review)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)


def _columns(camp: Campaign) -> dict[str, Any]:
    return {col.key: getattr(camp, col.key) for col in Campaign.__table__.columns}


class DryRunService:
    def __init__(self, c: Container) -> None:
        self.c = c

    def run(self, campaign_id: int) -> dict[str, Any]:
        """Plan ``campaign_id`` (a draft), report, undo. See the module docstring."""
        camp = self.c.campaigns.get(campaign_id)
        if camp.state != CampaignState.DRAFT:
            raise CampaignError(
                f"campaign {campaign_id} is {camp.state}; a dry run plans drafts only "
                "(see `qunfa campaign status` for what was planned)"
            )
        before = _columns(camp)
        planner = CampaignService(_Advisory(self.c))  # type: ignore[arg-type]
        started = time.time()
        try:
            with dry_run():
                report = planner.plan(campaign_id)
                quota_step = self._quota_detail(campaign_id)
            out = self._report(campaign_id, report.recipients, report.batches, quota_step)
        finally:
            self._undo(campaign_id, before)
        out["seconds"] = round(time.time() - started, 3)
        return out

    def _quota_detail(self, campaign_id: int) -> dict[str, Any]:
        camp = self.c.campaigns.get(campaign_id)
        return {
            "left_share": self.c.quota.remaining_share(camp, include_own=True),
            "policy": str(self.c.quota.policy_of(camp)[0]),
            "mode": camp.mode,
            "note": camp.last_error,
        }

    def _undo(self, campaign_id: int, before: dict[str, Any]) -> None:
        with self.c.engine.begin() as conn:
            conn.execute(delete(Delivery).where(Delivery.campaign_id == campaign_id))
            conn.execute(delete(Batch).where(Batch.campaign_id == campaign_id))
            conn.execute(
                delete(QuotaReservation).where(QuotaReservation.campaign_id == campaign_id)
            )
            conn.execute(delete(SegmentSnapshot).where(SegmentSnapshot.campaign_id == campaign_id))
            values = {k: v for k, v in before.items() if k != "id"}
            conn.execute(update(Campaign).where(Campaign.id == campaign_id).values(**values))

    # -- the report -------------------------------------------------------------------------------
    def _report(
        self, campaign_id: int, recipients: int, nbatches: int, quota_step: dict[str, Any]
    ) -> dict[str, Any]:
        camp = self.c.campaigns.get(campaign_id)
        acc = self.c.accounts.get(camp.account_id)
        now = time.time()
        eligibility = self.c.quota.eligibility(campaign_id, limit=20)
        with self.c.engine.connect() as conn:
            rows = conn.execute(q.OUTCOME_COUNTS, {"campaign_id": campaign_id, "now": now}).all()
            batches = conn.execute(
                select(Batch.next_attempt_at, Batch.size).where(
                    Batch.campaign_id == campaign_id, Batch.state == "pending", Batch.size > 0
                )
            ).all()
            complaints = int(
                conn.execute(
                    q.RECENT_COMPLAINTS,
                    {"campaign_id": campaign_id, "since": now - COMPLAINT_DAYS * 86400},
                ).scalar_one()
                or 0
            )
        audience = sum(int(n) for _, _, n, *_ in rows)
        dropped: Counter[str] = Counter()
        deferred: Counter[str] = Counter()
        for status, reason, n, _lo, _hi, later in rows:
            if status == "skipped":
                dropped[reason or "skipped"] += int(n)
            elif status == "planned" and later:
                deferred[reason or "time window"] += int(later)
        now_n = sum(int(n) for st, _, n, *_ in rows if st == "planned") - sum(deferred.values())
        per_hour: Counter[str] = Counter()
        per_day: Counter[str] = Counter()
        first_day = 0
        for when, size in batches:
            t = max(float(when or 0.0), now)
            local = datetime.fromtimestamp(t, dom.CHINA)
            per_hour[local.strftime("%Y-%m-%d %H:00")] += 1
            per_day[local.strftime("%Y-%m-%d")] += int(size)
            if t < now + 86400:
                first_day += int(size)
        cost = self._sms_cost(camp, acc, recipients)
        fallback = None
        pol = dom.parse_policy(camp.options or {})
        if pol.action == "fallback":
            fallback = {"channel": pol.channel, "recipients": sum(
                n for r, n in dropped.items() if r.startswith(("cap:", "quota:"))
            )}  # fmt: skip
        rules = self.c.accounts.config(acc, camp.channel).rules
        pace_rule = channel_class(camp.channel).daily_pace_rule
        capped = sum(n for r, n in dropped.items() if r.startswith("cap:")) + sum(
            n for r, n in deferred.items() if r.startswith("cap:")
        )
        risk = dom.risk_score(
            dom.RiskInput(
                channel=camp.channel,
                mode=camp.mode,
                audience=audience,
                reach=recipients,
                first_day=first_day,
                daily_pace=rules[pace_rule] if pace_rule else None,
                mass_send_protection=bool((acc.settings or {}).get("mass_send_protection")),
                complaints=complaints,
                quota_left_share=quota_step["left_share"],
                capped=capped,
            )
        )
        reach: dict[str, dict[str, Any]] = {
            camp.channel: {"total": recipients, "now": now_n, "later": recipients - now_n}
        }
        if fallback:
            reach[str(fallback["channel"])] = {"total": fallback["recipients"], "fallback": True}
        return {
            "campaign_id": campaign_id,
            "dry_run": True,
            "channel": camp.channel,
            "mode": camp.mode,
            "state_after_plan": camp.state,
            "audience": audience,
            "recipients": recipients,
            "batches": nbatches,
            "reach": reach,
            "dropped": dict(dropped),
            "deferred": dict(deferred),
            "policy": quota_step["policy"],
            "fallback": fallback,
            "note": quota_step["note"],
            "sms_cost": cost,
            "timeline": {
                "per_hour": dict(sorted(per_hour.items())),
                "per_day": dict(sorted(per_day.items())),
            },
            "eligibility": eligibility,
            "risk": {"score": risk.score, "reasons": risk.reasons},
        }

    def _sms_cost(self, camp: Campaign, acc: Any, recipients: int) -> dict[str, Any] | None:
        if camp.channel not in ("sms_tencent", "sms_aliyun"):
            return None
        from qunfa.channels.sms_common import segments

        cfg = self.c.accounts.config(acc, camp.channel)
        text = str((camp.content or {}).get("text", ""))
        n = segments(text, cfg.rules, str(cfg.credentials.get("sign_name", "")))
        price = (acc.settings or {}).get("sms_price_per_segment")
        return {
            "segments_per_message": n,
            "segments": n * recipients,
            "price_per_segment": price,
            "estimate": round(n * recipients * float(price), 2) if price is not None else None,
        }
