"""The advisor: each row of the seeds' scenario table leads with the seeds' choice; limits from
the rule files shape the warnings."""

from __future__ import annotations

import dataclasses

import pytest

from qunfa import rules
from qunfa.domain.advisor import AdvisorError, Need, advise, matched_scenarios
from qunfa.rules.datafiles import load_data
from qunfa.services.advisor import comparison, limits, recommend

KNOWLEDGE = load_data("advisor")


@pytest.mark.parametrize(
    ("need", "scenario", "first"),
    [
        # 小规模用户触达(<500人): 个人微信 优
        (Need(300, 1, "notification", False, "medium"), "small_audience", "personal_wechat"),
        # 高频营销推送: 企业微信 优
        (Need(5000, 5, "marketing", False, "high"), "high_frequency_marketing", "wecom_customer"),
        # 数据深度分析: 企业微信 强
        (Need(5000, 1, "notification", True, "high"), "deep_analytics", "wecom_customer"),
        # 低成本运营: 个人微信 优
        (Need(600, 0.5, "marketing", False, "low"), "low_cost", "personal_wechat"),
    ],
)
def test_each_seed_scenario_recommends_the_seeds_choice_first(
    need: Need, scenario: str, first: str
) -> None:
    advice = recommend(need)
    assert advice.scenarios == [scenario]
    assert advice.ranked[0].channel == first
    seed = KNOWLEDGE["scenarios"][scenario]
    assert any(seed["title"] in r and "seeds 000 §八" in r for r in advice.ranked[0].reasons)


def test_every_channel_is_ranked_and_qq_is_last_and_unsupported() -> None:
    advice = recommend(Need(300, 3, "marketing", True, "low"))
    channels = [r.channel for r in advice.ranked]
    assert set(channels) == set(KNOWLEDGE["channels"])
    assert channels[-1] == "qq" and not advice.ranked[-1].supported
    assert "not supported by qunfa" in advice.ranked[-1].reasons[0]
    expected = {"wechat_oa", "wechat_template", "wecom_customer", "wecom_app", "personal_wechat",
                "dingtalk", "feishu", "sms_tencent", "sms_aliyun", "email"}  # fmt: skip
    assert expected <= set(channels)


def test_personal_wechat_pacing_comes_from_the_rule_file() -> None:
    pace = rules.load("personal_wechat")["daily_pace"]
    advice = recommend(Need(300, 3, "marketing", True, "low"))
    personal = next(r for r in advice.ranked if r.channel == "personal_wechat")
    assert any(f"≤{pace}" in w and "daily_pace" in w for w in personal.warnings)
    # and an override of that rule changes the advice
    relaxed = recommend(
        Need(300, 3, "marketing", True, "low"), {"rules": {"personal_wechat": {"daily_pace": 500}}}
    )
    p2 = next(r for r in relaxed.ranked if r.channel == "personal_wechat")
    assert not any("daily_pace" in w for w in p2.warnings) and p2.score > personal.score


def test_official_account_limits_from_rules() -> None:
    lim = limits()
    assert lim.oa_subscription_per_day == rules.load("wechat_oa")["subscription_mass_per_day"]
    assert (
        lim.oa_service_per_user_per_month == rules.load("wechat_oa")["service_per_user_per_month"]
    )
    daily = recommend(Need(5000, 10, "marketing", False, "high"))
    oa = next(r for r in daily.ranked if r.channel == "wechat_oa")
    assert any("1 mass send a day" in w for w in oa.warnings)
    assert any("服务号" in w and "≤4" in w for w in oa.warnings)


def test_wecom_interval_and_admin_cap() -> None:
    advice = recommend(Need(5000, 5, "marketing", False, "high"))
    wc = next(r for r in advice.ranked if r.channel == "wecom_customer")
    assert any("≥3 days" in w for w in wc.warnings)
    daily_cap = recommend(
        Need(5000, 10, "marketing", False, "high"),
        {"rules": {"wecom": {"customer_cap_rule": "1_per_day"}}},
    )
    wc2 = next(r for r in daily_cap.ranked if r.channel == "wecom_customer")
    assert any("1 a day per customer" in w for w in wc2.warnings)


def test_sms_cost_from_account_settings() -> None:
    advice = recommend(
        Need(1000, 2, "marketing", False, "medium"),
        {"sms_price_per_segment": 0.045, "sms_segments": 2},
    )
    sms = next(r for r in advice.ranked if r.channel == "sms_tencent")
    assert any("~180.00 a week" in r for r in sms.reasons)  # 1000 × 2 × 2 × 0.045
    no_price = recommend(Need(1000, 2, "marketing", False, "medium"))
    sms2 = next(r for r in no_price.ranked if r.channel == "sms_tencent")
    assert any("sms_price_per_segment" in w for w in sms2.warnings)


def test_employee_audiences_prefer_internal_channels_over_marketing_bans() -> None:
    advice = recommend(Need(2000, 1, "notification", False, "medium", "employees"))
    top3 = [r.channel for r in advice.ranked[:3]]
    assert set(top3) == {"wecom_app", "dingtalk", "feishu"}
    customers = recommend(Need(2000, 1, "notification", False, "medium"))
    feishu = next(r for r in customers.ranked if r.channel == "feishu")
    assert any("members only" in w for w in feishu.warnings)


def test_template_messages_are_not_for_marketing() -> None:
    advice = recommend(Need(300, 1, "marketing", False, "medium"))
    tpl = next(r for r in advice.ranked if r.channel == "wechat_template")
    assert any("marketing" in w for w in tpl.warnings)


@pytest.mark.parametrize(
    ("change", "field"),
    [({"audience": 0}, "audience"), ({"per_week": 0}, "per_week"), ({"content": "spam"}, "content"),
     ({"budget": "free"}, "budget"), ({"audience_kind": "bots"}, "audience_kind")],
)  # fmt: skip
def test_bad_needs_name_the_field(change: dict[str, object], field: str) -> None:
    need = dataclasses.replace(Need(100, 1), **change)  # type: ignore[arg-type]
    with pytest.raises(AdvisorError, match=field):
        advise(need, KNOWLEDGE, limits())


def test_matched_scenarios_thresholds_come_from_data() -> None:
    assert matched_scenarios(Need(499, 1), KNOWLEDGE) == ["small_audience"]
    assert matched_scenarios(Need(500, 1), KNOWLEDGE) == []
    assert "high_frequency_marketing" in matched_scenarios(Need(1000, 3), KNOWLEDGE)
    assert "high_frequency_marketing" not in matched_scenarios(
        Need(1000, 3, "notification"), KNOWLEDGE
    )


def test_knowledge_rows_are_sourced_and_comparison_names_qq() -> None:
    for row in KNOWLEDGE["scenarios"].values():
        assert row["source"].startswith("seeds 000")
        assert set(row["seed"]) == set(row["rating"])
    for row in KNOWLEDGE["channels"].values():
        assert row["source"].strip()
    platforms = [r["platform"] for r in comparison()]
    assert platforms == ["微信", "企业微信", "钉钉", "飞书", "QQ"]
