"""The platform advisor: which channels suit an audience, a frequency, content and a budget.

Pure. The knowledge (the seeds' scenario table and channel profiles, ``rules/data/advisor.toml``)
and the platform limits (numbers from ``rules/<platform>.toml``, gathered into :class:`Limits`
by :mod:`qunfa.services.advisor`) are arguments, so the advice changes when the data does.

Scoring, in order of weight: each matched scenario's seed rating (×10, so the seeds' choice
leads whenever a scenario applies), then fit (reach, content, per-person data, budget), then
penalties where the platform's own limits make the plan infeasible or risky.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Budget = Literal["low", "medium", "high"]
Content = Literal["marketing", "notification", "education", "ecommerce"]
AudienceKind = Literal["customers", "employees"]
SEED_WEIGHT = 10
MARKETING_CONTENT = ("marketing", "education", "ecommerce")


class AdvisorError(ValueError):
    """Bad advisor input; the message names the field."""


@dataclass(frozen=True)
class Need:
    """What the operator wants to do."""

    audience: int
    per_week: float
    content: str = "marketing"
    per_person_data: bool = False
    budget: str = "medium"
    audience_kind: str = "customers"

    def validate(self) -> None:
        if self.audience < 1:
            raise AdvisorError("audience: give the number of people, at least 1")
        if not 0 < self.per_week <= 70:
            raise AdvisorError("per_week: give sends per week per person, between 0 and 70")
        if self.content not in ("marketing", "notification", "education", "ecommerce"):
            raise AdvisorError(
                f"content: {self.content!r}; use marketing, notification, education or ecommerce"
            )
        if self.budget not in ("low", "medium", "high"):
            raise AdvisorError(f"budget: {self.budget!r}; use low, medium or high")
        if self.audience_kind not in ("customers", "employees"):
            raise AdvisorError(f"audience_kind: {self.audience_kind!r}; use customers or employees")


@dataclass(frozen=True)
class Limits:
    """The platform numbers the advice depends on, each as read from the rule files."""

    oa_subscription_per_day: int
    oa_service_per_user_per_month: int
    personal_daily_pace: int
    personal_batch_max: int
    wecom_customer_cap_rule: str
    wecom_customer_cap_per_week: int
    wecom_min_interval_days: float  # seeds 000 §七: 群发间隔建议≥3天
    dingtalk_same_content_per_day: int
    sms_per_number_daily: int
    sms_price_per_segment: float | None = None  # from the account's settings, when given
    sms_segments: int = 1


@dataclass
class Recommendation:
    channel: str
    title: str
    score: float
    supported: bool
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "title": self.title,
            "score": round(self.score, 2),
            "supported": self.supported,
            "reasons": self.reasons,
            "warnings": self.warnings,
            "source": self.source,
        }


@dataclass(frozen=True)
class Advice:
    need: Need
    scenarios: list[str]  # matched scenario keys, in the data file's order
    ranked: list[Recommendation]

    def as_dict(self) -> dict[str, Any]:
        return {
            "need": self.need.__dict__,
            "scenarios": self.scenarios,
            "ranked": [r.as_dict() for r in self.ranked],
        }


def matched_scenarios(need: Need, knowledge: Mapping[str, Any]) -> list[str]:
    """Which rows of the seeds' scenario table describe this need."""
    hits = {
        "small_audience": need.audience < int(knowledge["small_audience_below"]),
        "high_frequency_marketing": need.content in MARKETING_CONTENT
        and need.per_week >= float(knowledge["high_frequency_per_week"]),
        "deep_analytics": need.per_person_data,
        "low_cost": need.budget == "low",
    }
    return [key for key in knowledge["scenarios"] if hits.get(key, False)]


def advise(need: Need, knowledge: Mapping[str, Any], limits: Limits) -> Advice:
    """Every channel of the knowledge file, best first, each with its reasons."""
    need.validate()
    scenarios = matched_scenarios(need, knowledge)
    ranked = [
        _score(key, row, need, scenarios, knowledge, limits)
        for key, row in knowledge["channels"].items()
    ]
    ranked.sort(key=lambda r: (not r.supported, -r.score, r.channel))
    return Advice(need, scenarios, ranked)


def _score(
    key: str,
    row: Mapping[str, Any],
    need: Need,
    scenarios: list[str],
    knowledge: Mapping[str, Any],
    limits: Limits,
) -> Recommendation:
    rec = Recommendation(key, row["title"], 0.0, bool(row.get("supported", True)))
    rec.source = row["source"]
    if not rec.supported:
        rec.reasons.append("not supported by qunfa (no adapter): listed because the seeds name it")
        return rec
    for name in scenarios:
        s = knowledge["scenarios"][name]
        if key in s["rating"]:
            rec.score += SEED_WEIGHT * s["rating"][key]
            rec.reasons.append(f"{s['title']}: {s['seed'][key]} ({s['source']})")
        else:
            rec.score += s["others"].get(key, 0)
    _fit(rec, row, need)
    _limits(rec, need, limits)
    return rec


def _fit(rec: Recommendation, row: Mapping[str, Any], need: Need) -> None:
    reaches = row["reaches"]
    if reaches == "employees" and need.audience_kind != "employees":
        rec.score -= 40
        rec.warnings.append("reaches your organisation's members only, not customers")
    elif reaches == "employees":
        rec.score += 5
        rec.reasons.append("built for messages to your organisation's members")
    if need.audience_kind == "employees" and reaches in ("followers", "friends", "customers"):
        rec.score -= 5
    if need.content in MARKETING_CONTENT and not row["marketing"]:
        rec.score -= 30
        rec.warnings.append("may not carry marketing content (service notices only)")
    if need.content == "notification" and reaches != "employees" and not row["marketing"]:
        rec.score += 5
        rec.reasons.append("made for per-person service notices")
    if need.per_person_data:
        gain = {"exact": 3, "aggregate": 0, "none": -3}[row["per_person"]]
        rec.score += gain
        what = {"exact": "per-person results", "aggregate": "aggregate statistics only",
                "none": "no per-person data (tracked links only)"}[row["per_person"]]  # fmt: skip
        (rec.reasons if gain > 0 else rec.warnings).append(what)


def _limits(rec: Recommendation, need: Need, lim: Limits) -> None:
    per_day = need.audience * need.per_week / 7
    per_month = need.per_week * 52 / 12
    if rec.channel == "personal_wechat":
        if per_day > lim.personal_daily_pace:
            rec.score -= 15
            days = need.audience / lim.personal_daily_pace
            rec.warnings.append(
                f"needs ~{per_day:.0f} person-times a day; risk advice is "
                f"≤{lim.personal_daily_pace} (rules/personal_wechat.toml daily_pace): "
                f"one send would take {days:.0f} days"
            )
        if need.audience > lim.personal_batch_max:
            sends = -(-need.audience // lim.personal_batch_max)
            rec.warnings.append(
                f"{sends} hand sends of ≤{lim.personal_batch_max} friends each (batch_max)"
            )
    elif rec.channel == "wechat_oa":
        if need.per_week > 7 * lim.oa_subscription_per_day:
            rec.score -= 20
            rec.warnings.append(
                f"公众号 allows {lim.oa_subscription_per_day} mass send a day "
                "(rules/wechat_oa.toml subscription_mass_per_day)"
            )
        if per_month > lim.oa_service_per_user_per_month:
            rec.warnings.append(
                f"a 服务号 reaches each follower ≤{lim.oa_service_per_user_per_month} times a "
                f"month (service_per_user_per_month); ~{per_month:.0f} planned: use a 订阅号"
            )
        else:
            rec.reasons.append(
                f"~{per_month:.1f} sends a month fits a 服务号's "
                f"{lim.oa_service_per_user_per_month} per follower"
            )
    elif rec.channel == "wecom_customer":
        interval = 7 / need.per_week
        if interval < lim.wecom_min_interval_days:
            rec.score -= 3
            rec.warnings.append(
                f"one send every {interval:.1f} days; seeds advise "
                f"≥{lim.wecom_min_interval_days:g} days between mass sends to a customer "
                "(seeds 000 §七)"
            )
        if lim.wecom_customer_cap_rule == "1_per_day" and need.per_week > 7:
            rec.score -= 20
            rec.warnings.append("the admin's cap is 1 a day per customer (rules/wecom.toml)")
        if (
            lim.wecom_customer_cap_rule == "7_per_week"
            and need.per_week > lim.wecom_customer_cap_per_week
        ):
            rec.score -= 20
            rec.warnings.append(
                f"the admin's cap is {lim.wecom_customer_cap_per_week} a week per customer"
            )
        rec.warnings.append("each send is a task a staff member confirms in the client")
    elif rec.channel == "dingtalk" and lim.dingtalk_same_content_per_day == 1:
        rec.warnings.append("identical content reaches a member once a day (same_content_per_day)")
    elif rec.channel.startswith("sms_"):
        if need.per_week / 7 > lim.sms_per_number_daily:
            rec.score -= 20
            rec.warnings.append(f"over {lim.sms_per_number_daily} a day per number")
        if lim.sms_price_per_segment is not None:
            weekly = need.audience * need.per_week * lim.sms_segments * lim.sms_price_per_segment
            rec.reasons.append(
                f"~{weekly:,.2f} a week ({need.audience:,} × {need.per_week:g} × "
                f"{lim.sms_segments} segment(s) × {lim.sms_price_per_segment:g})"
            )
            if need.budget == "low":
                rec.score -= 2
        else:
            rec.warnings.append("paid per segment: set sms_price_per_segment for an estimate")
