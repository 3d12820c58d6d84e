"""What the two SMS channels share: phone numbers, opt-out, segments, error helpers.

- :func:`normalize_cn_phone`: a mainland-China mobile number in any usual spelling (``+86``,
  ``0086``, ``86`` or none; spaces, dashes, dots, brackets, full-width digits) → E.164
  ``+861xxxxxxxxxx``; anything else raises :class:`PhoneError` naming the problem.
- :func:`check_opt_out`: marketing SMS must carry an opt-out phrase (``回T退订`` …) — the
  carriers and the MIIT rules on commercial SMS require it; transactional SMS need none.
- :func:`segment_count`: how many billable segments a text costs (70 characters in one
  segment, 67 per segment beyond; every character counts 1, the 【sign】 included).
- :func:`validate_sms_content`: the content checks both adapters run.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from qunfa.channels.base import ContentError
from qunfa.domain.outcomes import PlatformError
from qunfa.rules import RuleSet

CHINA = ZoneInfo("Asia/Shanghai")
# Phrases carriers accept as an opt-out instruction; an account may add its own
# (settings ``opt_out_phrase``).
OPT_OUT_PHRASES = ("回T退订", "退订回T", "拒收请回复R")
CATEGORIES = ("marketing", "transactional")
_SEPARATORS = re.compile(r"[\s\-.()（）]")


class PhoneError(ValueError):
    """A number that is not a mainland-China mobile number; the message says why."""


_CANONICAL = re.compile(r"\+861[3-9]\d{9}")


def normalize_cn_phone(raw: str) -> str:
    """``raw`` as E.164 (``+86`` + 11 digits), or :class:`PhoneError` saying what is wrong."""
    if _CANONICAL.fullmatch(raw):  # already canonical: the common case on re-import and send
        return raw
    text = unicodedata.normalize("NFKC", str(raw)).strip()
    if not text:
        raise PhoneError("phone number is empty")
    compact = _SEPARATORS.sub("", text)
    if compact.startswith("+"):
        if not compact[1:].isdigit():
            raise PhoneError(f"phone number {raw!r} has characters other than digits after '+'")
        if not compact.startswith("+86"):
            raise PhoneError(
                f"phone number {raw!r} is not a mainland-China number (country code must be +86)"
            )
        national = compact[3:]
    elif not compact.isdigit():
        raise PhoneError(f"phone number {raw!r} has characters other than digits")
    elif compact.startswith("0086"):
        national = compact[4:]
    elif compact.startswith("86") and len(compact) == 13:
        national = compact[2:]
    else:
        national = compact
    if len(national) != 11:
        raise PhoneError(
            f"phone number {raw!r} has {len(national)} digits after the country code; "
            "a mainland mobile number has 11"
        )
    if national[0] != "1" or national[1] not in "3456789":
        raise PhoneError(
            f"phone number {raw!r} is not a mobile number (mainland mobiles start 13–19)"
        )
    return "+86" + national


def split_recipients(
    recipients: Iterable[str], make_error: Callable[[str, str], PlatformError]
) -> tuple[dict[str, str], dict[str, PlatformError]]:
    """Normalise a batch's recipient ids: ``({E.164: id}, {id: error})``.

    Ids that are not mainland mobiles fail (``invalid_phone``); a second id for a number
    already in the batch fails too (``duplicate_phone``), so nobody gets the message twice.
    """
    phones: dict[str, str] = {}
    failures: dict[str, PlatformError] = {}
    for rid in recipients:
        try:
            e164 = normalize_cn_phone(rid)
        except PhoneError as exc:
            failures[rid] = make_error("invalid_phone", str(exc))
            continue
        if e164 in phones:
            failures[rid] = make_error("duplicate_phone", f"same number as {phones[e164]!r}")
        else:
            phones[e164] = rid
    return phones, failures


def national_number(e164: str) -> str:
    """``+8613800138000`` → ``13800138000`` (the form Aliyun's receipts use)."""
    return e164[3:] if e164.startswith("+86") else e164.lstrip("+")


def _fold(text: str) -> str:
    return _SEPARATORS.sub("", unicodedata.normalize("NFKC", text)).upper()


def has_opt_out(text: str, extra: Iterable[str] = ()) -> bool:
    """Whether ``text`` carries an opt-out phrase (full-width, spacing and case ignored)."""
    folded = _fold(text)
    return any(_fold(p) in folded for p in (*OPT_OUT_PHRASES, *extra) if p.strip())


def check_opt_out(text: str, category: str, extra: Iterable[str] = ()) -> None:
    """Raise :class:`ContentError` for a marketing text without an opt-out phrase."""
    if category != "marketing" or has_opt_out(text, extra):
        return
    accepted = " / ".join(f"“{p}”" for p in (*OPT_OUT_PHRASES, *extra) if p.strip())
    raise ContentError(
        "marketing SMS must tell the recipient how to opt out: add “回T退订” at the end of the "
        f"text and of the approved template (accepted phrases: {accepted})"
    )


def segment_count(text: str, single: int = 70, multi: int = 67) -> int:
    """Billable segments: ≤ ``single`` characters is one, else ``ceil(len / multi)``."""
    n = len(text)
    if n == 0:
        return 0
    return 1 if n <= single else math.ceil(n / multi)


def segments(text: str, rules: RuleSet, sign_name: str = "") -> int:
    """Segments of ``text`` as delivered (with its 【sign】) under the platform's rules."""
    full = f"【{sign_name}】{text}" if sign_name else text
    return segment_count(full, rules["segment_single_chars"], rules["segment_multi_chars"])


def describe_segments(text: str, rules: RuleSet, sign_name: str = "") -> str:
    """One line for docs and the CLI, e.g. ``86 characters → 2 segments (70 / 67 each)``."""
    full = f"【{sign_name}】{text}" if sign_name else text
    n = segments(text, rules, sign_name)
    unit = "segment" if n == 1 else "segments"
    single, multi = rules["segment_single_chars"], rules["segment_multi_chars"]
    return f"{len(full)} characters → {n} {unit} (≤{single} in one, {multi} per segment beyond)"


def validate_sms_content(
    content: Mapping[str, Any], template_key: str, extra_opt_out: Iterable[str] = ()
) -> None:
    """The checks both SMS channels run; raises :class:`ContentError` with the fix."""
    if not str(content.get(template_key) or "").strip():
        raise ContentError(f"an SMS needs an approved template: set {template_key!r}")
    category = content.get("category", "marketing")
    if category not in CATEGORIES:
        raise ContentError(f"category must be 'marketing' or 'transactional', not {category!r}")
    text = str(content.get("text") or "")
    if not text.strip():
        raise ContentError(
            "pass the rendered text as 'text' (the template with its parameters filled in) "
            "so it can be checked for opt-out and length"
        )
    extra = [*extra_opt_out, str(content.get("opt_out_phrase") or "")]
    check_opt_out(text, str(category), extra)


def account_opt_out(settings: Mapping[str, Any]) -> list[str]:
    """The account's own opt-out phrase (settings ``opt_out_phrase``), if it has one."""
    phrase = str(settings.get("opt_out_phrase") or "").strip()
    return [phrase] if phrase else []


def seconds_to_china_midnight(now: datetime | None = None) -> float:
    """Seconds until just after the next midnight in Asia/Shanghai (daily SMS quotas)."""
    local = (now or datetime.now(CHINA)).astimezone(CHINA)
    nxt = (local + timedelta(days=1)).replace(hour=0, minute=0, second=5, microsecond=0)
    return max(1.0, (nxt - local).total_seconds())
