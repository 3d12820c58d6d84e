"""Pure quota arithmetic: periods in China time, rules from the rule files, caps, policy, risk."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qunfa.domain import quota as dom
from qunfa.domain.quota import CHINA, Period
from qunfa.rules import load


def at(*args: int) -> float:
    return datetime(*args, tzinfo=CHINA).timestamp()  # type: ignore[misc]


def test_day_boundaries_are_china_midnight() -> None:
    t = at(2026, 11, 24, 23, 59)
    assert dom.period_start(Period.DAY, t) == at(2026, 11, 24)
    assert dom.period_end(Period.DAY, t) == at(2026, 11, 25)
    assert dom.period_key(Period.DAY, t) == "2026-11-24"
    # 16:30 UTC on the 24th is already the 25th in China
    assert dom.period_key(Period.DAY, at(2026, 11, 24, 16, 30) + 8 * 3600) == "2026-11-25"


def test_week_and_month_boundaries() -> None:
    t = at(2026, 11, 26, 10)  # a Thursday
    assert dom.period_start(Period.WEEK, t) == at(2026, 11, 23)  # Monday
    assert dom.period_end(Period.WEEK, t) == at(2026, 11, 30)
    assert dom.period_end(Period.MONTH, at(2026, 12, 31, 23)) == at(2027, 1, 1)
    assert dom.period_key(Period.MONTH, t) == "2026-11"
    assert dom.days_in_month(at(2028, 2, 10)) == 29
    assert dom.nth_period_start(Period.DAY, t, 3) == at(2026, 11, 29)


@given(st.floats(min_value=1.6e9, max_value=2.2e9))
def test_every_moment_lies_in_its_period(t: float) -> None:
    for period in (Period.DAY, Period.WEEK, Period.MONTH):
        start, end = dom.period_start(period, t), dom.period_end(period, t)
        assert start <= t < end
        local = datetime.fromtimestamp(start, CHINA)
        assert (local.hour, local.minute, local.second) == (0, 0, 0)
        assert dom.period_start(period, end) == end  # the next period starts at the boundary
        assert dom.period_key(period, start) == dom.period_key(period, end - 1e-3)
    assert dom.china_day(dom.period_start(Period.DAY, t)) == dom.china_day(t)


@given(st.floats(min_value=1.6e9, max_value=2.2e9), st.floats(min_value=1, max_value=1e7))
def test_rolling_windows(t: float, w: float) -> None:
    assert dom.period_start(Period.ROLLING, t, w) == t - w
    assert dom.period_end(Period.ROLLING, t, w) == t + w


def values(platform: str) -> dict[str, object]:
    return {n: r.value for n, r in load(platform).rules.items()}


def test_rules_come_from_the_rule_files() -> None:
    now = at(2026, 11, 24, 12)
    sub = dom.quota_rules("wechat_oa", "subscription", values("wechat_oa"), now)
    assert [(r.rule, r.scope, r.unit, r.limit) for r in sub] == [
        ("subscription_mass_per_day", "account", "calls", 1)
    ]
    svc = {r.rule: r for r in dom.quota_rules("wechat_oa", "service", values("wechat_oa"), now)}
    assert svc["service_per_user_per_month"].limit == 4
    assert not svc["service_to_all_per_month"].applies("list")
    ding = {r.rule: r for r in dom.quota_rules("dingtalk", "", values("dingtalk"), now)}
    assert ding["per_employee_per_day"].limit == 500 and ding["same_content_per_day"].same_content
    sms = dom.quota_rules("sms_tencent", "", values("sms_tencent"), now)
    assert [(r.rule, r.limit, r.period) for r in sms] == [("per_number_daily", 10, Period.DAY)]
    assert dom.quota_rules("feishu", "", values("feishu"), now)[0].limit == 500_000
    wecom = values("wecom")
    assert dom.quota_rules("wecom_customer", "", wecom, now)[0].limit == 30  # November
    week = dom.quota_rules("wecom_customer", "", {**wecom, "customer_cap_rule": "7_per_week"}, now)
    assert (week[0].period, week[0].limit) == (Period.WEEK, 7)
    assert dom.quota_rules("wecom_app", "", wecom, now) == []  # seats unknown: no quota
    app = dom.quota_rules("wecom_app", "", wecom, now, {"seats": 3})
    assert app[0].limit == 600
    cap = dom.wecom_interval_cap(wecom)
    assert cap is not None and (cap.limit, cap.days, cap.per_identity) == (1, 3.0, True)


def test_caps_merge_and_switch_off() -> None:
    caps = dom.parse_caps(dom.DEFAULT_CAPS, {"marketing_1d": None, "week": {"limit": 5, "days": 7}})
    assert [(c.name, c.limit, c.window) for c in caps] == [
        ("marketing_7d", 3, 7 * 86400),
        ("week", 5, 7 * 86400),
    ]
    with pytest.raises(dom.QuotaError, match="limit"):
        dom.parse_caps({}, {"x": {"limit": 0, "days": 1}})
    with pytest.raises(dom.QuotaError, match="must be"):
        dom.parse_caps({}, {"x": 3})
    assert dom.is_transactional({"transactional": True}, {})
    assert dom.is_transactional({}, {"category": "verification"})
    assert not dom.is_transactional({}, {"category": "marketing"})


def test_policy() -> None:
    assert str(dom.parse_policy({})) == "skip"
    assert dom.parse_policy({"over_cap": "defer"}).action == "defer"
    fb = dom.parse_policy({"over_cap": "fallback:sms_tencent", "fallback_account": "1400"})
    assert (fb.action, fb.channel, fb.account) == ("fallback", "sms_tencent", "1400")
    with pytest.raises(dom.QuotaError, match="fallback:<channel>"):
        dom.parse_policy({"over_cap": "later"})


def test_risk_score_names_its_reasons() -> None:
    quiet = dom.risk_score(dom.RiskInput("sms_tencent", "list", 1000, 1000))
    assert quiet.score == 0 and quiet.reasons == []
    loud = dom.risk_score(
        dom.RiskInput(
            "personal_wechat", "list", 1000, 400, first_day=200, daily_pace=50, complaints=50,
            quota_left_share=0.05, capped=600,
        )
    )  # fmt: skip
    codes = {r["code"] for r in loud.reasons}
    assert codes == {"pacing", "complaints", "caps", "quota"} and loud.score == 100
    oa = dom.risk_score(dom.RiskInput("wechat_oa", "to_all", 10, 10, mass_send_protection=True))
    assert oa.score == 30 and oa.reasons[0]["code"] == "mass_send_protection"


def test_deferral_day_partition_is_china_time() -> None:
    assert dom.china_day(at(2026, 11, 24, 0, 0)) == dom.china_day(at(2026, 11, 24, 23, 59))
    assert dom.china_day(at(2026, 11, 25)) - dom.china_day(at(2026, 11, 24, 23, 59)) == 1
    assert timedelta(days=1).total_seconds() == dom.DAY_SECONDS
