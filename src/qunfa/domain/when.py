"""Reading a send time typed by a person: ``2026-12-01 20:00``, ``明天 20:00``, ``+2h``, ISO.

Everything without an explicit offset is wall time in the default zone (China time unless told
otherwise); a wall time inside a DST gap moves forward, one inside an overlap takes the first
occurrence (:func:`qunfa.domain.calendar.resolve_local`). The result is always aware.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from qunfa.domain.calendar import CHINA, resolve_local

FORMATS_HINT = (
    "use 2026-12-01 20:00, 明天 20:00 (今天/明天/后天, 晚上8点), +2h / +1d3h / +30m, now, "
    "or ISO 8601 with an offset such as 2026-12-01T20:00+08:00"
)


class WhenError(ValueError):
    """Input that is not a time; the message says which forms are understood."""


_RELATIVE = re.compile(r"^\+\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m(?:in)?)?$", re.I)
_DAY_WORDS = {"今天": 0, "today": 0, "明天": 1, "tomorrow": 1, "后天": 2}
_NAMED_DAY = re.compile(
    r"^(今天|明天|后天|today|tomorrow)\s*(凌晨|早上|上午|中午|下午|晚上)?\s*"
    r"(\d{1,2})(?:[:：](\d{2})|点(?:(\d{1,2})分?|(半))?)$",
    re.I,
)
_WALL = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[ T]+(\d{1,2}):(\d{2})(?::(\d{2}))?)?$")


def parse_when(text: str, now: datetime, default_tz: ZoneInfo = CHINA) -> datetime:
    """The aware instant ``text`` means, relative to ``now`` (aware) for relative forms."""
    if now.tzinfo is None:
        raise WhenError("now: pass an aware datetime")
    s = text.strip()
    if not s:
        raise WhenError(f"empty time; {FORMATS_HINT}")
    if s.lower() in ("now", "现在", "立即"):
        return now.astimezone(default_tz)
    if m := _RELATIVE.match(s):
        if not any(m.groups()):
            raise WhenError(f"{text!r}: give an amount after '+'; {FORMATS_HINT}")
        days, hours, minutes = (int(g or 0) for g in m.groups())
        return (now + timedelta(days=days, hours=hours, minutes=minutes)).astimezone(default_tz)
    if m := _NAMED_DAY.match(s):
        return _named_day(m, text, now, default_tz)
    if m := _WALL.match(s):
        y, mo, d, hh, mm, ss = m.groups()
        try:
            day = date(int(y), int(mo), int(d))
            t = time(int(hh or 0), int(mm or 0), int(ss or 0))
        except ValueError as exc:
            raise WhenError(f"{text!r}: {exc}; {FORMATS_HINT}") from None
        return resolve_local(day, t, default_tz)
    try:
        parsed = datetime.fromisoformat(s)
    except ValueError:
        raise WhenError(f"cannot read {text!r} as a time; {FORMATS_HINT}") from None
    if parsed.tzinfo is None:
        return resolve_local(parsed.date(), parsed.time(), default_tz)
    return parsed


def _named_day(m: re.Match[str], text: str, now: datetime, tz: ZoneInfo) -> datetime:
    word, part, hour_s, minute_colon, minute_dian, half = m.groups()
    hour = int(hour_s)
    minute = int(minute_colon or minute_dian or 0) + (30 if half else 0)
    # 下午/晚上 8点 means 20:00; 中午 1点 means 13:00; 凌晨/早上/上午 stay as written.
    if (part in ("下午", "晚上") and hour < 12) or (part == "中午" and hour < 11):
        hour += 12
    if hour > 23 or minute > 59:
        raise WhenError(f"{text!r}: {hour}:{minute:02d} is not a clock time; {FORMATS_HINT}")
    day = now.astimezone(tz).date() + timedelta(days=_DAY_WORDS[word.lower()])
    return resolve_local(day, time(hour, minute), tz)
