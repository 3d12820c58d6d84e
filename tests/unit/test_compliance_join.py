"""A lexicon term split between a template's text and an inserted value (docs/compliance.md).

``Checker.join_checker`` reports only matches that cross an edge of the value; the template and
the value on their own are checked elsewhere. ``template_slots`` finds each per-person slot and
the literal text the render puts beside it.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qunfa.compliance import Checker
from qunfa.services.value_check import _check_joined, _Join, template_slots

CH = "sms_tencent"


@pytest.fixture(scope="module")
def checker() -> Checker:
    return Checker()


def spans(checker: Checker, left: str, value: str, right: str) -> list[tuple[str, str, int, int]]:
    report = checker.join_checker(left, right, CH)(value)
    return [] if report is None else [(f.text, f.entry, f.start, f.end) for f in report.findings]


def test_a_term_split_between_template_and_value_is_found_with_its_span(
    checker: Checker,
) -> None:
    # The template's own 全网最 (found when the template is checked) does not hide 最佳.
    assert spans(checker, "全网最", "佳", "的选择") == [("最佳", "最佳", 2, 4)]
    assert spans(checker, "", "第", "一名") == [("第一", "第一", 0, 2)]
    report = checker.join_checker("", "一名", CH)("第")
    assert report is not None and report.verdict == "block"  # absolute: block on SMS
    assert report.findings[0].suggestion  # the lexicon's advice travels with it


def test_matches_wholly_in_the_template_or_in_the_value_are_not_reported_twice(
    checker: Checker,
) -> None:
    assert spans(checker, "全网最", "好看", "") == []  # 全网最 alone is the template's finding
    assert spans(checker, "欢迎", "最佳", "光临") == []  # 最佳 alone is the value's finding


def test_a_value_that_only_looks_like_a_term_after_joining_is_clean(checker: Checker) -> None:
    # 第 + 一次 is 第一次, an allow-list word that merely contains 第一.
    assert spans(checker, "", "第", "一次购物") == []
    assert spans(checker, "本店", "上海", "一名店员") == []


def test_evasions_inside_the_value_are_normalised(checker: Checker) -> None:
    assert spans(checker, "", "第\u200b", "一名") == [("第\u200b一", "第一", 0, 3)]
    assert spans(checker, "TOP", "１", " 品质") == [("TOP１", "TOP1", 0, 4)]
    # A value that normalises to nothing joins the template's text on both sides.
    assert spans(checker, "第", "\u200b\u200d", "一名") == [("第\u200b\u200d一", "第一", 0, 4)]
    # A Latin term only counts as a whole word, across the join too.
    assert spans(checker, "TOP", "1", "0 款") == []


@settings(max_examples=150, deadline=None)
@given(
    junk=st.lists(st.sampled_from(["\u200b", "\u200d", " ", "·", "\ufeff"]), max_size=3),
    cut=st.integers(min_value=0, max_value=3),
)
def test_separators_anywhere_in_the_value_do_not_hide_the_join(
    checker: Checker, junk: list[str], cut: int
) -> None:
    value = "".join(junk[:cut]) + "佳" + "".join(junk[cut:])
    found = spans(checker, "全网最", value, "的选择")
    assert [entry for _, entry, _, _ in found] == ["最佳"]
    text, _, start, end = found[0]
    assert ("全网最" + value + "的选择")[start:end] == text and start == 2


@settings(max_examples=200, deadline=None)
@given(
    left=st.text(alphabet="全网最第一名佳好次 的TOP1", max_size=6),
    value=st.text(alphabet="全网最第一名佳好次 的TOP1\u200b", max_size=4),
    right=st.text(alphabet="全网最第一名佳好次 的TOP1", max_size=6),
)
def test_every_reported_match_crosses_an_edge_of_the_value(
    checker: Checker, left: str, value: str, right: str
) -> None:
    report = checker.join_checker(left, right, CH)(value)
    if report is None:
        return
    text, vs, ve = left + value + right, len(left), len(left) + len(value)
    assert report.text == text and report.findings
    for f in report.findings:
        assert text[f.start : f.end] == f.text
        assert f.start < ve and f.end > vs and (f.start < vs or f.end > ve)


def test_template_slots_read_the_literal_text_either_side() -> None:
    (slot,) = template_slots("全网最{{ attrs.word }}的选择")
    assert (slot.variable, slot.position, slot.before, slot.after) == (
        "attrs.word",
        3,
        "全网最",
        "的选择",
    )
    a, b = template_slots("本店{{ city }}{{ attrs['level'] }}会员")
    # Adjacent slots: each stops at the other (a term split between two values is not seen).
    assert (a.variable, a.before, a.after) == ("city", "本店", "")
    assert (b.variable, b.before, b.after, b.position) == ("attrs.level", "", "会员", 12)


def test_template_slots_follow_what_renders() -> None:
    (slot,) = template_slots('全网{# note #}最{{- name|default("佳", true)|upper }} 的选择')
    assert (slot.before, slot.after, slot.default, slot.plain) == ("全网最", " 的选择", "佳", True)
    # A tag or another expression is a boundary; a filter that changes the text is not plain.
    (tagged,) = template_slots("全网最{% if city %}{{ attrs.w|first }}{% endif %}x{{ coupon }}")
    assert (tagged.before, tagged.after, tagged.plain) == ("", "", False)
    assert template_slots('{{ name ~ "先生" }}第一') == ()  # not a plain read of one variable
    assert template_slots("{{ name") == ()  # a syntax error: the template check reports it


def test_a_filter_that_changes_the_value_is_applied_before_joining(checker: Checker) -> None:
    (slot,) = template_slots("全网最{{ attrs.w|first }}的选择")
    join = _Join(
        slot.variable,
        slot.before,
        slot.after,
        checker.join_checker(slot.before, slot.after, CH),
        slot.expression,
        slot.plain,
    )
    join.where.append({"field": "text", "position": slot.position})
    # 佳明 inserts 佳 (first), which joins 最 into 最佳; 明佳 inserts 明, which does not.
    (entry,) = _check_joined(join, [("佳明", 4), ("明佳", 2)], contacts=6)
    assert entry["recipients"] == 4 and entry["joined"]["value"] == "佳"
    assert [f["entry"] for f in entry["findings"]] == ["最佳"]


def test_a_default_literal_is_joined_for_the_contacts_without_a_value(checker: Checker) -> None:
    (slot,) = template_slots("全网最{{ attrs.w|default('佳', true) }}的选择")
    join = _Join(
        slot.variable,
        slot.before,
        slot.after,
        checker.join_checker(slot.before, slot.after, CH),
        slot.expression,
        slot.plain,
        defaults={"佳"},
    )
    # 10 contacts, 7 with a (clean) value: the other 3 get the default, 最 + 佳.
    (entry,) = _check_joined(join, [("好看", 7)], contacts=10)
    assert entry["recipients"] == 3 and entry["joined"]["default"] is True
    assert entry["text"] == "全网最佳的选择" and entry["findings"][0]["entry"] == "最佳"
