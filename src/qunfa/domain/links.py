"""Tracked short links: the code format (pure, standard library only).

A campaign's link ``i`` becomes ``<public_url>/l/<code>``::

    code = base64url( varint(campaign id) ‖ varint(i) ‖ HMAC-SHA256(key, "L" ‖ ids ‖ target)[:6] )

— 10 to 14 characters for any realistic campaign. The tag covers the *target* URL as well as
the ids, so the code proves both which link it is and where it may redirect: a code whose
stored target was altered, or whose bytes were changed, fails verification (never an open
redirect). 48 bits of tag make guessing a valid code an online search of ~2^47 requests.

Channels that render per recipient append ``.<r>``, a signed delivery reference::

    r = base64url( varint(delivery id) ‖ HMAC-SHA256(key, "R" ‖ varint(campaign id) ‖ ids)[:5] )

so a click names the person it was sent to without carrying any personal data, and a
reference cannot be moved to another campaign's links. Decoding is canonical: a code is
accepted only if re-encoding its bytes gives the same text (base64's spare bits cannot be
flipped to make a second spelling of one code).

The key is derived from the keyring's blind key (``services/links.py``): no new secret.
"""

from __future__ import annotations

import base64
import hmac
import re

CODE_MAC_BYTES = 6
RECIPIENT_MAC_BYTES = 5
PATH = "/l/"  # the route prefix: <public_url>/l/<code>[.<r>]
_B64 = re.compile(r"^[A-Za-z0-9_-]{2,64}$")


def _varint(n: int) -> bytes:
    """Unsigned LEB128: 7 bits a byte, the high bit says "more follows"."""
    if n < 0:
        raise ValueError("a link id cannot be negative")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varints(raw: bytes, count: int) -> tuple[int, ...] | None:
    """Exactly ``count`` minimal varints filling ``raw``; None otherwise."""
    values: list[int] = []
    pos = 0
    for _ in range(count):
        n = shift = 0
        while True:
            if pos >= len(raw) or shift > 63:
                return None
            byte = raw[pos]
            pos += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if byte == 0 and shift > 7:  # a non-minimal spelling (trailing zero group)
                    return None
                break
        values.append(n)
    return tuple(values) if pos == len(raw) else None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes | None:
    if not _B64.match(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        return None
    return raw if _b64(raw) == text else None  # canonical spelling only


def _mac(key: bytes, data: bytes, size: int) -> bytes:
    return hmac.digest(key, data, "sha256")[:size]


def make_code(key: bytes, campaign_id: int, index: int, target: str) -> str:
    """The short code of link ``index`` of a campaign, redirecting to ``target``."""
    ids = _varint(campaign_id) + _varint(index)
    return _b64(ids + _mac(key, b"L" + ids + target.encode(), CODE_MAC_BYTES))


def read_code(code: str) -> tuple[int, int] | None:
    """``(campaign id, link index)`` a code claims, before its tag is checked (None: malformed).

    The caller looks up the campaign's target for that link and calls :func:`verify_code`.
    """
    raw = _unb64(code)
    if raw is None or len(raw) <= CODE_MAC_BYTES:
        return None
    ids = _read_varints(raw[:-CODE_MAC_BYTES], 2)
    return (ids[0], ids[1]) if ids is not None else None


def verify_code(key: bytes, code: str, target: str) -> bool:
    """Whether ``code`` is genuine for the target it claims (constant-time compare)."""
    claimed = read_code(code)
    if claimed is None:
        return False
    return hmac.compare_digest(code, make_code(key, claimed[0], claimed[1], target))


def make_recipient(key: bytes, campaign_id: int, delivery_id: int) -> str:
    """The per-recipient part ``r`` of a link sent to delivery ``delivery_id``."""
    did = _varint(delivery_id)
    return _b64(did + _mac(key, b"R" + _varint(campaign_id) + did, RECIPIENT_MAC_BYTES))


def read_recipient(key: bytes, campaign_id: int, part: str) -> int | None:
    """The delivery id of a genuine recipient part of ``campaign_id``'s links, else None."""
    raw = _unb64(part)
    if raw is None or len(raw) <= RECIPIENT_MAC_BYTES:
        return None
    ids = _read_varints(raw[:-RECIPIENT_MAC_BYTES], 1)
    if ids is None:
        return None
    return ids[0] if hmac.compare_digest(part, make_recipient(key, campaign_id, ids[0])) else None


def split(token: str) -> tuple[str, str | None]:
    """``"<code>.<r>"`` → ``(code, r)``; ``"<code>"`` → ``(code, None)``."""
    code, dot, part = token.partition(".")
    return code, (part if dot else None)
