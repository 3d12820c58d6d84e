"""Recurring schedules: standard 5-field cron, evaluated in a time zone, DST-correct.

``minute hour day-of-month month day-of-week``, each field ``*``, a value, a range ``a-b``,
a step ``*/n`` / ``a-b/n`` / ``a/n``, or a comma list of those. Months take ``JAN``–``DEC``,
weekdays ``SUN``–``SAT`` (0 and 7 are both Sunday). The macros ``@hourly``, ``@daily``
(``@midnight``), ``@weekly``, ``@monthly`` and ``@yearly`` (``@annually``) are accepted.
As in Vixie cron, when both day fields are restricted a day matches if *either* matches.

Fire times are wall-clock times in the schedule's zone (``docs/time.md``): a time inside a
spring-forward gap fires once, moved forward by the gap; a time inside a fall-back overlap
fires once, at its first occurrence.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_BOUNDS = {0: (0, 59), 1: (0, 23), 2: (1, 31), 3: (1, 12), 4: (0, 7)}
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    )
}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# A schedule that fires at all fires within 28 years (the Gregorian weekday/leap cycle), e.g.
# "0 0 29 2 MON"; one that never does (e.g. "0 0 31 2 *") is reported after that.
SEARCH_YEARS = 28


class CronError(ValueError):
    """A cron expression that cannot be read; ``field`` names the offending field."""

    def __init__(self, field: str, text: str, problem: str) -> None:
        super().__init__(f"cron {field} field {text!r}: {problem}")
        self.field = field
        self.text = text


@dataclass(frozen=True)
class CronExpr:
    """A parsed expression: the allowed values of each field (weekday 7 folded into 0)."""

    source: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool

    def day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return dom or dow
        return dom and dow

    def matches(self, wall: datetime) -> bool:
        """True when the wall-clock ``wall`` (its tzinfo ignored) is one of the fire times."""
        return (
            wall.minute in self.minutes
            and wall.hour in self.hours
            and self.day_matches(wall.date())
        )


def _value(token: str, index: int, text: str) -> int:
    names = _MONTHS if index == 3 else _DAYS if index == 4 else {}
    upper = token.upper()
    if upper in names:
        return names[upper]
    if not token.isdigit():
        hint = " or a name like JAN" if index == 3 else " or a name like MON" if index == 4 else ""
        raise CronError(FIELDS[index], text, f"{token!r} is not a number{hint}")
    lo, hi = _BOUNDS[index]
    value = int(token)
    if not lo <= value <= hi:
        raise CronError(FIELDS[index], text, f"value {value} out of range {lo}-{hi}")
    return value


def _field(text: str, index: int) -> set[int]:
    """The field's allowed values."""
    lo, hi = _BOUNDS[index]
    if index == 4:
        hi = 7
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(FIELDS[index], text, "empty list item; remove the extra comma")
        base, _, step_text = part.partition("/")
        step = 1
        if step_text or part.endswith("/"):
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(FIELDS[index], text, f"step {step_text!r} must be a number ≥ 1")
            step = int(step_text)
        if base == "*":
            start, end = lo, (6 if index == 4 else hi)
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _value(a, index, text), _value(b, index, text)
            if end < start:
                raise CronError(FIELDS[index], text, f"range {base} runs backwards; write low-high")
        else:
            start = _value(base, index, text)
            end = (6 if index == 4 else hi) if step_text else start
        values.update(range(start, end + 1, step))
    if index == 4 and 7 in values:
        values.discard(7)
        values.add(0)
    return values


def parse(expr: str) -> CronExpr:
    """Parse a 5-field expression (or a macro); errors name the field and the value."""
    text = _MACROS.get(expr.strip().lower(), expr.strip())
    parts = text.split()
    if len(parts) != 5:
        raise CronError(
            "expression",
            expr,
            f"has {len(parts)} fields; write 5: minute hour day-of-month month day-of-week",
        )
    parsed = [_field(p, i) for i, p in enumerate(parts)]
    # Vixie cron: a day field starting with "*" (also "*/2") counts as unrestricted for the
    # either-day-field rule; its values still filter.
    dom_restricted = not parts[2].startswith("*")
    dow_restricted = not parts[4].startswith("*")
    return CronExpr(
        source=expr,
        minutes=tuple(sorted(parsed[0])),
        hours=tuple(sorted(parsed[1])),
        days=frozenset(parsed[2]),
        months=frozenset(parsed[3]),
        weekdays=frozenset(parsed[4]),
        days_restricted=dom_restricted,
        weekdays_restricted=dow_restricted,
    )


def _day_fires(expr: CronExpr, d: date, tz: ZoneInfo) -> list[datetime]:
    """The instants (UTC) of one local day's fire times, sorted, duplicates collapsed."""
    out = set()
    for h in expr.hours:
        for m in expr.minutes:
            naive = datetime.combine(d, time(h, m))
            out.add(naive.replace(tzinfo=tz, fold=0).astimezone(UTC))
    return sorted(out)


def next_fire(expr: str | CronExpr, after: datetime, tz: ZoneInfo | str) -> datetime:
    """The first fire time strictly after ``after``, as an aware datetime in ``tz``."""
    cron = parse(expr) if isinstance(expr, str) else expr
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError("after: pass an aware datetime (e.g. datetime.now(UTC))")
    after_utc = after.astimezone(UTC)
    # Start a day early: a gap-shifted time of yesterday can land after `after` today.
    day = after.astimezone(zone).date() - timedelta(days=1)
    best: datetime | None = None
    for _ in range(SEARCH_YEARS * 366):
        if cron.day_matches(day):
            fires = _day_fires(cron, day, zone)
            i = bisect.bisect_right(fires, after_utc)
            if i < len(fires) and (best is None or fires[i] < best):
                best = fires[i]
        # A later day's first fire cannot precede this day's, except by a gap shift of at most
        # a day: one more day after the first find settles it.
        if best is not None and day > best.astimezone(zone).date():
            return best.astimezone(zone)
        day += timedelta(days=1)
    if best is not None:
        return best.astimezone(zone)
    raise CronError("expression", cron.source, f"never fires within {SEARCH_YEARS} years")


def fires_between(
    expr: str | CronExpr, after: datetime, until: datetime, tz: ZoneInfo | str, limit: int = 1000
) -> list[datetime]:
    """Up to ``limit`` fire times in ``(after, until]``, in order (for previews)."""
    cron = parse(expr) if isinstance(expr, str) else expr
    out: list[datetime] = []
    t = after
    while len(out) < limit:
        t = next_fire(cron, t, tz)
        if t > until:
            break
        out.append(t)
    return out
