"""Sending at the right local moment: holidays, quiet hours, windows, zones and staggering.

Pure: every function takes its data (the holiday calendar, the window table, the region table)
as arguments; :mod:`qunfa.rules.datafiles` loads the shipped files and :mod:`qunfa.services.timing`
wires them together. Time zones come from the standard library's ``zoneinfo``.

Wall-clock rules (documented in ``docs/time.md``):

* A local time that does not exist (the spring-forward gap) moves forward by the length of the
  gap: 02:30 on the day New York springs forward is sent at 03:30 EDT.
* A local time that happens twice (the fall-back overlap) takes the first occurrence
  (``fold=0``): 01:30 on the day New York falls back is sent at 01:30 EDT, never again at EST.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

CHINA = ZoneInfo("Asia/Shanghai")
# next_allowed gives up after this many days: options that never allow a moment (e.g. a window
# inside the quiet hours) must fail loudly instead of looping.
SEARCH_DAYS = 400


class CalendarError(ValueError):
    """Bad calendar input; the message names the field and what to do."""


# -- holidays ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class YearSource:
    """Where one year's dates come from (a State Council General Office notice)."""

    year: int
    title: str
    number: str
    published: str
    url: str
    provisional: bool
    basis: str = ""


@dataclass(frozen=True)
class HolidayCalendar:
    """Mainland-China days off (放假) and make-up working days (调休上班).

    Outside the covered years only weekends count as days off: an unknown holiday is never
    invented. Check :meth:`covers` (and ``sources[year].provisional``) before trusting a date.
    """

    holidays: Mapping[date, str] = field(default_factory=dict)
    workdays: Mapping[date, str] = field(default_factory=dict)
    sources: Mapping[int, YearSource] = field(default_factory=dict)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> HolidayCalendar:
        """Build from the parsed ``holidays_cn.toml`` (``years.<YYYY>`` tables)."""
        holidays: dict[date, str] = {}
        workdays: dict[date, str] = {}
        sources: dict[int, YearSource] = {}
        for key, year in data.get("years", {}).items():
            y = int(key)
            sources[y] = YearSource(
                y,
                year["title"],
                year.get("number", ""),
                year.get("published", ""),
                year.get("url", ""),
                bool(year.get("provisional", False)),
                year.get("basis", ""),
            )
            for h in year.get("holidays", []):
                start, end = (
                    _iso_date(h["start"], f"years.{key}"),
                    _iso_date(h["end"], f"years.{key}"),
                )
                if end < start:
                    raise CalendarError(f"years.{key}: holiday {h['name']} ends before it starts")
                d = start
                while d <= end:
                    holidays[d] = h["name"]
                    d += timedelta(days=1)
            for w in year.get("workdays", []):
                workdays[_iso_date(w["date"], f"years.{key}")] = w["name"]
        clash = set(holidays) & set(workdays)
        if clash:
            raise CalendarError(f"dates both holiday and make-up workday: {sorted(clash)}")
        return cls(holidays, workdays, sources)

    def covers(self, d: date) -> bool:
        return d.year in self.sources

    def is_holiday(self, d: date) -> bool:
        """A public holiday (including the weekend days folded into a holiday block)."""
        return d in self.holidays

    def is_makeup_workday(self, d: date) -> bool:
        """A weekend day worked to make up for a holiday (调休上班)."""
        return d in self.workdays

    def is_workday(self, d: date) -> bool:
        """Monday–Friday unless a holiday; Saturday/Sunday only when a make-up workday."""
        if d in self.holidays:
            return False
        if d in self.workdays:
            return True
        return d.weekday() < 5


def _iso_date(text: str, where: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CalendarError(f"{where}: {text!r} is not a YYYY-MM-DD date") from None


# -- clock times and daily windows ---------------------------------------------------------------
_CLOCK = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*$")


def parse_clock(text: str, field_name: str = "time") -> time:
    """``"20:00"`` → ``time(20, 0)``; ``"24:00"`` is accepted as the end of day only by windows."""
    m = _CLOCK.match(text)
    if not m or int(m[1]) > 23 or int(m[2]) > 59:
        raise CalendarError(f"{field_name}: {text!r} is not a clock time; write HH:MM, e.g. 20:00")
    return time(int(m[1]), int(m[2]))


@dataclass(frozen=True)
class DailyWindow:
    """A daily span of local wall time ``[start, end)``; ``end <= start`` crosses midnight."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str, field_name: str = "window") -> DailyWindow:
        """``"22:00-08:00"`` (an en dash or ``~`` also works)."""
        parts = re.split(r"\s*[-–~]\s*", text.strip())
        if len(parts) != 2:
            raise CalendarError(
                f"{field_name}: {text!r} is not a window; write HH:MM-HH:MM, e.g. 19:00-21:00"
            )
        start = parse_clock(parts[0], field_name)
        end = time(0, 0) if parts[1] == "24:00" else parse_clock(parts[1], field_name)
        if start == end:
            raise CalendarError(
                f"{field_name}: {text!r} starts and ends at the same time; give a real span"
            )
        return cls(start, end)

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def contains(self, t: time) -> bool:
        t = t.replace(second=0, microsecond=0, tzinfo=None, fold=0)
        if self.crosses_midnight:
            return t >= self.start or t < self.end
        return self.start <= t < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class SendOptions:
    """When sending is allowed, in the recipient's local time.

    ``workdays_only``: weekends and holidays are off, make-up workdays (调休) are on.
    ``skip_holidays``: public holidays are off, weekends stay on.
    ``quiet_hours``: never send inside it (``None``: no quiet hours).
    ``window``: only send inside it (``None``: any time outside the quiet hours).
    """

    workdays_only: bool = False
    skip_holidays: bool = False
    quiet_hours: DailyWindow | None = DailyWindow(time(22, 0), time(8, 0))
    window: DailyWindow | None = None

    def day_allowed(self, d: date, cal: HolidayCalendar) -> bool:
        if self.workdays_only and not cal.is_workday(d):
            return False
        return not (self.skip_holidays and cal.is_holiday(d))

    def time_allowed(self, t: time) -> bool:
        if self.quiet_hours is not None and self.quiet_hours.contains(t):
            return False
        return self.window is None or self.window.contains(t)


# -- wall time → instant -------------------------------------------------------------------------
def resolve_local(d: date, t: time, tz: tzinfo) -> datetime:
    """The instant a wall-clock ``d t`` means in ``tz``, normalised so its wall time is real.

    Nonexistent (gap) → moved forward by the gap; ambiguous (overlap) → first occurrence.
    Both follow from ``fold=0`` (PEP 495): the offset in force *before* the transition.
    """
    naive = datetime.combine(d, t.replace(tzinfo=None, fold=0))
    return naive.replace(tzinfo=tz, fold=0).astimezone(UTC).astimezone(tz)


def is_nonexistent(d: date, t: time, tz: tzinfo) -> bool:
    """True when ``d t`` falls in a spring-forward gap of ``tz``."""
    resolved = resolve_local(d, t, tz)
    return resolved.replace(tzinfo=None) != datetime.combine(d, t.replace(tzinfo=None))


def _require_aware(moment: datetime, field_name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise CalendarError(f"{field_name}: {moment!r} has no time zone; pass an aware datetime")


def _zone_of(moment: datetime) -> tzinfo:
    tz = moment.tzinfo
    assert tz is not None  # checked by _require_aware
    return tz


def _next_start(local: datetime, window: DailyWindow) -> tuple[date, time]:
    """The next wall-clock start of ``window`` at or after ``local`` (date, time)."""
    if local.time().replace(tzinfo=None) < window.start:
        return local.date(), window.start
    return local.date() + timedelta(days=1), window.start


def _forward(d: date, t: time, tz: tzinfo, after: datetime) -> datetime:
    """:func:`resolve_local`, but never before ``after``: inside a fall-back overlap the first
    occurrence may already be past, and the search must only move forward."""
    # Compare in UTC: datetimes sharing a tzinfo compare by wall time and ignore ``fold``.
    r = resolve_local(d, t, tz)
    if _utc(r) < _utc(after):
        naive = datetime.combine(d, t.replace(tzinfo=None))
        r = naive.replace(tzinfo=tz, fold=1).astimezone(UTC).astimezone(tz)
    return r if _utc(r) >= _utc(after) else after


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def next_allowed(moment: datetime, options: SendOptions, cal: HolidayCalendar) -> datetime:
    """The earliest instant at or after ``moment`` the options allow, in ``moment``'s zone.

    ``moment`` must be aware; the rules are applied in the wall time of its tzinfo, so pass
    ``now.astimezone(ZoneInfo(recipient_zone))`` (a fixed offset such as UTC has no DST).
    """
    _require_aware(moment, "moment")
    tz = _zone_of(moment)
    local = moment.astimezone(tz)
    if local.second or local.microsecond:  # sends are planned to the minute
        # rounded in UTC: wall-clock arithmetic would drop ``fold`` inside an overlap
        up = _utc(local).replace(second=0, microsecond=0) + timedelta(minutes=1)
        local = up.astimezone(tz)
    limit = local + timedelta(days=SEARCH_DAYS)
    # Each step moves to the next day, the end of the quiet hours or the next window start, so
    # a few steps a day suffice; the count also bounds the loop if a step ever stood still.
    for _ in range(SEARCH_DAYS * 4):
        if _utc(local) > _utc(limit):
            break
        d, t = local.date(), local.time().replace(tzinfo=None)
        if not options.day_allowed(d, cal):
            local = _forward(d + timedelta(days=1), time(0, 0), tz, local)
        elif options.quiet_hours is not None and options.quiet_hours.contains(t):
            q = options.quiet_hours
            end_day = d + timedelta(days=1) if q.crosses_midnight and t >= q.start else d
            local = _forward(end_day, q.end, tz, local)
        elif options.window is not None and not options.window.contains(t):
            local = _forward(*_next_start(local, options.window), tz, local)
        else:
            return local
    raise CalendarError(
        f"no allowed moment within {SEARCH_DAYS} days of {moment.isoformat()}: check that "
        f"window {options.window} is not inside quiet_hours {options.quiet_hours} and that "
        "workdays_only/skip_holidays leave some days"
    )


# -- windows by content category -----------------------------------------------------------------
@dataclass(frozen=True)
class CategoryWindow:
    name: str
    window: DailyWindow | None  # None: any time (only quiet hours apply)
    source: str


@dataclass(frozen=True)
class WindowTable:
    """Send windows by content category, from ``send_windows.toml``; unknown → ``default``."""

    categories: Mapping[str, CategoryWindow]
    aliases: Mapping[str, str]
    quiet_hours: DailyWindow
    quiet_source: str

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> WindowTable:
        cats: dict[str, CategoryWindow] = {}
        aliases: dict[str, str] = {}
        for name, row in data["categories"].items():
            w = row["window"]
            window = None if w == "any" else DailyWindow.parse(w, f"categories.{name}.window")
            cats[name] = CategoryWindow(name, window, row["source"])
            aliases[name.lower()] = name
            for alias in row.get("aliases", []):
                aliases[alias.lower()] = name
        if "default" not in cats:
            raise CalendarError("send windows: a [categories.default] row is required")
        quiet = data["quiet_hours"]
        return cls(cats, aliases, DailyWindow.parse(quiet["value"], "quiet_hours"), quiet["source"])

    def lookup(self, category: str | None) -> CategoryWindow:
        """The category's row (by name or alias, case-insensitive); ``default`` when unknown."""
        key = self.aliases.get((category or "default").strip().lower(), "default")
        return self.categories[key]

    def known(self, category: str) -> bool:
        return category.strip().lower() in self.aliases


def next_window_start(
    now_local: datetime,
    category: str | None,
    options: SendOptions,
    table: WindowTable,
    cal: HolidayCalendar,
) -> datetime:
    """The earliest allowed instant at or after ``now_local`` inside the category's window.

    ``options.window``, when set, overrides the category's window.
    """
    window = options.window if options.window is not None else table.lookup(category).window
    return next_allowed(now_local, replace(options, window=window), cal)


# -- per-recipient time zones --------------------------------------------------------------------
_SUFFIXES = ("特别行政区", "维吾尔自治区", "壮族自治区", "回族自治区", "自治区", "省", "市")


def zone_or_none(name: str | None) -> ZoneInfo | None:
    """``ZoneInfo(name)`` when ``name`` is a valid IANA zone, else ``None`` (never raises)."""
    if not name or not name.strip():
        return None
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        return None


@dataclass(frozen=True)
class ZoneChoice:
    zone: str
    reason: str  # "contact", "city", "province", "account", "default"


@dataclass(frozen=True)
class ZoneResolver:
    """contact timezone → city → province → account default → Asia/Shanghai."""

    names: Mapping[str, str]  # normalised region name → IANA zone

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ZoneResolver:
        names: dict[str, str] = {}
        for zone, row in data["zones"].items():
            if zone_or_none(zone) is None:
                raise CalendarError(f"regions: {zone!r} is not an IANA zone in this tzdata")
            for n in row["names"]:
                names[_norm_region(n)] = zone
        return cls(names)

    def region_zone(self, region: str | None) -> str | None:
        if not region or not region.strip():
            return None
        return self.names.get(_norm_region(region))

    def resolve(
        self,
        timezone: str | None = None,
        province: str | None = None,
        city: str | None = None,
        account_zone: str | None = None,
    ) -> ZoneChoice:
        if zone_or_none(timezone) is not None:
            return ZoneChoice(str(timezone).strip(), "contact")
        by_city = self.region_zone(city)
        if by_city:
            return ZoneChoice(by_city, "city")
        by_province = self.region_zone(province)
        if by_province:
            return ZoneChoice(by_province, "province")
        if zone_or_none(account_zone) is not None:
            return ZoneChoice(str(account_zone).strip(), "account")
        return ZoneChoice("Asia/Shanghai", "default")


def _norm_region(name: str) -> str:
    n = name.strip()
    for suffix in _SUFFIXES:
        if n.endswith(suffix) and len(n) > len(suffix) + 1:
            n = n[: -len(suffix)]
            break
    return n.casefold()


# -- staggering by zone --------------------------------------------------------------------------
@dataclass(frozen=True)
class ZoneDue:
    zone: str
    due: datetime  # UTC
    local: datetime  # the same instant on the recipient's wall clock
    shifted: str = ""  # why the wall time differs from the one asked for (DST gap), if it does


def local_time_due(
    zone: str,
    at: time,
    not_before: datetime,
    options: SendOptions,
    cal: HolidayCalendar,
) -> ZoneDue:
    """The first instant ≥ ``not_before`` that is ``at`` on an allowed day in ``zone``.

    The day rules (workdays only, skip holidays) use the recipient's local date. The caller
    checks that ``at`` itself is outside the quiet hours and inside the window.
    """
    _require_aware(not_before, "not_before")
    tz = zone_or_none(zone)
    if tz is None:
        raise CalendarError(f"zone: {zone!r} is not an IANA time zone, e.g. Asia/Shanghai")
    day = not_before.astimezone(tz).date()
    for _ in range(SEARCH_DAYS):
        if options.day_allowed(day, cal):
            local = resolve_local(day, at, tz)
            if _utc(local) >= _utc(not_before):
                shifted = ""
                if is_nonexistent(day, at, tz):
                    shifted = f"{at:%H:%M} does not exist on {day} in {zone} (DST gap)"
                return ZoneDue(zone, local.astimezone(UTC), local, shifted)
        day += timedelta(days=1)
    raise CalendarError(f"no allowed day within {SEARCH_DAYS} days for {zone}: check the options")


def stagger(
    zones: Iterable[str],
    at: time,
    not_before: datetime,
    options: SendOptions,
    cal: HolidayCalendar,
) -> dict[str, ZoneDue]:
    """Per distinct zone, the UTC moment its recipients see ``at`` on their own clock."""
    return {z: local_time_due(z, at, not_before, options, cal) for z in sorted(set(zones))}


def group_by_due(dues: Iterable[ZoneDue]) -> dict[datetime, list[str]]:
    """One batch group per due instant (zones sharing an offset on that day share a group)."""
    groups: dict[datetime, list[str]] = {}
    for d in sorted(dues, key=lambda x: (x.due, x.zone)):
        groups.setdefault(d.due, []).append(d.zone)
    return groups
