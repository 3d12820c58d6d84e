"""Field encryption at rest: round trip, tamper detection, key rotation, blind index."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qunfa.crypto.fields import KeyError_, Keyring

RING = Keyring.generate()


@given(st.text(max_size=200))
def test_round_trip(value: str) -> None:
    assert RING.decrypt(RING.encrypt(value)) == value


def test_ciphertext_is_randomised_and_hides_plaintext() -> None:
    a, b = RING.encrypt("+8613800138000"), RING.encrypt("+8613800138000")
    assert a != b
    assert b"13800138000" not in a


def test_tampering_is_detected() -> None:
    blob = bytearray(RING.encrypt("secret"))
    blob[-1] ^= 1
    with pytest.raises(KeyError_, match="authentication"):
        RING.decrypt(bytes(blob))


def test_rotation_keeps_old_values_readable(tmp_path: Path) -> None:
    ring = Keyring.generate()
    old = ring.encrypt("老值")
    new_kid = ring.add_key()
    new = ring.encrypt("新值")
    assert ring.key_id_of(old) == "k1" and ring.key_id_of(new) == new_kid == "k2"
    path = tmp_path / "keys.json"
    ring.save(path)
    loaded = Keyring.load(path)
    assert loaded.decrypt(old) == "老值" and loaded.decrypt(new) == "新值"
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_unknown_key_id_has_a_clear_error() -> None:
    other = Keyring.generate()
    other.add_key()
    blob = other.encrypt("x")
    with pytest.raises(KeyError_, match="unknown key id"):
        RING.decrypt(blob)


def test_blind_index_is_stable_and_keyed() -> None:
    assert RING.blind("o123") == RING.blind("o123")
    assert RING.blind("o123") != RING.blind("o124")
    assert Keyring.generate().blind("o123") != RING.blind("o123")
    assert len(RING.blind("o123")) == 16


def test_load_or_create_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    a = Keyring.load_or_create(path)
    b = Keyring.load_or_create(path)
    assert a.keys == b.keys and a.blind_key == b.blind_key


def test_decrypt_many_equals_decrypt_across_key_ids() -> None:
    ring = Keyring.generate()
    old = ring.encrypt_many(["张三", "李四"])
    ring.add_key()
    new = [ring.encrypt("王五"), ring.encrypt("")]
    assert ring.key_id_of(old[0]) != ring.key_id_of(new[0])
    assert ring.decrypt_many([*old, *new]) == ["张三", "李四", "王五", ""]
    assert ring.decrypt_many([]) == []
    bad = bytearray(new[0])
    bad[-1] ^= 1
    with pytest.raises(KeyError_):
        ring.decrypt_many([bytes(bad)])


@given(st.binary(min_size=1, max_size=100), st.text(max_size=60))
def test_blind_index_is_hmac_sha256_truncated(key: bytes, value: str) -> None:
    """The precomputed-state path gives exactly HMAC-SHA256(key, value)[:16], for keys shorter
    and longer than SHA-256's 64-byte block: stored blind indexes stay findable."""
    import hmac

    ring = Keyring(active="k1", keys=dict(RING.keys), blind_key=key)
    expected = hmac.digest(key, value.encode(), "sha256")[:16]
    assert ring.blind(value) == expected
    assert ring.blind(value) == expected  # the cached states are not consumed by a call
    assert ring.blind_many([value, None, value]) == [expected, None, expected]


@given(st.lists(st.text(max_size=40), max_size=30))
def test_encrypt_many_round_trips_with_distinct_nonces(values: list[str]) -> None:
    blobs = RING.encrypt_many(values)
    assert [RING.decrypt(b) for b in blobs] == values
    nonces = [b[2 + b[1] : 2 + b[1] + 12] for b in blobs]
    assert len(set(nonces)) == len(nonces)
