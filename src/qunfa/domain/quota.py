"""Quotas, frequency caps and the over-cap policy: pure arithmetic, no I/O.

* **Periods** are calendar periods in China time (UTC+8, no daylight saving): ``day``,
  ``week`` (Monday–Sunday) and ``month``, or a **rolling** window of N seconds ending now.
  :func:`period_start`, :func:`period_end` and :func:`period_key` are what the ledger, the
  reservations and the sandbox's counters agree on.
* **Quota rules** (:class:`QuotaRule`) come from the platform rule files
  (``rules/<platform>.toml``): :func:`quota_rules` says which apply to a channel and account
  kind, per account (``scope="account"``: mass sends a day, template messages a day …) or per
  recipient (``scope="recipient"``: 4 a month per 服务号 follower, SMS per-number caps …).
* **Caps** (:class:`Cap`) are qunfa's own per-person limits across every channel and identity
  (``3 in 7 days``, ``1 a day``); transactional campaigns are exempt.
* **Policy** (:func:`parse_policy`): what happens to someone over a cap or quota —
  ``skip``, ``defer`` or ``fallback:<channel>``.
* **Risk** (:func:`risk_score`): a 0–100 score with its reasons, for the dry run.

See ``docs/quotas.md``.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")
DAY_SECONDS = 86_400


class QuotaError(ValueError):
    """Invalid caps or policy options; the message names the option and what to write."""


class Period(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    ROLLING = "rolling"


def _local(at: float) -> datetime:
    return datetime.fromtimestamp(at, CHINA)


def period_start(period: Period, at: float, window: float = 0.0) -> float:
    """Epoch of the start of the period containing ``at`` (rolling: ``at - window``)."""
    if period is Period.ROLLING:
        return at - window
    local = _local(at).replace(hour=0, minute=0, second=0, microsecond=0)
    if period is Period.WEEK:
        local -= timedelta(days=local.weekday())
    elif period is Period.MONTH:
        local = local.replace(day=1)
    return local.timestamp()


def period_end(period: Period, at: float, window: float = 0.0) -> float:
    """Epoch of the next period boundary after ``at`` (rolling: ``at + window``)."""
    if period is Period.ROLLING:
        return at + window
    start = _local(period_start(period, at))
    if period is Period.DAY:
        nxt = start + timedelta(days=1)
    elif period is Period.WEEK:
        nxt = start + timedelta(days=7)
    else:
        nxt = (start + timedelta(days=32)).replace(day=1)
    return nxt.timestamp()


def period_key(period: Period, at: float) -> str:
    """``2026-11-24`` (day), ``2026-W48`` (ISO week), ``2026-11`` (month), ``rolling``."""
    local = _local(at)
    if period is Period.DAY:
        return local.strftime("%Y-%m-%d")
    if period is Period.WEEK:
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    if period is Period.MONTH:
        return local.strftime("%Y-%m")
    return "rolling"


def days_in_month(at: float) -> int:
    local = _local(at)
    return calendar.monthrange(local.year, local.month)[1]


def nth_period_start(period: Period, at: float, n: int) -> float:
    """Start of the ``n``-th period after the one containing ``at`` (n ≥ 1)."""
    t = at
    for _ in range(n):
        t = period_end(period, t)
    return t


def china_day(at: float) -> int:
    """Days since the epoch in China time: the partition key of deferred batches."""
    return int((at + 8 * 3600) // DAY_SECONDS)


# -- platform quota rules -------------------------------------------------------------------------
@dataclass(frozen=True)
class QuotaRule:
    """One platform limit as the planner applies it.

    ``unit`` is ``recipients`` (each person reached counts) or ``calls`` (each mass send, i.e.
    each batch, counts: 公众号 1 mass send a day). ``modes``: the campaign modes it applies to
    (``None``: all). ``same_content``: only earlier sends of identical content count (DingTalk).
    """

    rule: str
    scope: str  # account | recipient
    unit: str  # recipients | calls
    period: Period
    limit: int
    source: str = ""
    modes: frozenset[str] | None = None
    same_content: bool = False
    window: float = 0.0  # rolling periods only

    @property
    def reason(self) -> str:
        return f"quota:{self.rule}"

    def applies(self, mode: str) -> bool:
        return self.modes is None or mode in self.modes


def _int(values: Mapping[str, Any], name: str) -> int | None:
    v = values.get(name)
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def quota_rules(
    channel: str,
    account_kind: str,
    values: Mapping[str, Any],
    at: float,
    account_settings: Mapping[str, Any] | None = None,
) -> list[QuotaRule]:
    """The platform quotas that apply to a campaign on ``channel`` (rule values from the
    account's effective rule set, ``values``: name → value), evaluated at ``at``."""
    settings = account_settings or {}
    out: list[QuotaRule] = []

    def add(rule: str, scope: str, unit: str, period: Period, **kw: Any) -> None:
        limit = kw.pop("limit", None)
        limit = _int(values, rule) if limit is None else limit
        if limit is not None:
            out.append(QuotaRule(rule, scope, unit, period, int(limit), **kw))

    if channel == "wechat_oa":
        if account_kind == "subscription":
            add("subscription_mass_per_day", "account", "calls", Period.DAY)
        else:
            add("service_per_user_per_month", "recipient", "recipients", Period.MONTH)
            add(
                "service_to_all_per_month", "account", "calls", Period.MONTH,
                modes=frozenset({"to_all"}),
            )  # fmt: skip
    elif channel == "wechat_template":
        add("template_daily_quota", "account", "recipients", Period.DAY)
    elif channel == "feishu":
        add("messages_per_day", "account", "recipients", Period.DAY)
    elif channel == "wecom_app":
        seats = _int(settings, "seats")  # only known when the account says how many seats
        per_seat = _int(values, "app_daily_person_times_per_seat")
        if seats and per_seat:
            add(
                "app_daily_person_times_per_seat", "account", "recipients", Period.DAY,
                limit=seats * per_seat,
            )  # fmt: skip
    elif channel == "wecom_customer":
        cap_rule = str(values.get("customer_cap_rule", "days_in_month"))
        if cap_rule == "1_per_day":
            add("customer_cap_per_day", "recipient", "recipients", Period.DAY)
        elif cap_rule == "7_per_week":
            add("customer_cap_per_week", "recipient", "recipients", Period.WEEK)
        else:
            out.append(
                QuotaRule(
                    "customer_cap_rule", "recipient", "recipients", Period.MONTH,
                    days_in_month(at),
                )
            )  # fmt: skip
    elif channel == "dingtalk":
        add("per_employee_per_day", "recipient", "recipients", Period.DAY)
        add("same_content_per_day", "recipient", "recipients", Period.DAY, same_content=True)
    elif channel in ("sms_aliyun", "sms_tencent"):
        add("per_number_daily", "recipient", "recipients", Period.DAY)
    return out


# -- caps -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cap:
    """At most ``limit`` messages to one person in a rolling ``days`` window, counting every
    channel and identity of the person. ``channels``: only sends on these channels count
    (``None``: all) — the WeCom interval counts WeCom customer sends only."""

    name: str
    limit: int
    days: float
    channels: frozenset[str] | None = None
    per_identity: bool = False

    @property
    def reason(self) -> str:
        return f"cap:{self.name}"

    @property
    def window(self) -> float:
        return self.days * DAY_SECONDS


DEFAULT_CAPS: dict[str, dict[str, float]] = {
    "marketing_7d": {"limit": 3, "days": 7},
    "marketing_1d": {"limit": 1, "days": 1},
}

TRANSACTIONAL_CATEGORIES = frozenset({"transactional", "verification", "otp", "notice", "service"})


def parse_caps(defaults: Mapping[str, Any], override: Mapping[str, Any] | None = None) -> list[Cap]:
    """Caps from Settings (``defaults``) with the campaign's ``{"caps": {...}}`` on top.

    Each cap is ``name: {"limit": n, "days": d}``; ``name: null`` (or ``false``) switches a
    default off; ``"caps": false`` switches every cap off for the campaign.
    """
    merged: dict[str, Any] = dict(defaults)
    for name, spec in (override or {}).items():
        merged[name] = spec
    caps = []
    for name, spec in sorted(merged.items()):
        if spec is None or spec is False:
            continue
        if not isinstance(spec, Mapping) or "limit" not in spec or "days" not in spec:
            raise QuotaError(
                f'cap {name!r} must be {{"limit": <messages>, "days": <days>}} '
                "(or null to switch it off)"
            )
        limit, days = spec["limit"], spec["days"]
        if not isinstance(limit, int) or limit < 1 or not isinstance(days, int | float):
            raise QuotaError(f"cap {name!r}: limit must be an integer ≥ 1 and days a number > 0")
        if days <= 0:
            raise QuotaError(f"cap {name!r}: days must be > 0")
        chans = spec.get("channels")
        caps.append(Cap(name, limit, float(days), frozenset(chans) if chans else None))
    return caps


def wecom_interval_cap(values: Mapping[str, Any]) -> Cap | None:
    """The seeds' WeCom advice as a cap: at least N days between mass sends to one customer
    (``rules/wecom.toml`` ``customer_min_interval_days``)."""
    days = _int(values, "customer_min_interval_days")
    if not days:
        return None
    return Cap(
        "customer_min_interval_days", 1, float(days), frozenset({"wecom_customer"}),
        per_identity=True,
    )  # fmt: skip


def is_transactional(options: Mapping[str, Any], content: Mapping[str, Any]) -> bool:
    """Exempt from caps: the campaign says so, or its content's category is transactional."""
    if options.get("transactional") is True:
        return True
    return str(content.get("category", "")).lower() in TRANSACTIONAL_CATEGORIES


# -- policy ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    action: str  # skip | defer | fallback
    channel: str | None = None  # fallback channel
    account: str | None = None  # fallback account (app id); default: the only one

    def __str__(self) -> str:
        return f"fallback:{self.channel}" if self.action == "fallback" else self.action


def parse_policy(options: Mapping[str, Any]) -> Policy:
    """``options["over_cap"]``: ``skip`` (default) | ``defer`` | ``fallback:<channel>``."""
    raw = options.get("over_cap", "skip")
    if raw in ("skip", "defer"):
        return Policy(str(raw))
    if isinstance(raw, str) and raw.startswith("fallback:") and raw.partition(":")[2]:
        return Policy(
            "fallback",
            raw.partition(":")[2],
            str(options["fallback_account"]) if options.get("fallback_account") else None,
        )
    raise QuotaError(
        f'over_cap {raw!r} is not a policy: write "skip", "defer" or "fallback:<channel>" '
        "(e.g. fallback:sms_tencent)"
    )


# -- risk -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RiskInput:
    """What the dry run measured; every share is 0..1."""

    channel: str
    mode: str
    audience: int  # recipients materialised before consent, caps and quotas
    reach: int  # recipients who will get it
    first_day: int = 0  # recipients due in the first 24 h (personal WeChat pacing)
    daily_pace: int | None = None
    mass_send_protection: bool = False
    complaints: int = 0  # recent withdrawals/unsubscribes among the audience
    quota_left_share: float | None = None  # smallest remaining/limit over account quotas
    capped: int = 0  # dropped or deferred by caps
    extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class Risk:
    score: int
    reasons: list[dict[str, Any]] = field(default_factory=list)


def risk_score(r: RiskInput) -> Risk:
    """A 0–100 score, the sum of weighted reasons (capped at 100), each reason with its points."""
    reasons: list[dict[str, Any]] = []

    def add(code: str, points: int, text: str) -> None:
        reasons.append({"code": code, "points": points, "reason": text})

    if r.channel == "personal_wechat" and r.daily_pace and r.first_day > r.daily_pace:
        add(
            "pacing", 40,
            f"personal WeChat: {r.first_day} person-times in the first day, above the daily "
            f"pace of {r.daily_pace} (rules/personal_wechat.toml daily_pace)",
        )  # fmt: skip
    if r.channel == "wechat_oa" and r.mode == "to_all" and r.mass_send_protection:
        add(
            "mass_send_protection", 30,
            "Official Account send to everyone with API mass-send protection on: an admin must "
            "confirm within 30 minutes or the send fails (err(40002))",
        )  # fmt: skip
    if r.audience:
        rate = r.complaints / r.audience
        if rate >= 0.01:
            add(
                "complaints", min(30, int(rate * 1000)),
                f"{r.complaints} recent withdrawals/unsubscribes in an audience of {r.audience} "
                f"({rate:.1%}, 30 days)",
            )  # fmt: skip
        share = r.capped / r.audience
        if share >= 0.2:
            add(
                "caps", min(20, int(share * 40)),
                f"caps drop or defer {r.capped} of {r.audience} ({share:.0%}): the audience "
                "already got a lot of messages",
            )  # fmt: skip
    if r.quota_left_share is not None and r.quota_left_share < 0.1:
        add(
            "quota",
            20,
            f"account quota nearly exhausted ({r.quota_left_share:.0%} left in the period)",
        )
    for text in r.extra:
        add("other", 10, text)
    return Risk(min(100, sum(int(x["points"]) for x in reasons)), reasons)
