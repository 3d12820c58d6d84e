"""Webhook signatures: any body round-trips; any single bit flip (body or signature) fails."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from qunfa.channels.webhook import retry_after, sign, verify

NOW = 1_700_000_000
secrets_ = st.text(min_size=1, max_size=40)
bodies = st.binary(max_size=2000)


@given(secret=secrets_, body=bodies)
def test_any_body_round_trips(secret: str, body: bytes) -> None:
    signature = sign(secret, NOW, body)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify(secret, NOW, body, signature, now=NOW)
    assert verify(secret, str(NOW), body, signature, now=NOW + 299)  # header value is a string


@given(secret=secrets_, body=bodies.filter(bool), data=st.data())
def test_any_bit_flip_in_the_body_fails(secret: str, body: bytes, data: st.DataObject) -> None:
    bit = data.draw(st.integers(0, len(body) * 8 - 1))
    flipped = bytearray(body)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert not verify(secret, NOW, bytes(flipped), sign(secret, NOW, body), now=NOW)


@given(secret=secrets_, body=bodies, data=st.data())
def test_any_bit_flip_in_the_signature_fails(secret: str, body: bytes, data: st.DataObject) -> None:
    signature = sign(secret, NOW, body).encode()
    bit = data.draw(st.integers(0, len(signature) * 8 - 1))
    flipped = bytearray(signature)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert not verify(secret, NOW, body, flipped.decode("latin-1"), now=NOW)


@given(secret=secrets_, other=secrets_, body=bodies)
def test_another_secret_or_timestamp_fails(secret: str, other: str, body: bytes) -> None:
    signature = sign(secret, NOW, body)
    assert verify(other, NOW, body, signature, now=NOW) == (other == secret)
    assert not verify(secret, NOW + 1, body, signature, now=NOW)


def test_the_signed_string_is_timestamp_dot_body() -> None:
    # Pinned vector: HMAC-SHA256("secret", "1700000000.{}") — receivers in any language match it.
    expected = "sha256=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
    assert expected == "sha256=" + hmac.new(b"secret", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert sign("secret", NOW, "{}") == sign("secret", NOW, b"{}") == expected


def test_stale_or_future_timestamps_fail() -> None:
    sig = sign("s", NOW, b"x")
    assert not verify("s", NOW, b"x", sig, now=NOW + 301)
    assert not verify("s", NOW, b"x", sig, now=NOW - 301)
    assert not verify("s", "not-a-number", b"x", sig, now=NOW)


def test_retry_after_parses_seconds_and_dates() -> None:
    assert retry_after("120") == 120
    assert retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 15 Nov 2023 22:13:20 GMT", now=NOW) == 86400
    assert retry_after("Mon, 13 Nov 2023 22:13:20 GMT", now=NOW) == 0  # in the past: no wait
