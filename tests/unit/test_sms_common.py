"""Phone normalisation, segment counting and the opt-out check shared by the SMS channels."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qunfa.channels.base import ContentError
from qunfa.channels.sms_common import (
    PhoneError,
    check_opt_out,
    describe_segments,
    has_opt_out,
    normalize_cn_phone,
    segment_count,
    segments,
    validate_sms_content,
)
from qunfa.channels.sms_tencent import SmsTencent
from qunfa.rules import load

mobiles = st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True)
prefixes = st.sampled_from(["", "+86", "0086", "86", "+86 ", "(+86) ", "0086-"])


def spaced(digits: str, seps: list[str]) -> str:
    """Insert separators after the 3rd and 7th digit (the usual 3-4-4 grouping)."""
    return digits[:3] + seps[0] + digits[3:7] + seps[1] + digits[7:]


@given(mobiles, prefixes, st.lists(st.sampled_from(["", " ", "-", "."]), min_size=2, max_size=2))
def test_every_usual_spelling_normalises_to_e164(
    national: str, prefix: str, seps: list[str]
) -> None:
    assert normalize_cn_phone(prefix + spaced(national, seps)) == "+86" + national


@given(mobiles)
def test_full_width_digits_are_accepted(national: str) -> None:
    wide = "".join(chr(ord(d) + 0xFEE0) for d in national)
    assert normalize_cn_phone("＋８６" + wide) == "+86" + national


@given(
    st.from_regex(r"1[3-9][0-9]{8}", fullmatch=True)
    | st.from_regex(r"1[3-9][0-9]{10,12}", fullmatch=True)
)
def test_wrong_length_is_rejected_naming_the_digit_count(digits: str) -> None:
    with pytest.raises(PhoneError, match=f"{len(digits)} digits"):
        normalize_cn_phone(digits)


@given(st.from_regex(r"1[0-2][0-9]{9}|[2-9][0-9]{10}", fullmatch=True))
def test_non_mobile_prefixes_are_rejected(digits: str) -> None:
    with pytest.raises(PhoneError, match="not a mobile number"):
        normalize_cn_phone(digits)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("+1 415 555 0100", "country code must be \\+86"),
        ("138-0013-800a", "other than digits"),
        ("+86 138 0013 800x", "other than digits after"),
        ("0086 138 0013 80000", "12 digits"),
    ],
)
def test_invalid_numbers_say_what_is_wrong(raw: str, problem: str) -> None:
    with pytest.raises(PhoneError, match=problem):
        normalize_cn_phone(raw)


@given(st.text(min_size=0, max_size=400))
def test_segment_count_follows_70_then_67(text: str) -> None:
    n = segment_count(text)
    if not text:
        assert n == 0
    elif len(text) <= 70:
        assert n == 1
    else:
        assert 67 * (n - 1) < len(text) <= 67 * n


def test_segment_boundaries_and_sign_counting() -> None:
    rules = load("sms_tencent")
    assert [segment_count("字" * k) for k in (1, 70, 71, 134, 135)] == [1, 1, 2, 2, 3]
    # The 【sign】 counts: 64 characters + 【腾讯云】 (5) = 69 → 1; 66 + 5 = 71 → 2.
    assert segments("a" * 64, rules, "腾讯云") == 1
    assert segments("a" * 66, rules, "腾讯云") == 2
    assert describe_segments("a" * 66, rules, "腾讯云").startswith("71 characters → 2 segments")


@given(
    st.text(max_size=30),
    st.sampled_from(["回T退订", "退订回T", "拒收请回复R", "回 t 退订", "回Ｔ退订"]),
    st.text(max_size=30),
)
def test_opt_out_phrases_are_found_anywhere_in_any_width(
    before: str, phrase: str, after: str
) -> None:
    assert has_opt_out(before + phrase + after)
    check_opt_out(before + phrase + after, "marketing")


def test_marketing_without_opt_out_says_what_to_add() -> None:
    with pytest.raises(ContentError, match="add “回T退订”"):
        check_opt_out("双十一全场五折", "marketing")
    check_opt_out("您的验证码是 1234", "transactional")  # transactional needs none
    check_opt_out("双十一全场五折 退订请回N", "marketing", ["退订请回N"])  # account phrase


def test_validate_content_names_the_missing_piece() -> None:
    rules = load("sms_tencent")
    good = {
        "template_id": "1",
        "params": ["五折"],
        "text": "全场五折，回T退订",
        "category": "marketing",
    }
    SmsTencent.validate_content(good, rules)
    with pytest.raises(ContentError, match="template_id"):
        SmsTencent.validate_content({**good, "template_id": ""}, rules)
    with pytest.raises(ContentError, match="category"):
        SmsTencent.validate_content({**good, "category": "promo"}, rules)
    with pytest.raises(ContentError, match="'text'"):
        validate_sms_content({**good, "text": ""}, "template_id")
    with pytest.raises(ContentError, match="回T退订"):
        SmsTencent.validate_content({**good, "text": "全场五折"}, rules)
    with pytest.raises(ContentError, match="list of strings"):
        SmsTencent.validate_content({**good, "params": "五折"}, rules)
