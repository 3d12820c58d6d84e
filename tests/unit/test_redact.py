"""Free text is stored with e-mails and long numbers masked (domain/redact.py)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qunfa.domain.redact import EMAIL, NUMBER, redact

FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@pytest.mark.parametrize(
    "text",
    [
        "我的手机是13800138000请回电",
        "+86 138 0013 8000",
        "138-0013-8000",
        "0086 138.0013.8000",
        "电话：010-8888 6666",
        "身份证 11010519491231002X 谢谢",
        "卡号 6222 0200 0000 0000 000",
        "１３８００１３８０００",
        "13800138000, 13900139000",
    ],
)
def test_numbers_in_every_spelling_are_masked(text: str) -> None:
    out = redact(text)
    assert NUMBER in out
    assert not re.search(r"\d(?:[ \u3000\-.]?\d){6}", out), out


def test_e_mails_are_masked_and_the_rest_is_kept() -> None:
    assert redact("联系 zhang.san+vip@example.com.cn 退款") == f"联系 {EMAIL} 退款"
    assert redact("订单 3 件，共 299.00 元，2026 年 11 月 23 日 14:30") == (
        "订单 3 件，共 299.00 元，2026 年 11 月 23 日 14:30"
    )


@given(st.text())
def test_masking_is_idempotent_and_leaves_no_long_number(text: str) -> None:
    once = redact(text)
    assert redact(once) == once
    assert not re.search(r"\d(?:[ \u3000\-.]?\d){6}", once)


@given(st.text(alphabet=st.characters(blacklist_categories=("Nd",), blacklist_characters="@")))
def test_text_without_digits_or_at_signs_is_unchanged(text: str) -> None:
    assert redact(text) == text


SPELLINGS = [
    lambda n: n,
    lambda n: "+86 " + n,
    lambda n: f"{n[:3]} {n[3:7]} {n[7:]}",
    lambda n: f"{n[:3]}-{n[3:7]}-{n[7:]}",
]


@given(
    st.integers(13_000_000_000, 19_999_999_999),
    st.sampled_from(range(len(SPELLINGS))),
    st.booleans(),
    st.text(alphabet="退款请回电 ，。", max_size=5),
)
def test_a_phone_inside_a_sentence_never_survives(
    phone: int, form: int, wide: bool, around: str
) -> None:
    spelled = SPELLINGS[form](str(phone))
    if wide:
        spelled = spelled.translate(FULL_WIDTH)
    out = redact(around + spelled + around)
    assert str(phone)[3:7] not in out.translate(str.maketrans("０１２３４５６７８９", "0123456789"))
