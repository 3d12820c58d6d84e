"""Send-time optimisation: learn each person's best local hour, measure the lift.

* :func:`refresh` learns ``contact_facts.best_hour`` / ``best_hour_weight`` from the person's
  opens, clicks and interactions (``person_events``) in one statement (``LEARN_BEST_HOURS``):
  a recency-weighted histogram of local hours, the top hour and its share of the weight.
  :func:`refresh_due` runs it from the sweeper at most every ``REFRESH_EVERY`` seconds.
* Planning with ``{"timing": {"optimise": "24h", "holdout": 0.1}}`` (``services/scheduling``)
  sends each person at their best hour within the horizon — falling back to the audience's
  modal hour, then the category's default hour — except a deterministic holdout sent at the
  campaign's fixed time; ``deliveries.variant`` says which.
* :func:`report` compares open and click rates per variant after the send.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from qunfa.services import timing
from qunfa.storage import timing_sql as tq
from qunfa.storage.models import Delivery, Meta

if TYPE_CHECKING:
    from qunfa.bootstrap import Container

log = logging.getLogger("qunfa.sto")
LEARN_DAYS = 90  # events older than this are not used
HALF_DAYS = 14.0  # an event this many days old counts half as much as one today
REFRESH_EVERY = 3600.0
META_KEY = "sto_refreshed_at"
LEARN_ID = 0  # the plan_zone rows used while learning (no campaign has id 0)


def refresh(c: Container, now: float | None = None, days: int = LEARN_DAYS) -> int:
    """Recompute every best hour from the last ``days`` of events; returns rows written.

    Local hours use each person's zone (contact timezone → city/province → Asia/Shanghai) at
    its current UTC offset: an event from before a DST change counts one hour off, which a
    histogram over weeks absorbs.
    """
    now = time.time() if now is None else now
    since = now - days * 86400
    with c.engine.begin() as conn:
        rows = [(r[0], r[1], r[2]) for r in conn.execute(tq.STO_ZONE_INPUTS, {"since": since})]
        if not rows:
            return 0
        zone_of = timing.resolve_zones(rows)
        conn.execute(tq.CREATE_PLAN_ZONE)
        conn.execute(tq.CLEAR_PLAN_ZONE, {"campaign_id": LEARN_ID})
        at = datetime.fromtimestamp(now, UTC)
        conn.execute(
            tq.INSERT_PLAN_ZONE,
            [
                {
                    "campaign_id": LEARN_ID,
                    "timezone": tz,
                    "province": prov,
                    "city": city,
                    "zone_ix": 0,
                    "offset_s": _offset(zone, at),
                    "due": 0.0,
                }
                for (tz, prov, city), zone in zone_of.items()
            ],
        )
        n = conn.execute(
            tq.LEARN_BEST_HOURS,
            {"campaign_id": LEARN_ID, "since": since, "now": now, "half_days": HALF_DAYS,
             "no": False},
        ).rowcount  # fmt: skip
        conn.execute(tq.CLEAR_PLAN_ZONE, {"campaign_id": LEARN_ID})
    return int(n or 0)


def _offset(zone: str, at: datetime) -> int:
    return int((at.astimezone(ZoneInfo(zone)).utcoffset() or timedelta()).total_seconds())


def refresh_due(c: Container, now: float | None = None) -> int:
    """:func:`refresh` when the last one is older than ``REFRESH_EVERY``; never raises."""
    now = time.time() if now is None else now
    try:
        with c.sessions() as s:
            row = s.get(Meta, META_KEY)
            if row is not None and now - float(row.value) < REFRESH_EVERY:
                return 0
            if row is None:
                s.add(Meta(key=META_KEY, value=str(now)))
            else:
                row.value = str(now)
            s.commit()
        return refresh(c, now)
    except Exception:
        log.exception("best-hour refresh failed; the next sweep retries")
        return 0


def report(c: Container, campaign_id: int, window_hours: float = 72.0) -> dict[str, Any]:
    """Open and click rates per variant (``sto`` / ``holdout``) within ``window_hours`` of each
    recipient's send, and the lift of STO over the holdout (relative, ``None`` when the
    holdout has no opens)."""
    camp = c.campaigns.get(campaign_id)
    with c.engine.connect() as conn:
        rows = conn.execute(
            tq.STO_REPORT, {"campaign_id": campaign_id, "window": window_hours * 3600}
        ).all()
        planned = {
            str(v): int(n)
            for v, n in conn.execute(
                select(Delivery.variant, func.count())
                .where(Delivery.campaign_id == campaign_id, Delivery.variant.is_not(None))
                .group_by(Delivery.variant)
            )
        }
    variants: dict[str, dict[str, Any]] = {}
    for variant, sent, opened, clicked in rows:
        sent, opened, clicked = int(sent), int(opened or 0), int(clicked or 0)
        variants[str(variant)] = {
            "sent": sent,
            "opened": opened,
            "clicked": clicked,
            "open_rate": opened / sent if sent else 0.0,
            "click_rate": clicked / sent if sent else 0.0,
        }
    sto, hold = variants.get("sto"), variants.get("holdout")
    lift: dict[str, float | None] = {"open": None, "click": None}
    if sto and hold:
        for k in ("open", "click"):
            base = hold[f"{k}_rate"]
            lift[k] = (sto[f"{k}_rate"] - base) / base if base else None
    return {
        "campaign_id": camp.id,
        "name": camp.name,
        "timing": (camp.options or {}).get("timing"),
        "window_hours": window_hours,
        "planned": planned,
        "variants": variants,
        "lift": lift,
    }
