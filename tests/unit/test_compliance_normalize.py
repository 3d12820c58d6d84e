"""The normaliser: evasions removed, offsets mapped back to the original text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from qunfa.compliance.normalize import _normalize_reference, normalize, normalize_text

TEXT = st.text(
    alphabet=st.one_of(
        st.characters(),
        st.sampled_from("转發最佳ＡＢ１　，。！\u200b\ufeff\u2060😀👍🏻〇⑴ΑΣаé\u0301İ"),
    ),
    max_size=60,
)


@given(TEXT)
@settings(max_examples=400, deadline=None)
def test_offset_map_invariants(text: str) -> None:
    n = normalize(text)
    assert len(n.origin) == len(n.text)
    assert all(0 <= o < len(text) for o in n.origin)
    assert all(a <= b for a, b in zip(n.origin, n.origin[1:], strict=False))
    # the fast path agrees with the reference
    assert normalize_text(text) == n.text
    # a normalised span maps back to original characters that re-normalise to it
    for start in range(0, len(n.text), 3):
        end = min(len(n.text), start + 4)
        a, b = n.original_span(start, end)
        assert n.text[start:end] in normalize(text[a:b]).text


@given(TEXT)
@settings(max_examples=400, deadline=None)
def test_fast_offset_map_equals_reference(text: str) -> None:
    # The run-based offset map (the common case) must be exactly the per-character one.
    fast, ref = normalize(text), _normalize_reference(text)
    assert fast.text == ref.text
    assert fast.origin == ref.origin


@given(st.text(alphabet=st.sampled_from("转发最佳全网VIPvip ，。！、：；.-_1a"), max_size=80))
@settings(max_examples=300, deadline=None)
def test_fast_path_on_ordinary_text(text: str) -> None:
    # Ordinary CJK/ASCII with punctuation: the case the fast path is for.
    fast, ref = normalize(text), _normalize_reference(text)
    assert (fast.text, fast.origin) == (ref.text, ref.origin)


def test_evasions() -> None:
    cases = {
        "转 发 到 朋 友 圈": "转发到朋友圈",
        "轉發到朋友圈": "转发到朋友圈",
        "ＺＨＵＡＮ　ＦＡ": "zhuanfa",
        "最\u200b佳": "最佳",
        "最😀佳": "最佳",
        "ΑΒС ОР": "abcop",
        "zhuǎn fā": "zhuanfa",
        "①〇": "1零",
    }
    for raw, expected in cases.items():
        assert normalize(raw).text == expected
        assert normalize_text(raw) == expected


def test_origin_points_at_original() -> None:
    n = normalize("全 网 最低价")
    assert n.text == "全网最低价"
    assert n.original_span(0, 3) == (0, 5)
