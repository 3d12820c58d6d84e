"""When each recipient's message is due: a campaign's timing options → a per-zone send plan.

The planner calls :func:`plan` once per campaign with the *distinct* zones of its audience (a
``SELECT DISTINCT`` over the contacts, resolved by :func:`resolve_zones`), then writes the
result set-based: every batch whose recipients share a zone gets that zone's due epoch in
``batches.next_attempt_at`` (see :meth:`TimingPlan.case_sql`). ``docs/time.md`` describes the
wiring; :func:`explain` renders the same plan for people (dry run, CLI, console).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from qunfa.domain.calendar import (
    CalendarError,
    DailyWindow,
    HolidayCalendar,
    SendOptions,
    WindowTable,
    ZoneDue,
    ZoneResolver,
    group_by_due,
    local_time_due,
    next_window_start,
    parse_clock,
    zone_or_none,
)
from qunfa.rules.datafiles import load_data

OPTION_KEYS = ("category", "workdays_only", "skip_holidays", "quiet_hours", "local_time", "window")


class TimingError(ValueError):
    """Invalid timing options; the message names the option and what to write instead."""


def default_calendar() -> HolidayCalendar:
    return HolidayCalendar.from_data(load_data("holidays_cn"))


def default_windows() -> WindowTable:
    return WindowTable.from_data(load_data("send_windows"))


def default_resolver() -> ZoneResolver:
    return ZoneResolver.from_data(load_data("regions"))


@dataclass(frozen=True)
class TimingOptions:
    """Validated options; ``send`` is what the calendar functions take."""

    category: str
    category_source: str
    send: SendOptions
    local_time: time | None
    window_from: str  # "options", "category" or "none": where ``send.window`` came from


def parse_options(
    raw: Mapping[str, Any] | None, windows: WindowTable | None = None
) -> TimingOptions:
    """Read a campaign's ``timing`` options; every error names the option.

    ``quiet_hours``: ``"HH:MM-HH:MM"``, ``"off"``, or absent (the default from
    ``send_windows.toml``). ``window``: ``"HH:MM-HH:MM"``, ``"any"``, or absent (the category's).
    ``local_time``: ``"HH:MM"`` — every recipient gets the message at that time on their own clock.
    """
    table = windows or default_windows()
    opts = dict(raw or {})
    unknown = sorted(set(opts) - set(OPTION_KEYS))
    if unknown:
        raise TimingError(
            f"unknown timing option(s) {', '.join(unknown)}; known: {', '.join(OPTION_KEYS)}"
        )
    category = opts.get("category") or "default"
    if not isinstance(category, str) or not table.known(category):
        names = ", ".join(sorted(table.categories))
        raise TimingError(f"category: {category!r} is not a known category; use one of {names}")
    row = table.lookup(category)
    flags = {}
    for key in ("workdays_only", "skip_holidays"):
        value = opts.get(key, False)
        if not isinstance(value, bool):
            raise TimingError(f"{key}: must be true or false, not {value!r}")
        flags[key] = value
    try:
        quiet = _quiet(opts.get("quiet_hours"), table)
        window, window_from = _window(opts.get("window"), row.window)
        local = opts.get("local_time")
        if local is not None and not isinstance(local, str):
            raise TimingError(f"local_time: write HH:MM as a string, not {local!r}")
        at = parse_clock(local, "local_time") if local else None
    except CalendarError as exc:
        raise TimingError(str(exc)) from None
    if at is not None and quiet is not None and quiet.contains(at):
        raise TimingError(
            f"local_time: {at:%H:%M} falls in quiet_hours {quiet}; choose a time outside them "
            'or set quiet_hours to "off"'
        )
    if at is not None and window is not None and not window.contains(at):
        raise TimingError(
            f"local_time: {at:%H:%M} is outside the {window_from} window {window}; choose a "
            'time inside it or set window to "any"'
        )
    if window is not None and quiet is not None and _inside(window, quiet):
        raise TimingError(
            f"window: {window} lies entirely in quiet_hours {quiet}; nothing could be sent"
        )
    send = SendOptions(flags["workdays_only"], flags["skip_holidays"], quiet, window)
    return TimingOptions(row.name, row.source, send, at, window_from)


def _quiet(value: Any, table: WindowTable) -> DailyWindow | None:
    if value is None:
        return table.quiet_hours
    if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "none")):
        return None
    if not isinstance(value, str):
        raise TimingError(f'quiet_hours: write "HH:MM-HH:MM" or "off", not {value!r}')
    return DailyWindow.parse(value, "quiet_hours")


def _window(value: Any, category: DailyWindow | None) -> tuple[DailyWindow | None, str]:
    if value is None:
        return category, "category" if category else "none"
    if isinstance(value, str) and value.strip().lower() == "any":
        return None, "none"
    if not isinstance(value, str):
        raise TimingError(f'window: write "HH:MM-HH:MM" or "any", not {value!r}')
    return DailyWindow.parse(value, "window"), "options"


def _inside(window: DailyWindow, quiet: DailyWindow) -> bool:
    """True when every minute of ``window`` is a quiet minute (checked minute by minute)."""
    t = datetime(2000, 1, 1, window.start.hour, window.start.minute)
    while True:
        if not quiet.contains(t.time()):
            return False
        t += timedelta(minutes=1)
        if t.time() == window.end:
            return True


@dataclass(frozen=True)
class TimingPlan:
    """Per zone, when its recipients' batches are due; groups share a due instant."""

    options: TimingOptions
    not_before: datetime
    zones: dict[str, ZoneDue]
    notes: list[str] = field(default_factory=list)

    @property
    def due_by_zone(self) -> dict[str, float]:
        """``{zone: due UTC epoch seconds}`` — the value for ``batches.next_attempt_at``."""
        return {z: d.due.timestamp() for z, d in self.zones.items()}

    @property
    def groups(self) -> dict[float, list[str]]:
        """``{due epoch: [zones]}``: one batch group per distinct due instant."""
        return {k.timestamp(): v for k, v in group_by_due(self.zones.values()).items()}

    def case_sql(
        self, column: str, default_zone: str = "Asia/Shanghai"
    ) -> tuple[str, dict[str, Any]]:
        """A ``CASE`` expression mapping a zone column to its due epoch, with bind params.

        ``column`` is a trusted SQL identifier chosen by the caller (never user input). Zones
        not in the plan fall back to ``default_zone``'s due (or the earliest due).
        """
        params: dict[str, Any] = {}
        whens = []
        for i, (zone, due) in enumerate(sorted(self.due_by_zone.items())):
            params[f"tz_{i}"], params[f"due_{i}"] = zone, due
            whens.append(f"WHEN :tz_{i} THEN :due_{i}")
        fallback = self.due_by_zone.get(default_zone, min(self.due_by_zone.values(), default=0.0))
        params["due_default"] = fallback
        return f"CASE {column} {' '.join(whens)} ELSE :due_default END", params


def resolve_zones(
    rows: Iterable[tuple[str | None, str | None, str | None]],
    account_zone: str | None = None,
    resolver: ZoneResolver | None = None,
) -> dict[tuple[str | None, str | None, str | None], str]:
    """Distinct contact ``(timezone, province, city)`` triples → IANA zone (see ZoneResolver)."""
    r = resolver or default_resolver()
    return {row: r.resolve(row[0], row[1], row[2], account_zone).zone for row in set(rows)}


def plan(
    raw_options: Mapping[str, Any] | TimingOptions | None,
    zones: Iterable[str],
    not_before: datetime,
    calendar: HolidayCalendar | None = None,
    windows: WindowTable | None = None,
) -> TimingPlan:
    """The send plan for the given recipient zones, no earlier than ``not_before`` (aware).

    With ``local_time``: each zone at that wall time on its first allowed day. Without: each
    zone at the first allowed moment of the window (or now, when allowed).
    """
    if not_before.tzinfo is None:
        raise TimingError("not_before: pass an aware datetime (e.g. datetime.now(UTC))")
    opts = (
        raw_options
        if isinstance(raw_options, TimingOptions)
        else parse_options(raw_options, windows)
    )
    cal = calendar or default_calendar()
    bad = sorted(z for z in set(zones) if zone_or_none(z) is None)
    if bad:
        raise TimingError(f"zones: {', '.join(bad)} not IANA time zones (e.g. Asia/Shanghai)")
    out: dict[str, ZoneDue] = {}
    try:
        for zone in sorted(set(zones)):
            if opts.local_time is not None:
                out[zone] = local_time_due(zone, opts.local_time, not_before, opts.send, cal)
            else:
                local = next_window_start(
                    not_before.astimezone(ZoneInfo(zone)), opts.category, opts.send,
                    windows or default_windows(), cal,
                )  # fmt: skip
                out[zone] = ZoneDue(zone, local.astimezone(UTC), local)
    except CalendarError as exc:
        raise TimingError(str(exc)) from None
    return TimingPlan(opts, not_before, out, _notes(opts, out, cal))


def _notes(opts: TimingOptions, dues: Mapping[str, ZoneDue], cal: HolidayCalendar) -> list[str]:
    notes = [d.shifted for d in dues.values() if d.shifted]
    if opts.send.workdays_only or opts.send.skip_holidays:
        years = sorted({d.local.year for d in dues.values()})
        for y in years:
            src = cal.sources.get(y)
            if src is None:
                notes.append(f"no holiday data for {y}: only weekends are treated as days off")
            elif src.provisional:
                notes.append(f"{y} holidays are provisional (statutory days only): {src.title}")
    return notes


def explain(p: TimingPlan) -> str:
    """A human-readable timeline of the plan (one line per zone group, then the rules)."""
    o = p.options
    lines = [f"not before {p.not_before.astimezone(UTC):%Y-%m-%d %H:%M} UTC"]
    rules = [f"category {o.category}"]
    if o.send.window is not None:
        rules.append(f"window {o.send.window} ({o.window_from})")
    rules.append(f"quiet hours {o.send.quiet_hours or 'off'}")
    if o.send.workdays_only:
        rules.append("workdays only (调休 make-up days count as workdays)")
    if o.send.skip_holidays:
        rules.append("skip public holidays")
    if o.local_time is not None:
        rules.append(f"at {o.local_time:%H:%M} on each recipient's clock")
    lines.append("; ".join(rules))
    for due, zones in group_by_due(p.zones.values()).items():
        locals_ = ", ".join(f"{z} {p.zones[z].local:%a %m-%d %H:%M %z}" for z in zones)
        lines.append(f"{due:%Y-%m-%d %H:%M} UTC  ← {locals_}")
    lines.extend(f"note: {n}" for n in p.notes)
    return "\n".join(lines)
