"""Consent and opt-out, the pure part: scopes, unsubscribe replies, ledger state, link tokens.

- A **scope** is a channel family: a withdrawal from SMS covers every SMS channel (Tencent and
  Aliyun), one from the Official Account covers mass and template messages. ``*`` is every
  scope. :data:`CHANNEL_SCOPES` maps each channel key to its scope and :data:`SCOPE_KINDS` each
  scope to the identity kinds it sends to (what a withdrawal suppresses).
- An **unsubscribe reply** is an SMS a person sends back ("回T退订"): :func:`is_unsubscribe_reply`
  recognises the keywords the platforms and carriers use, ignoring case, full/half width,
  whitespace and punctuation around them.
- The **ledger** is append-only; the state of a scope is its latest relevant entry
  (:func:`consent_state`): entries of the scope itself and of ``*`` both count, the latest wins.
- **Unsubscribe tokens** (the ``/u/<token>`` e-mail link) name a delivery and carry an HMAC, so
  they cannot be guessed or forged and never contain the address (:func:`make_token`).

Standard library only.
"""

from __future__ import annotations

import base64
import hmac
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ALL = "*"
GRANTED = "granted"
WITHDRAWN = "withdrawn"
UNKNOWN = "unknown"  # no ledger entry: neither granted nor withdrawn

# Channel key → scope (channel family). A new channel must be added here (a unit test checks
# every registered channel has a scope); a scope name is also accepted wherever a channel is.
CHANNEL_SCOPES: Mapping[str, str] = {
    "sms_tencent": "sms",
    "sms_aliyun": "sms",
    "email": "email",
    "wechat_oa": "wechat_oa",
    "wechat_template": "wechat_oa",
    "wechat_custom": "wechat_oa",
    "wecom_customer": "wecom",
    "wecom_app": "wecom",
    "dingtalk": "dingtalk",
    "feishu": "feishu",
    "personal_wechat": "personal_wechat",
    "webhook": "push",
}

# Scope → the identity kinds its channels send to; a withdrawal suppresses these.
SCOPE_KINDS: Mapping[str, tuple[str, ...]] = {
    "sms": ("phone",),
    "email": ("email",),
    "wechat_oa": ("openid",),
    "wecom": ("external_userid", "userid"),
    "dingtalk": ("dingtalk_userid",),
    "feishu": ("feishu_open_id",),
    "personal_wechat": ("wechat_remark",),
    "push": ("webhook_id",),
}
SCOPES: tuple[str, ...] = (*SCOPE_KINDS, ALL)

# Address kinds a person can hand us directly (suppression list imports, the API).
ADDRESS_SCOPES: Mapping[str, str] = {"phone": "sms", "email": "email"}


class ConsentError(ValueError):
    """A consent request that cannot be carried out; the message says why."""


def scope_of(channel_or_scope: str) -> str:
    """The scope of a channel key, or the scope itself (``sms``, ``*`` …)."""
    if channel_or_scope in SCOPES:
        return channel_or_scope
    scope = CHANNEL_SCOPES.get(channel_or_scope)
    if scope is None:
        known = ", ".join(SCOPES)
        raise ConsentError(f"unknown channel or scope {channel_or_scope!r}; scopes: {known}")
    return scope


def kinds_of(scope: str) -> tuple[str, ...]:
    """Identity kinds a withdrawal from ``scope`` suppresses (``*``: every kind)."""
    if scope == ALL:
        return tuple(sorted({k for kinds in SCOPE_KINDS.values() for k in kinds}))
    return SCOPE_KINDS[scope_of(scope)]


# -- SMS unsubscribe replies ----------------------------------------------------------------------
# The keywords marketing SMS advertise and carriers honour: 回T退订 / 回TD退订 / 回N退订 (the
# common suffixes), 拒收请回复R (Aliyun's marketing suffix since 2023), and the words themselves.
# A reply is an unsubscribe when, after normalisation, it is made only of these keywords
# ("T", "td", "ＴＤ。", " 退订 ", "T退订"); "退订了吗？" with other words is not, so a question
# or a chat does not silently cut someone off.
UNSUBSCRIBE_KEYWORDS: tuple[str, ...] = (
    "t", "td", "n", "r", "退订", "取消", "取消订阅", "拒收", "unsubscribe", "stop",
)  # fmt: skip
_KEYWORDS = re.compile(
    "(?:" + "|".join(sorted(map(re.escape, UNSUBSCRIBE_KEYWORDS), key=len, reverse=True)) + ")+"
)


def normalise_reply(text: str) -> str:
    """NFKC (full width → half width), case-folded, without whitespace, punctuation, symbols
    and invisible characters (zero-width spaces, BOM)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if unicodedata.category(ch)[0] not in "PSZC")


def is_unsubscribe_reply(text: str) -> bool:
    """True when an SMS reply asks to stop: only unsubscribe keywords, in any case or width."""
    return _KEYWORDS.fullmatch(normalise_reply(text)) is not None


# -- ledger state ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LedgerEntry:
    """One row of the consent ledger as the domain needs it."""

    scope: str
    status: str  # granted | withdrawn
    at: float
    id: int = 0  # ties at the same time go to the later row


def consent_state(entries: Iterable[LedgerEntry], scope: str) -> str:
    """granted | withdrawn | unknown for ``scope``: the latest entry of the scope or of ``*``.

    For ``*`` itself only ``*`` entries count (withdrawing SMS does not withdraw everything).
    """
    relevant = (ALL,) if scope == ALL else (scope, ALL)
    latest = max(
        (e for e in entries if e.scope in relevant), key=lambda e: (e.at, e.id), default=None
    )
    return UNKNOWN if latest is None else latest.status


def state_by_scope(entries: Iterable[LedgerEntry]) -> dict[str, str]:
    """The state of every scope the ledger mentions (``*`` entries reach every scope)."""
    items = list(entries)
    mentioned = {e.scope for e in items}
    scopes = list(SCOPES) if ALL in mentioned else sorted(mentioned)
    return {s: consent_state(items, s) for s in scopes}


# -- unsubscribe link tokens ----------------------------------------------------------------------
TOKEN_VERSION = 1
_MAC_BYTES = 16  # 128-bit tag: not guessable, short enough for a URL


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.digest(key, b"qunfa-unsubscribe\0" + payload, "sha256")[:_MAC_BYTES]


def make_token(key: bytes, delivery_id: int) -> str:
    """URL-safe token naming one delivery: version ‖ id (8 bytes) ‖ HMAC tag (16 bytes)."""
    payload = bytes([TOKEN_VERSION]) + delivery_id.to_bytes(8, "big")
    return base64.urlsafe_b64encode(payload + _mac(key, payload)).decode().rstrip("=")


def read_token(key: bytes, token: str) -> int | None:
    """The delivery id of a genuine token, else None (malformed, other key, tampered)."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        return None
    if len(raw) != 9 + _MAC_BYTES or raw[0] != TOKEN_VERSION:
        return None
    payload, tag = raw[:9], raw[9:]
    if not hmac.compare_digest(tag, _mac(key, payload)):
        return None
    return int.from_bytes(payload[1:], "big")
