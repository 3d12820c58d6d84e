"""Behaviour: what counts as an event, the facts windows, RFM naming and the built-in layers.

Pure rules, no I/O. The service (``services/behaviour.py``) and the SQL (``storage/queries.py``,
``BEHAVIOUR_*``) implement exactly these definitions set-based; the functions here are the
reference the tests compare the SQL with, and what ``docs/behaviour.md`` documents.

Definitions (times are UTC epoch seconds, ``now`` is the refresh time):

* every person event is an **interaction** (person events are things the person did: a
  message, a menu click, an open, a link click, a purchase …);
* ``last_interaction_at`` = max ``at`` over all the person's events;
* ``interactions_7d`` = events with ``at >= now - 7 days`` (no upper bound: a future-dated
  event counts at once, so nothing ever *ages in* to a window, it only ages out);
* ``spend_3m`` / ``orders_3m`` = sum of ``amount`` / count of purchases with
  ``at >= now - 90 days``; ``last_purchase_at`` = max ``at`` of purchases; ``converted`` =
  the person made at least one purchase, ever;
* ``device`` = the device of the person's latest event that names one (by ``at``, then id).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

DAY = 86_400.0
WINDOW_7D = 7 * DAY  # interactions_7d: 近7日互动频次
WINDOW_3M = 90 * DAY  # spend_3m / orders_3m: 近3月 ARPU (three months read as 90 days)
SILENT_AFTER = 30 * DAY  # silent: 30天无互动
NEW_FOR = 7 * DAY  # new: 注册7日内未转化
PURCHASE = "purchase"
KINDS_RE = re.compile(r"^[a-z][a-z0-9_.]{0,31}$")
DEVICES = ("ios", "android", "other")
LAYERS = ("new", "silent", "high_value", "ios", "android")
CHINA = timezone(timedelta(hours=8))  # naive timestamps in imported files are China time


# -- parsing values --------------------------------------------------------------------------------
def normalise_kind(raw: str) -> str:
    """An event kind: lower-case ``[a-z][a-z0-9_.]*`` of at most 32 characters."""
    kind = raw.strip().lower()
    if not KINDS_RE.match(kind):
        raise ValueError(f"{raw!r} is not an event kind (e.g. purchase, message, click)")
    return kind


def normalise_device(raw: str | None) -> str | None:
    """``ios`` | ``android`` | ``other`` from what apps report (iOS, iPhone, Android 14 …)."""
    if raw is None:
        return None
    value = raw.strip().lower()
    if not value:
        return None
    if value.startswith(("ios", "iphone", "ipad", "ipod")) or value in {"apple", "iphoneos"}:
        return "ios"
    if value.startswith(("android", "harmony", "huawei", "xiaomi", "oppo", "vivo")):
        # HarmonyOS 2–4 run Android apps and report as Android in WeChat's UA.
        return "android"
    return "other"


def parse_time(raw: str | float | int) -> float:
    """Epoch seconds from a number (seconds, or milliseconds when > 1e11) or an ISO 8601 text.

    A text without a zone is China time (UTC+8): that is how operators' exports write it.
    """
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not a time")
    if isinstance(raw, int | float):
        value = float(raw)
    else:
        text = raw.strip()
        if not text:
            raise ValueError("the time is empty")
        try:
            value = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("/", "-"))
            except ValueError:
                raise ValueError(
                    f"{raw!r} is not a time (epoch seconds or 2024-05-01 12:30:00)"
                ) from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=CHINA)
            return parsed.astimezone(UTC).timestamp()
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        raise ValueError(f"{raw!r} is not a time")
    return value / 1000.0 if value > 1e11 else value


def parse_amount(raw: str | float | int | None) -> float | None:
    """A non-negative amount in yuan (``¥``, ``,`` and spaces allowed in text), or None."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not an amount")
    text = str(raw).strip().replace(",", "").replace("¥", "").replace("￥", "").strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{raw!r} is not an amount in yuan (e.g. 128.50)") from None
    if value != value or value < 0 or value == float("inf"):
        raise ValueError(f"{raw!r} is not an amount in yuan (must be ≥ 0)")
    return value


# -- facts (the reference the SQL is checked against) ----------------------------------------------
@dataclass(frozen=True)
class EventRow:
    id: int
    kind: str
    at: float
    amount: float | None = None
    device: str | None = None


@dataclass(frozen=True)
class Facts:
    last_interaction_at: float | None
    interactions_7d: int
    spend_3m: float
    orders_3m: int
    last_purchase_at: float | None
    device: str | None
    converted: bool


def facts_of(events: Sequence[EventRow], now: float) -> Facts:
    """One person's facts at ``now`` from all their events (the definitions above)."""
    purchases = [e for e in events if e.kind == PURCHASE]
    recent_buys = [e for e in purchases if e.at >= now - WINDOW_3M]
    with_device = [e for e in events if e.device is not None]
    latest = max(with_device, key=lambda e: (e.at, e.id)) if with_device else None
    return Facts(
        last_interaction_at=max((e.at for e in events), default=None),
        interactions_7d=sum(1 for e in events if e.at >= now - WINDOW_7D),
        spend_3m=sum(e.amount or 0.0 for e in recent_buys),
        orders_3m=len(recent_buys),
        last_purchase_at=max((e.at for e in purchases), default=None),
        device=latest.device if latest else None,
        converted=bool(purchases),
    )


def ntile(values: Mapping[int, float], buckets: int = 5) -> dict[int, int]:
    """SQL ``NTILE(buckets) OVER (ORDER BY value, id)``: 1 = lowest, sizes differ by ≤ 1.

    The id breaks ties so the result is deterministic (equal spends may straddle a boundary:
    "top 20 %" is exactly a fifth of the people, as 累计消费TOP20% asks).
    """
    ordered = sorted(values, key=lambda k: (values[k], k))
    n = len(ordered)
    small, extra = divmod(n, buckets)  # the first ``extra`` buckets hold one more
    out: dict[int, int] = {}
    index = 0
    for bucket in range(1, buckets + 1):
        size = small + (1 if bucket <= extra else 0)
        for key in ordered[index : index + size]:
            out[key] = bucket
        index += size
    return out


# -- RFM naming ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RfmRule:
    """A named RFM segment: the first rule whose bounds hold names the person."""

    name: str
    r_min: int = 1
    r_max: int = 5
    f_min: int = 1
    m_min: int = 1
    meaning: str = ""


# First match wins; the last two cover every remaining score, so each person gets one name.
RFM_RULES: tuple[RfmRule, ...] = (
    RfmRule("champions", r_min=4, f_min=4, m_min=4, meaning="bought recently, often, much"),
    RfmRule("loyal", r_min=3, f_min=4, meaning="buy often, not lapsed"),
    RfmRule("potential", r_min=4, f_min=2, meaning="recent, more than one order"),
    RfmRule("promising", r_min=4, meaning="recent first (or only) order"),
    RfmRule("cant_lose", r_max=2, f_min=4, m_min=4, meaning="were the best, lapsing"),
    RfmRule("at_risk", r_max=2, f_min=3, meaning="bought often, lapsing"),
    RfmRule("need_attention", r_min=3, r_max=3, meaning="middling recency"),
    RfmRule("hibernating", r_min=2, r_max=2, meaning="long since the last order"),
    RfmRule("lost", r_max=1, meaning="longest since the last order"),
)
RFM_SEGMENTS = tuple(rule.name for rule in RFM_RULES)


def rfm_segment(r: int, f: int, m: int) -> str:
    """The RFM segment name of quintile scores (each 1..5, 5 = best)."""
    for rule in RFM_RULES:
        if rule.r_min <= r <= rule.r_max and f >= rule.f_min and m >= rule.m_min:
            return rule.name
    raise ValueError(f"no RFM rule covers r={r} f={f} m={m}")  # pragma: no cover - total


def rfm_case_sql(r: str, f: str, m: str) -> str:
    """The same naming as one SQL ``CASE`` over the score columns ``r``, ``f``, ``m``."""
    arms = []
    for rule in RFM_RULES:
        conds = [f"{r} BETWEEN {rule.r_min} AND {rule.r_max}"]
        if rule.f_min > 1:
            conds.append(f"{f} >= {rule.f_min}")
        if rule.m_min > 1:
            conds.append(f"{m} >= {rule.m_min}")
        arms.append(f"WHEN {' AND '.join(conds)} THEN '{rule.name}'")
    return "CASE " + " ".join(arms) + " END"


# -- built-in layers -------------------------------------------------------------------------------
def layers_of(
    facts: Facts | None,
    rfm_m: int | None,
    registered_at: float | None,
    created_at: float,
    now: float,
) -> set[str]:
    """The built-in layers a person is in at ``now`` (several may hold at once).

    * ``new``: registered — else created, when the registration date is unknown — within
      7 days and not converted;
    * ``silent``: no interaction in the last 30 days, and not registered (else created) in
      them either: a person just followed or imported is not silent from day one;
    * ``high_value``: top 20 % by 3-month spend among people who ever purchased (``rfm_m = 5``);
    * ``ios`` / ``android``: the device of the latest event naming one.

    These are the definitions ``layer(...)`` compiles to in ``storage/segment_sql.py``.
    """
    out: set[str] = set()
    converted = facts.converted if facts else False
    joined = registered_at if registered_at is not None else created_at
    if joined >= now - NEW_FOR and not converted:
        out.add("new")
    last = facts.last_interaction_at if facts else None
    if (last is None or last < now - SILENT_AFTER) and joined < now - SILENT_AFTER:
        out.add("silent")
    if rfm_m == 5:
        out.add("high_value")
    device = facts.device if facts else None
    if device in ("ios", "android"):
        out.add(device)
    return out
