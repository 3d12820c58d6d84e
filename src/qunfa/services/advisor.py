"""The advisor's wiring: the knowledge file plus the platform numbers from the rule files."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qunfa import rules
from qunfa.domain.advisor import Advice, AdvisorError, Limits, Need, advise
from qunfa.rules.datafiles import load_data

# Seeds 000 §七: 企业微信 合理设置群发间隔(建议≥3天). Advice, not a platform rule, so it is
# kept here beside its source rather than in rules/wecom.toml.
WECOM_MIN_INTERVAL_DAYS = 3.0


def limits(account_settings: Mapping[str, Any] | None = None) -> Limits:
    """Every number the advice uses, read from ``rules/<platform>.toml`` (with overrides).

    ``account_settings`` may carry ``rules`` overrides per platform
    (``{"rules": {"wecom": {"customer_cap_rule": "1_per_day"}}}``), ``sms_price_per_segment``
    and ``sms_segments``.
    """
    settings = dict(account_settings or {})
    overrides = settings.get("rules", {}) or {}

    def ruleset(name: str) -> rules.RuleSet:
        return rules.load(name).with_overrides(overrides.get(name, {}))

    oa, personal, wecom = ruleset("wechat_oa"), ruleset("personal_wechat"), ruleset("wecom")
    price = settings.get("sms_price_per_segment")
    if price is not None and (not isinstance(price, int | float) or price < 0):
        raise AdvisorError("sms_price_per_segment: give a price ≥ 0 per SMS segment")
    return Limits(
        oa_subscription_per_day=oa["subscription_mass_per_day"],
        oa_service_per_user_per_month=oa["service_per_user_per_month"],
        personal_daily_pace=personal["daily_pace"],
        personal_batch_max=personal["batch_max"],
        wecom_customer_cap_rule=str(wecom.rules["customer_cap_rule"].value),
        wecom_customer_cap_per_week=wecom["customer_cap_per_week"],
        wecom_min_interval_days=WECOM_MIN_INTERVAL_DAYS,
        dingtalk_same_content_per_day=ruleset("dingtalk")["same_content_per_day"],
        sms_per_number_daily=min(
            ruleset("sms_tencent")["per_number_daily"], ruleset("sms_aliyun")["per_number_daily"]
        ),
        sms_price_per_segment=float(price) if price is not None else None,
        sms_segments=int(settings.get("sms_segments", 1)),
    )


def recommend(need: Need, account_settings: Mapping[str, Any] | None = None) -> Advice:
    """Ranked channels for ``need`` (raises :class:`AdvisorError` on bad input)."""
    return advise(need, load_data("advisor"), limits(account_settings))


def comparison() -> list[dict[str, Any]]:
    """The seeds' platform comparison rows (seeds 001 §五), for display."""
    rows: list[dict[str, Any]] = load_data("advisor")["comparison"]
    return rows
