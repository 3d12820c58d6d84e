"""Platform rules are data: every rule has a value, a source and an effective date."""

from __future__ import annotations

import re

import pytest

from qunfa import rules


def test_every_wechat_rule_is_sourced_and_dated() -> None:
    rs = rules.load("wechat_oa")
    assert rs.rules, "the rule file is empty"
    for rule in rs.rules.values():
        assert rule.source.strip(), f"{rule.name} has no source"
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", rule.effective), rule.name


def test_reference_numbers() -> None:
    rs = rules.load("wechat_oa")
    assert rs["mass_max_per_call"] == 10000
    assert rs["mass_min_per_call"] == 2
    assert rs["mass_calls_per_minute"] == 60
    assert rs["service_per_user_per_month"] == 4
    assert rs["clientmsgid_window_seconds"] == 24 * 3600


def test_overrides_replace_values_and_say_so() -> None:
    rs = rules.load("wechat_oa").with_overrides({"mass_calls_per_minute": 5})
    assert rs["mass_calls_per_minute"] == 5
    assert rs.rules["mass_calls_per_minute"].source == "per-account override"
    assert rules.load("wechat_oa")["mass_calls_per_minute"] == 60  # the file is untouched


def test_unknown_override_is_an_error() -> None:
    with pytest.raises(KeyError, match="mass_per_minute"):
        rules.load("wechat_oa").with_overrides({"mass_per_minute": 5})


def test_every_platform_file_loads_and_is_sourced() -> None:
    names = rules.platforms()
    assert {"wechat_oa", "wecom", "sms_tencent", "personal_wechat"} <= set(names)
    for name in names:
        rs = rules.load(name)
        assert rs.rules, f"rules/{name}.toml is empty"
        for rule in rs.rules.values():
            assert rule.source.strip() and re.fullmatch(r"\d{4}-\d{2}-\d{2}", rule.effective)


def test_cli_rules_show_prints_sources() -> None:
    from typer.testing import CliRunner

    from qunfa.cli.main import app

    result = CliRunner().invoke(app, ["rules", "show", "wechat_oa", "--json"])
    assert result.exit_code == 0, result.output
    assert "mass_max_per_call" in result.output and "platform-apis.md" in result.output
    bad = CliRunner().invoke(app, ["rules", "show", "nope"])
    assert bad.exit_code == 2
