"""Idempotency keys, backoff and audience parsing (property-based where it matters)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qunfa.domain.audience import AudienceError, parse_audience
from qunfa.domain.backoff import backoff_delay
from qunfa.domain.keys import batch_key
from qunfa.domain.outcomes import ErrorClass, PlatformError, most_severe


@given(st.text(min_size=1, max_size=80), st.integers(min_value=0, max_value=10**9))
def test_batch_key_is_deterministic_and_fits_clientmsgid(uid: str, batch_no: int) -> None:
    key = batch_key(uid, batch_no)
    assert key == batch_key(uid, batch_no)
    assert len(key.encode()) <= 64  # clientmsgid limit (45067)


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=10**6))
def test_batch_keys_differ_per_batch(a: int, b: int) -> None:
    uid = "0123456789abcdef0123456789abcdef"
    assert (batch_key(uid, a) == batch_key(uid, b)) == (a == b)


def test_batch_key_shape() -> None:
    assert batch_key("abc", 7) == "qf-abc-7"


@given(st.integers(min_value=1, max_value=40), st.floats(min_value=0, max_value=120))
def test_backoff_is_bounded_and_honours_minimum(attempt: int, minimum: float) -> None:
    delay = backoff_delay(attempt, base=2.0, cap=300.0, minimum=minimum, rng=random.Random(1))
    assert delay >= minimum
    assert delay <= max(300.0, minimum)


def test_backoff_grows() -> None:
    rng = random.Random(0)
    first = max(backoff_delay(1, rng=rng) for _ in range(20))
    tenth = min(backoff_delay(8, rng=rng) for _ in range(20))
    assert tenth > first


def test_backoff_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0)


@pytest.mark.parametrize(
    ("text", "kind", "tag"),
    [("all", "all", None), ("tag:VIP", "tag", "VIP"), (" tag: 上海 ", "tag", "上海")],
)
def test_parse_audience(text: str, kind: str, tag: str | None) -> None:
    aud = parse_audience(text)
    assert aud.kind == kind and aud.tag == tag


@pytest.mark.parametrize("bad", ["", "everyone", "tag:", "openids:", "segment:", "expr:tag("])
def test_parse_audience_errors_say_what_to_write(bad: str) -> None:
    with pytest.raises(AudienceError, match=r"all|tag|openid|segment"):
        parse_audience(bad)


@given(st.lists(st.from_regex(r"o[A-Za-z0-9_-]{27}", fullmatch=True), min_size=1, max_size=5))
def test_openid_audience_round_trips(openids: list[str]) -> None:
    aud = parse_audience("openids:" + ",".join(openids))
    assert list(aud.openids) == openids
    assert parse_audience(str(aud)) == aud


def test_most_severe_prefers_account_problems() -> None:
    errs = [
        PlatformError(-1, "busy", ErrorClass.RETRYABLE),
        PlatformError(40001, "secret", ErrorClass.ACCOUNT),
        PlatformError(40037, "template", ErrorClass.BATCH),
    ]
    assert most_severe(errs).code == 40001
    with pytest.raises(ValueError):
        most_severe([])
