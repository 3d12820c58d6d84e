"""Field encryption at rest: AES-256-GCM with a key-id prefix, and an HMAC blind index.

Ciphertext layout: ``0x01 ‖ len(key_id) ‖ key_id ‖ nonce(12) ‖ ciphertext+tag``. The key id
lets keys rotate: new writes use the active key, reads find the key the value was written
with. The blind index (HMAC-SHA256, truncated to 16 bytes) supports equality lookups and
dedupe without ever comparing plaintext; it uses its own key, never rotated with the data keys.

The keyring lives in a JSON file (``keys.json`` in the data folder, mode 0600), created by
``qunfa init``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
NONCE = 12


class KeyError_(Exception):
    """A value cannot be decrypted: unknown key id or tampered ciphertext."""


@dataclass
class Keyring:
    active: str
    keys: dict[str, bytes]
    blind_key: bytes
    _aead: dict[str, AESGCM] = field(default_factory=dict, repr=False)
    # The file this keyring came from: a key id we do not know yet means another process
    # rotated the keys (``qunfa keys rotate``), so we reload it once instead of failing.
    path: Path | None = field(default=None, repr=False)
    # HMAC-SHA256's inner and outer states after the key block (RFC 2104), built once: a
    # blind index then costs two state copies and two short updates instead of re-keying.
    _hmac_states: tuple[hashlib._Hash, hashlib._Hash] | None = field(
        default=None, repr=False, compare=False
    )

    @classmethod
    def generate(cls) -> Keyring:
        return cls(active="k1", keys={"k1": AESGCM.generate_key(256)}, blind_key=os.urandom(32))

    @classmethod
    def load(cls, path: Path) -> Keyring:
        data = json.loads(path.read_text())
        return cls(
            active=data["active"],
            keys={k: base64.b64decode(v) for k, v in data["keys"].items()},
            blind_key=base64.b64decode(data["blind_key"]),
            path=path,
        )

    @classmethod
    def load_or_create(cls, path: Path) -> Keyring:
        if path.exists():
            return cls.load(path)
        ring = cls.generate()
        ring.save(path)
        ring.path = path
        return ring

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "active": self.active,
            "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()},
            "blind_key": base64.b64encode(self.blind_key).decode(),
        }
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        tmp.replace(path)

    def add_key(self) -> str:
        """Add a fresh key and make it active; old keys stay for reading."""
        n = 1 + max(int(k[1:]) for k in self.keys if k[1:].isdigit())
        kid = f"k{n}"
        self.keys[kid] = AESGCM.generate_key(256)
        self.active = kid
        return kid

    def _cipher(self, kid: str) -> AESGCM:
        aead = self._aead.get(kid)
        if aead is None:
            if kid not in self.keys:
                self._reload()
            try:
                aead = self._aead[kid] = AESGCM(self.keys[kid])
            except KeyError:
                raise KeyError_(
                    f"unknown key id {kid!r}: is keys.json the right keyring?"
                ) from None
        return aead

    def _reload(self) -> None:
        """Pick up keys added by a rotation in another process (keys are only ever added)."""
        if self.path is None or not self.path.exists():
            return
        fresh = Keyring.load(self.path)
        if fresh.blind_key != self.blind_key:
            raise KeyError_(f"{self.path} holds a different keyring (its blind key differs)")
        self.keys.update(fresh.keys)
        self.active = fresh.active

    def encrypt(self, plaintext: str) -> bytes:
        kid = self.active.encode()
        nonce = secrets.token_bytes(NONCE)
        ct = self._cipher(self.active).encrypt(nonce, plaintext.encode(), kid)
        return bytes([VERSION, len(kid)]) + kid + nonce + ct

    def encrypt_many(self, plaintexts: list[str]) -> list[bytes]:
        """:meth:`encrypt` for a page of values, with all nonces from one ``urandom`` call."""
        kid = self.active.encode()
        head = bytes([VERSION, len(kid)]) + kid
        aead = self._cipher(self.active)
        enc = aead.encrypt
        size = NONCE * len(plaintexts)
        pool = secrets.token_bytes(size)
        nonces = [pool[i : i + NONCE] for i in range(0, size, NONCE)]
        return [head + n + enc(n, p.encode(), kid) for n, p in zip(nonces, plaintexts, strict=True)]

    def decrypt(self, blob: bytes) -> str:
        if not blob or blob[0] != VERSION:
            raise KeyError_("not a qunfa ciphertext (bad version byte)")
        n = blob[1]
        kid = blob[2 : 2 + n]
        nonce = blob[2 + n : 2 + n + NONCE]
        try:
            return self._cipher(kid.decode()).decrypt(nonce, blob[2 + n + NONCE :], kid).decode()
        except InvalidTag:
            raise KeyError_("ciphertext failed authentication (tampered or wrong key)") from None

    def decrypt_many(self, blobs: Iterable[bytes]) -> list[str]:
        """:meth:`decrypt` for many values (a campaign check reads every name of the audience):
        the cipher is looked up once per key id, not once per value."""
        out: list[str] = []
        append = out.append
        ciphers: dict[bytes, AESGCM] = {}
        for blob in blobs:
            if not blob or blob[0] != VERSION:
                raise KeyError_("not a qunfa ciphertext (bad version byte)")
            n = blob[1]
            kid = blob[2 : 2 + n]
            aead = ciphers.get(kid)
            if aead is None:
                aead = ciphers[kid] = self._cipher(kid.decode())
            try:
                append(
                    aead.decrypt(blob[2 + n : 2 + n + NONCE], blob[2 + n + NONCE :], kid).decode()
                )
            except InvalidTag:
                raise KeyError_(
                    "ciphertext failed authentication (tampered or wrong key)"
                ) from None
        return out

    def key_id_of(self, blob: bytes) -> str:
        return blob[2 : 2 + blob[1]].decode()

    def blind(self, value: str) -> bytes:
        """Blind index of ``value``: equal inputs give equal 16-byte digests.

        HMAC-SHA256(blind_key, value) truncated to 16 bytes, computed from the precomputed
        key states: half the time of ``hmac.digest`` (~0.9 against ~1.9 µs), which an import
        pays twice a row (``tests/unit/test_crypto.py`` checks the two agree)."""
        states = self._hmac_states or self._key_states()
        inner = states[0].copy()
        inner.update(value.encode())
        outer = states[1].copy()
        outer.update(inner.digest())
        return outer.digest()[:16]

    def blind_many(self, values: Iterable[str | None]) -> list[bytes | None]:
        """:meth:`blind` of each value (None stays None), in one loop: an import's columns."""
        inner, outer = self._hmac_states or self._key_states()
        out: list[bytes | None] = []
        append = out.append
        for value in values:
            if value is None:
                append(None)
                continue
            i = inner.copy()
            i.update(value.encode())
            o = outer.copy()
            o.update(i.digest())
            append(o.digest()[:16])
        return out

    def _key_states(self) -> tuple[hashlib._Hash, hashlib._Hash]:
        block = self.blind_key
        if len(block) > 64:  # SHA-256's block size; longer keys are hashed first (RFC 2104)
            block = hashlib.sha256(block).digest()
        block = block.ljust(64, b"\0")
        self._hmac_states = (
            hashlib.sha256(bytes(b ^ 0x36 for b in block)),
            hashlib.sha256(bytes(b ^ 0x5C for b in block)),
        )
        return self._hmac_states
