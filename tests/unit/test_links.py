"""Tracked short links: the code format (Hypothesis), UTM parameters and the text rewrite."""

from __future__ import annotations

import hmac
from urllib.parse import parse_qsl, urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from qunfa.compliance.links import add_utm, rewrite
from qunfa.domain import links as dom

KEY = hmac.digest(b"blind-key-for-tests", b"qunfa/link-code/v1", "sha256")
ids = st.integers(min_value=0, max_value=2**40)
targets = st.text(min_size=1, max_size=80).map(lambda t: "https://shop.example/" + t)


@settings(max_examples=300, deadline=None)
@given(campaign=ids, index=st.integers(min_value=0, max_value=5000), target=targets)
def test_code_round_trip(campaign: int, index: int, target: str) -> None:
    code = dom.make_code(KEY, campaign, index, target)
    assert dom.read_code(code) == (campaign, index)
    assert dom.verify_code(KEY, code, target)
    assert not dom.verify_code(KEY, code, target + "x")  # another target: refused
    assert not dom.verify_code(b"other key", code, target)
    assert all(ch.isalnum() or ch in "-_" for ch in code)  # URL-safe, no padding, no dot


def test_codes_are_short() -> None:
    assert len(dom.make_code(KEY, 123_456, 3, "https://a.example/")) <= 14
    assert len(dom.make_code(KEY, 1, 0, "https://a.example/")) <= 12


@settings(max_examples=300, deadline=None)
@given(
    campaign=ids,
    index=st.integers(min_value=0, max_value=300),
    target=targets,
    pos=st.integers(min_value=0),
    char=st.sampled_from("ABCabc019-_"),
)
def test_a_tampered_code_is_refused(
    campaign: int, index: int, target: str, pos: int, char: str
) -> None:
    code = dom.make_code(KEY, campaign, index, target)
    i = pos % len(code)
    tampered = code[:i] + char + code[i + 1 :]
    if tampered == code:
        return
    claimed = dom.read_code(tampered)
    # The tag covers the ids and the target: whatever the change claims, it does not verify
    # (for the target stored with the campaign it now names, or with the original).
    assert not dom.verify_code(KEY, tampered, target)
    if claimed is not None:
        assert not dom.verify_code(KEY, tampered, target + "?")


@given(code=st.text(max_size=30))
def test_garbage_is_never_a_code(code: str) -> None:
    if dom.read_code(code) is not None:  # well-formed by chance: the tag still fails
        assert not dom.verify_code(KEY, code, "https://shop.example/")


@settings(max_examples=200, deadline=None)
@given(campaign=ids, delivery=ids, other=ids)
def test_recipient_part_round_trip_and_binding(campaign: int, delivery: int, other: int) -> None:
    part = dom.make_recipient(KEY, campaign, delivery)
    assert dom.read_recipient(KEY, campaign, part) == delivery
    if other != campaign:  # a part cannot be moved to another campaign's links
        assert dom.read_recipient(KEY, other, part) is None
    assert dom.read_recipient(KEY, campaign, part[:-1]) is None
    assert dom.read_recipient(KEY, campaign, part + "A") is None
    assert dom.split(f"abc.{part}") == ("abc", part) and dom.split("abc") == ("abc", None)


def test_non_canonical_base64_spelling_is_refused() -> None:
    # 8 bytes → 11 characters (66 bits): the last character's 2 spare bits decode to the same
    # bytes whatever they are, and must not make a second valid spelling of the code.
    code = dom.make_code(KEY, 7, 1, "https://a.example/")
    spare = len(code) * 6 % 8
    assert spare
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(code[-1])
    twins = {code[:-1] + alphabet[(last >> spare << spare) | low] for low in range(1 << spare)}
    assert len(twins) == 1 << spare
    assert [t for t in twins if dom.read_code(t) is not None] == [code]


def test_utm_added_and_operator_values_kept() -> None:
    url = add_utm("https://shop.example/a?b=1&utm_source=newsletter#top", channel="email",
                  campaign="42")  # fmt: skip
    parts = urlsplit(url)
    assert parts.fragment == "top" and parts.path == "/a"
    assert parse_qsl(parts.query) == [
        ("b", "1"), ("utm_source", "newsletter"), ("utm_medium", "email"), ("utm_campaign", "42"),
    ]  # fmt: skip
    assert add_utm("https://shop.example", channel="x", campaign="1") == (
        "https://shop.example/?utm_source=qunfa&utm_medium=x&utm_campaign=1"
    )


def _short(url: str) -> str:
    return f"https://qf.example/l/{len(url)}"


def test_rewrite_replaces_scheme_links_only() -> None:
    text = "快看https://shop.example/a?b=1。官网 shop.example/x 与 http://10.0.0.1/p 以及{{ name }}"
    new, tracked = rewrite(text, _short)
    assert [t.original for t in tracked] == ["https://shop.example/a?b=1", "http://10.0.0.1/p"]
    assert new == (
        "快看https://qf.example/l/26。官网 shop.example/x 与 https://qf.example/l/17 以及{{ name }}"
    )
    for t in tracked:
        assert text[t.start : t.end] == t.original


def test_rewrite_leaves_template_built_urls_loaded_images_and_refusals() -> None:
    text = "https://shop.example/u?id={{ attrs.code }} 和 https://keep.example/"
    new, tracked = rewrite(text, lambda u: None if "keep" in u else _short(u))
    assert new == text and tracked == []
    html = (
        '<img src="https://cdn.example/a.png"><a href="https://shop.example/a?x=1&amp;y=2">'
        "https://shop.example/b</a>"
    )
    new, tracked = rewrite(html, _short, html=True)
    assert "https://cdn.example/a.png" in new  # loaded, not clicked
    assert [t.original for t in tracked] == ["https://shop.example/a?x=1&y=2",
                                             "https://shop.example/b"]  # fmt: skip
    assert new.count("https://qf.example/l/") == 2
