"""The pure consent domain: scopes, SMS unsubscribe replies, ledger state, link tokens."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qunfa.channels.registry import channels
from qunfa.domain import consent as dom
from qunfa.domain.consent import LedgerEntry as E


def test_every_registered_channel_has_a_scope_that_covers_its_recipient_kind() -> None:
    for key, cls in channels().items():
        scope = dom.scope_of(key)
        assert cls.recipient_kind in dom.kinds_of(scope), key
    assert dom.scope_of("sms_aliyun") == dom.scope_of("sms_tencent") == "sms"
    assert dom.scope_of("wechat_template") == "wechat_oa" and dom.scope_of("*") == "*"
    assert set(dom.kinds_of("*")) >= {"phone", "email", "openid", "external_userid"}
    with pytest.raises(dom.ConsentError, match="unknown channel"):
        dom.scope_of("carrier_pigeon")


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


padding = st.text(alphabet=" \t\n\u3000\u200b。，！.,!?？~【】()（）", max_size=4)
keyword = st.sampled_from(dom.UNSUBSCRIBE_KEYWORDS)


@given(keyword, padding, padding, st.booleans(), st.booleans())
def test_unsubscribe_keywords_in_any_case_width_and_padding(
    word: str, before: str, after: str, upper: bool, wide: bool
) -> None:
    text = word.upper() if upper else word
    text = _fullwidth(text) if wide else text
    assert dom.is_unsubscribe_reply(before + text + after)


@given(st.lists(keyword, min_size=1, max_size=3), padding)
def test_a_reply_made_only_of_keywords_is_an_unsubscribe(words: list[str], sep: str) -> None:
    assert dom.is_unsubscribe_reply(sep.join(words))


@given(keyword, st.sampled_from(["好的", "ok", "谢谢", "1", "吗", "x"]))
def test_keywords_inside_other_words_are_not_an_unsubscribe(word: str, other: str) -> None:
    assert not dom.is_unsubscribe_reply(word + other)
    assert not dom.is_unsubscribe_reply(other + " " + word + "吧")


@given(st.text(alphabet=st.characters(categories=["Nd"]), min_size=1, max_size=8))
def test_digits_are_not_an_unsubscribe(digits: str) -> None:
    assert not dom.is_unsubscribe_reply(digits)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [("T", True), ("td", True), ("ＴＤ", True), (" 退订 ", True), ("回T退订", False),
     ("T退订", True), ("拒收", True), ("R", True), ("取消订阅!", True), ("Unsubscribe", True),
     ("", False), ("   ", False), ("退订了吗？", False), ("TT", True), ("tdx", False)],
)  # fmt: skip
def test_examples(reply: str, expected: bool) -> None:
    assert dom.is_unsubscribe_reply(reply) is expected


def test_normalise_reply_folds_width_and_drops_invisible_characters() -> None:
    assert dom.normalise_reply("\ufeffＴ\u200bＤ。") == "td"
    assert unicodedata.normalize("NFKC", "Ｔ") == "T"


def test_state_is_the_latest_entry_of_the_scope_or_star() -> None:
    assert dom.consent_state([], "sms") == dom.UNKNOWN
    ledger = [E("sms", "granted", 1.0), E("*", "withdrawn", 2.0)]
    assert dom.consent_state(ledger, "sms") == "withdrawn"
    assert dom.consent_state(ledger, "email") == "withdrawn"
    ledger.append(E("sms", "granted", 3.0))
    assert dom.consent_state(ledger, "sms") == "granted"
    assert dom.consent_state(ledger, "email") == "withdrawn"  # only sms was lifted
    assert dom.consent_state(ledger, "*") == "withdrawn"  # a scope never changes "*"
    # Same time: the later row (id) wins.
    tie = [E("sms", "withdrawn", 5.0, id=2), E("sms", "granted", 5.0, id=1)]
    assert dom.consent_state(tie, "sms") == "withdrawn"
    by_scope = dom.state_by_scope(ledger)
    assert by_scope["sms"] == "granted" and by_scope["wecom"] == "withdrawn"


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["sms", "email", "*"]), st.sampled_from(["granted", "withdrawn"])
        ),
        max_size=12,
    )
)
def test_state_equals_the_last_relevant_entry_in_order(rows: list[tuple[str, str]]) -> None:
    ledger = [E(scope, status, float(i), id=i) for i, (scope, status) in enumerate(rows)]
    relevant = [status for scope, status in rows if scope in ("sms", "*")]
    assert dom.consent_state(ledger, "sms") == (relevant[-1] if relevant else dom.UNKNOWN)


@given(st.integers(min_value=1, max_value=2**63 - 1))
def test_tokens_round_trip_and_never_carry_the_key(delivery_id: int) -> None:
    key = b"k" * 32
    token = dom.make_token(key, delivery_id)
    assert dom.read_token(key, token) == delivery_id
    assert dom.read_token(b"x" * 32, token) is None  # another installation's key
    assert "=" not in token and "/" not in token and "+" not in token


def test_tampered_or_malformed_tokens_are_refused() -> None:
    key = b"k" * 32
    token = dom.make_token(key, 42)
    flipped = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    forged = dom.make_token(b"other", 43)
    for bad in (flipped, forged, "", "!!!", token[:-4], token + "AAAA"):
        assert dom.read_token(key, bad) is None
