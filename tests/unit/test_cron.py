"""Cron parsing (errors name the field) and next_fire across DST, with Hypothesis properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from qunfa.domain.cron import CronError, CronExpr, fires_between, next_fire, parse

NY = ZoneInfo("America/New_York")
SH = ZoneInfo("Asia/Shanghai")


def test_parse_ranges_lists_steps_and_names() -> None:
    c = parse("*/15 9-17 * JAN,mar-MAY MON-FRI")
    assert c.minutes == (0, 15, 30, 45) and c.hours == tuple(range(9, 18))
    assert c.months == {1, 3, 4, 5} and c.weekdays == {1, 2, 3, 4, 5}
    assert parse("0 0 * * 7").weekdays == {0}  # 7 is Sunday too
    assert parse("0 0 * * SUN").weekdays == {0}
    assert parse("5/20 * * * *").minutes == (5, 25, 45)
    assert parse("@daily").minutes == (0,) and parse("@daily").hours == (0,)


@pytest.mark.parametrize(
    ("expr", "field", "fragment"),
    [
        ("61 * * * *", "minute", "out of range 0-59"),
        ("* 24 * * *", "hour", "out of range 0-23"),
        ("* * 0 * *", "day-of-month", "out of range 1-31"),
        ("* * * FOO *", "month", "name like JAN"),
        ("* * * * MONDAY", "day-of-week", "name like MON"),
        ("*/0 * * * *", "minute", "step"),
        ("5-1 * * * *", "minute", "backwards"),
        ("1,,2 * * * *", "minute", "empty list item"),
        ("* * * *", "expression", "write 5"),
    ],
)
def test_errors_point_at_the_field(expr: str, field: str, fragment: str) -> None:
    with pytest.raises(CronError, match=fragment) as info:
        parse(expr)
    assert info.value.field == field and field in str(info.value)


def test_day_fields_follow_vixie_or_rule() -> None:
    c = parse("0 0 13 * FRI")  # the 13th OR any Friday
    assert c.day_matches(datetime(2026, 11, 13).date())
    assert c.day_matches(datetime(2026, 11, 20).date())  # a Friday, not the 13th
    assert not c.day_matches(datetime(2026, 11, 19).date())


def test_next_fire_basics() -> None:
    after = datetime(2026, 11, 23, 23, 0, tzinfo=UTC)  # Tue 07:00 in Shanghai
    assert next_fire("0 9 * * MON-FRI", after, SH) == datetime(2026, 11, 24, 9, 0, tzinfo=SH)
    exact = datetime(2026, 11, 24, 9, 0, tzinfo=SH)
    assert next_fire("0 9 * * *", exact, SH) == exact + timedelta(days=1)  # strictly after
    assert next_fire("0 0 29 2 *", after, SH) == datetime(2028, 2, 29, tzinfo=SH)
    with pytest.raises(CronError, match="never fires"):
        next_fire("0 0 31 2 *", after, SH)


def test_next_fire_across_new_york_dst() -> None:
    # spring forward 2026-03-08: 02:30 does not exist → fires once at 03:30 EDT
    got = next_fire("30 2 * * *", datetime(2026, 3, 8, 0, 0, tzinfo=NY), NY)
    assert got.astimezone(UTC) == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    # fall back 2026-11-01: 01:30 happens twice → fires once, at the first (EDT)
    first = next_fire("30 1 * * *", datetime(2026, 11, 1, 0, 0, tzinfo=NY), NY)
    # (compare in UTC: PEP 495 makes an instant in a fold unequal to any other zone's)
    assert first.astimezone(UTC) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    second = next_fire("30 1 * * *", first, NY)
    assert second.date() == datetime(2026, 11, 2).date()
    # hourly on the fall-back day: 01:00 fires once, the repeated hour is not fired twice
    fires = fires_between(
        "0 * * * *",
        datetime(2026, 11, 1, 4, 30, tzinfo=UTC),
        datetime(2026, 11, 1, 8, 30, tzinfo=UTC),
        NY,
    )
    assert [f.astimezone(NY).strftime("%H%z") for f in fires] == [
        "01-0400", "02-0500", "03-0500"
    ]  # fmt: skip


def test_next_fire_refuses_naive() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_fire("* * * * *", datetime(2026, 1, 1), SH)


def _field(lo: int, hi: int, names: list[str] | None = None) -> st.SearchStrategy[str]:
    value = st.integers(lo, hi).map(str)
    if names:
        value = value | st.sampled_from(names)
    rng = st.tuples(st.integers(lo, hi), st.integers(lo, hi)).map(lambda p: f"{min(p)}-{max(p)}")
    step = st.integers(1, max(1, (hi - lo) // 2)).map(lambda s: f"*/{s}")
    item = value | rng | step
    return st.just("*") | st.lists(item, min_size=1, max_size=3).map(",".join)


EXPRS = st.tuples(
    _field(0, 59),
    st.just("*") | _field(0, 23),
    st.just("*") | _field(1, 28),
    st.just("*") | _field(1, 12, ["JAN", "JUN", "DEC"]),
    st.just("*") | _field(0, 7, ["MON", "SUN"]),
).map(" ".join)
ZONES = st.sampled_from(["America/New_York", "Europe/London", "Asia/Shanghai", "Pacific/Chatham"])


def _gap_shifted(c: CronExpr, fire: datetime, tz: ZoneInfo) -> bool:
    """A fire moved forward out of a DST gap: its wall time minus the gap matches."""
    before = (fire - timedelta(hours=3)).astimezone(tz).utcoffset()
    after = fire.astimezone(tz).utcoffset()
    assert before is not None and after is not None
    gap = after - before
    return gap > timedelta(0) and c.matches(fire.astimezone(tz).replace(tzinfo=None) - gap)


@settings(max_examples=120, deadline=None)
@given(
    expr=EXPRS,
    zone=ZONES,
    after=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 31)),
)
def test_next_fire_properties(expr: str, zone: str, after: datetime) -> None:
    tz = ZoneInfo(zone)
    c = parse(expr)
    start = after.replace(tzinfo=UTC)
    r1 = next_fire(c, start, tz)
    r2 = next_fire(c, r1, tz)
    assert start < r1 < r2  # strictly after
    for r in (r1, r2):
        assert c.matches(r.astimezone(tz)) or _gap_shifted(c, r, tz)
    # nothing fires in between: walk the minutes of (r1, r2), at most three days of them
    assume(r2 - r1 <= timedelta(days=3))
    t = r1.astimezone(UTC) + timedelta(minutes=1)
    while t < r2:
        wall = t.astimezone(tz)
        # the second pass through a fall-back overlap (fold=1) is skipped on purpose
        assert not (c.matches(wall) and wall.fold == 0), f"{expr} skipped {wall}"
        t += timedelta(minutes=1)
