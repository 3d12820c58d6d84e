"""Holidays (2025–2027 data), quiet hours, windows, zone resolution, staggering across DST."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qunfa.domain.calendar import (
    CalendarError,
    DailyWindow,
    HolidayCalendar,
    SendOptions,
    WindowTable,
    ZoneResolver,
    group_by_due,
    is_nonexistent,
    local_time_due,
    next_allowed,
    next_window_start,
    resolve_local,
    stagger,
)
from qunfa.rules.datafiles import load_data

CAL = HolidayCalendar.from_data(load_data("holidays_cn"))
WINDOWS = WindowTable.from_data(load_data("send_windows"))
RESOLVER = ZoneResolver.from_data(load_data("regions"))
SH = ZoneInfo("Asia/Shanghai")
NY = ZoneInfo("America/New_York")
LON = ZoneInfo("Europe/London")
NO_QUIET = SendOptions(quiet_hours=None)


# -- the holiday data -------------------------------------------------------------------------
def test_each_year_names_its_notice() -> None:
    assert set(CAL.sources) == {2025, 2026, 2027}
    assert CAL.sources[2025].number == "国办发明电〔2024〕12号"
    assert CAL.sources[2025].published == "2024-11-12"
    assert CAL.sources[2026].published == "2025-11-04" and not CAL.sources[2026].provisional
    assert CAL.sources[2027].provisional and "全国年节及纪念日放假办法" in CAL.sources[2027].basis


@pytest.mark.parametrize(
    ("day", "holiday", "workday"),
    [
        (date(2025, 1, 28), True, False),  # 除夕, 春节 begins
        (date(2025, 1, 26), False, True),  # Sunday worked (调休)
        (date(2025, 2, 8), False, True),  # Saturday worked
        (date(2025, 10, 8), True, False),  # 国庆+中秋, 8 days
        (date(2025, 10, 11), False, True),
        (date(2026, 1, 4), False, True),  # Sunday worked after 元旦
        (date(2026, 2, 23), True, False),  # Monday, last day of 春节
        (date(2026, 2, 28), False, True),
        (date(2026, 9, 25), True, False),  # 中秋 Friday
        (date(2026, 9, 20), False, True),
        (date(2026, 10, 10), False, True),
        (date(2026, 10, 8), False, True),  # ordinary Thursday after 国庆
        (date(2026, 11, 21), False, False),  # ordinary Saturday
        (date(2027, 2, 5), True, False),  # provisional: 除夕 2027
    ],
)
def test_holidays_and_makeup_days(day: date, holiday: bool, workday: bool) -> None:
    assert CAL.is_holiday(day) is holiday
    assert CAL.is_workday(day) is workday


def test_2026_block_lengths_match_the_notice() -> None:
    by_name: dict[str, int] = {}
    for d, name in CAL.holidays.items():
        if d.year == 2026:
            by_name[name] = by_name.get(name, 0) + 1
    assert by_name == {
        "元旦": 3, "春节": 9, "清明节": 3, "劳动节": 5, "端午节": 3, "中秋节": 3, "国庆节": 7
    }  # fmt: skip
    assert sorted(d for d in CAL.workdays if d.year == 2026) == [
        date(2026, 1, 4), date(2026, 2, 14), date(2026, 2, 28), date(2026, 5, 9),
        date(2026, 9, 20), date(2026, 10, 10),
    ]  # fmt: skip
    assert all(d.weekday() >= 5 for d in CAL.workdays)  # make-up days are always weekend days


def test_outside_covered_years_only_weekends_are_off() -> None:
    assert not CAL.covers(date(2030, 1, 1))
    assert CAL.is_workday(date(2030, 1, 1))  # a Tuesday: no invented holiday
    assert not CAL.is_workday(date(2030, 1, 5))


def test_a_date_both_holiday_and_workday_is_rejected() -> None:
    bad = {
        "years": {
            "2025": {
                "title": "t",
                "holidays": [{"name": "x", "start": "2025-01-01", "end": "2025-01-01"}],
                "workdays": [{"name": "y", "date": "2025-01-01"}],
            }
        }
    }
    with pytest.raises(CalendarError, match="both holiday and make-up"):
        HolidayCalendar.from_data(bad)


# -- windows and quiet hours ------------------------------------------------------------------
def test_window_parsing_and_midnight_crossing() -> None:
    q = DailyWindow.parse("22:00-08:00")
    assert q.crosses_midnight and q.contains(time(23, 59)) and q.contains(time(0, 0))
    assert not q.contains(time(8, 0)) and q.contains(time(7, 59)) and not q.contains(time(12))
    w = DailyWindow.parse("19:00–21:00")  # en dash
    assert w.contains(time(19)) and not w.contains(time(21))
    for bad in ("25:00-01:00", "19:00", "10:00-10:00", "7pm-9pm"):
        with pytest.raises(CalendarError, match="window"):
            DailyWindow.parse(bad)


def test_seed_windows_by_category() -> None:
    assert str(WINDOWS.lookup("education").window) == "19:00-21:00"
    assert str(WINDOWS.lookup("电商").window) == "20:00-22:00"
    assert "seeds 001" in WINDOWS.lookup("education").source
    assert WINDOWS.lookup("notification").window is None
    assert WINDOWS.lookup("unheard-of").name == "default"
    assert str(WINDOWS.quiet_hours) == "22:00-08:00"


def test_quiet_hours_push_to_morning() -> None:
    at = datetime(2026, 11, 24, 23, 30, tzinfo=SH)
    assert next_allowed(at, SendOptions(), CAL) == datetime(2026, 11, 25, 8, 0, tzinfo=SH)
    early = datetime(2026, 11, 24, 3, 0, tzinfo=SH)
    assert next_allowed(early, SendOptions(), CAL) == datetime(2026, 11, 24, 8, 0, tzinfo=SH)


def test_workdays_only_skips_national_day_and_honours_makeup_saturday() -> None:
    opts = SendOptions(workdays_only=True)
    start = datetime(2026, 10, 1, 9, 0, tzinfo=SH)
    assert next_allowed(start, opts, CAL) == datetime(2026, 10, 8, 9, 0, tzinfo=SH).replace(
        hour=0
    ) + timedelta(hours=8)
    sat = datetime(2026, 10, 10, 12, 0, tzinfo=SH)  # a make-up Saturday: allowed
    assert next_allowed(sat, opts, CAL) == sat


def test_skip_holidays_keeps_ordinary_weekends() -> None:
    opts = SendOptions(skip_holidays=True, quiet_hours=None)
    sat = datetime(2026, 11, 21, 12, 0, tzinfo=SH)
    assert next_allowed(sat, opts, CAL) == sat
    spring = datetime(2026, 2, 15, 12, 0, tzinfo=SH)
    assert next_allowed(spring, opts, CAL) == datetime(2026, 2, 24, 0, 0, tzinfo=SH)


def test_next_window_start_for_education() -> None:
    now = datetime(2026, 11, 24, 10, 0, tzinfo=SH)
    assert next_window_start(now, "education", SendOptions(), WINDOWS, CAL) == datetime(
        2026, 11, 24, 19, 0, tzinfo=SH
    )
    inside = datetime(2026, 11, 24, 20, 15, tzinfo=SH)
    assert next_window_start(inside, "education", SendOptions(), WINDOWS, CAL) == inside
    late = datetime(2026, 11, 24, 21, 0, tzinfo=SH)
    assert next_window_start(late, "教育", SendOptions(), WINDOWS, CAL).day == 25


def test_window_inside_quiet_hours_fails_loudly() -> None:
    opts = SendOptions(window=DailyWindow.parse("23:00-23:30"))
    with pytest.raises(CalendarError, match="quiet_hours"):
        next_allowed(datetime(2026, 1, 1, tzinfo=SH), opts, CAL)


def test_naive_moment_is_refused() -> None:
    with pytest.raises(CalendarError, match="time zone"):
        next_allowed(datetime(2026, 1, 1), SendOptions(), CAL)


@settings(max_examples=200, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 1)),
    zone=st.sampled_from(["Asia/Shanghai", "America/New_York", "Europe/London", "Asia/Kathmandu"]),
    workdays=st.booleans(),
    skip=st.booleans(),
    window=st.sampled_from([None, "19:00-21:00", "20:00-22:00", "23:00-02:00", "10:00-21:00"]),
)
def test_next_allowed_properties(
    moment: datetime, zone: str, workdays: bool, skip: bool, window: str | None
) -> None:
    tz = ZoneInfo(zone)
    quiet = None if window == "23:00-02:00" else DailyWindow.parse("22:00-08:00")
    opts = SendOptions(workdays, skip, quiet, DailyWindow.parse(window) if window else None)
    start = moment.replace(tzinfo=tz)
    got = next_allowed(start, opts, CAL)
    assert got.astimezone(UTC) >= start.astimezone(UTC)  # never earlier than asked
    local = got.astimezone(tz)
    assert opts.day_allowed(local.date(), CAL) and opts.time_allowed(local.time())
    # minimal: one minute earlier (if still ≥ start) is not allowed
    # (in UTC: same-tzinfo arithmetic and comparison are wall-clock and ignore fold)
    before = (got.astimezone(UTC) - timedelta(minutes=1)).astimezone(tz)
    if before.astimezone(UTC) >= start.astimezone(UTC):
        assert not (opts.day_allowed(before.date(), CAL) and opts.time_allowed(before.time()))


# -- zones ------------------------------------------------------------------------------------
def test_zone_resolution_order() -> None:
    assert RESOLVER.resolve("Europe/London", "广东省", "深圳市").zone == "Europe/London"
    assert RESOLVER.resolve("Not/AZone", "广东省").zone == "Asia/Shanghai"
    assert RESOLVER.resolve(None, "广东省").reason == "province"
    assert RESOLVER.resolve(None, "新疆维吾尔自治区").zone == "Asia/Shanghai"
    assert RESOLVER.resolve(None, "香港特别行政区").zone == "Asia/Hong_Kong"
    assert RESOLVER.resolve(None, None, "澳門").zone == "Asia/Macau"
    assert RESOLVER.resolve(None, "台湾省").zone == "Asia/Taipei"
    assert RESOLVER.resolve(None, "广东", "New York").zone == "America/New_York"  # city first
    assert RESOLVER.resolve(None, "火星", None, "Asia/Tokyo") == (
        RESOLVER.resolve(None, None, None, "Asia/Tokyo")
    )
    assert RESOLVER.resolve(None, None, None, "Asia/Tokyo").reason == "account"
    assert RESOLVER.resolve().zone == "Asia/Shanghai" and RESOLVER.resolve().reason == "default"


# -- DST and staggering -----------------------------------------------------------------------
def test_spring_forward_gap_moves_forward() -> None:
    # New York springs forward 2026-03-08 02:00 → 03:00; London 2026-03-29 01:00 → 02:00.
    assert is_nonexistent(date(2026, 3, 8), time(2, 30), NY)
    got = resolve_local(date(2026, 3, 8), time(2, 30), NY)
    assert (got.hour, got.minute, got.utcoffset()) == (3, 30, timedelta(hours=-4))
    lon = resolve_local(date(2026, 3, 29), time(1, 30), LON)
    assert (lon.hour, lon.utcoffset()) == (2, timedelta(hours=1))


def test_fall_back_overlap_takes_first_occurrence() -> None:
    # New York falls back 2026-11-01 02:00 → 01:00; London 2026-10-25 02:00 → 01:00.
    ny = resolve_local(date(2026, 11, 1), time(1, 30), NY)
    assert ny.utcoffset() == timedelta(hours=-4)  # EDT, the first 01:30
    lon = resolve_local(date(2026, 10, 25), time(1, 30), LON)
    assert lon.utcoffset() == timedelta(hours=1)  # BST, the first 01:30


def test_local_time_due_on_dst_days() -> None:
    before = datetime(2026, 3, 8, 0, 0, tzinfo=UTC)
    due = local_time_due("America/New_York", time(2, 30), before, NO_QUIET, CAL)
    assert due.due == datetime(2026, 3, 8, 7, 30, tzinfo=UTC) and "DST gap" in due.shifted
    fall = local_time_due(
        "America/New_York", time(1, 30), datetime(2026, 11, 1, tzinfo=UTC), NO_QUIET, CAL
    )
    assert fall.due == datetime(2026, 11, 1, 5, 30, tzinfo=UTC) and not fall.shifted


def test_stagger_one_group_per_offset_with_odd_zones() -> None:
    zones = ["Asia/Shanghai", "Asia/Hong_Kong", "Asia/Kathmandu", "Pacific/Chatham",
             "Pacific/Kiritimati", "Pacific/Pago_Pago", "Asia/Shanghai"]  # fmt: skip
    start = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    dues = stagger(zones, time(20, 0), start, NO_QUIET, CAL)
    assert len(dues) == 6
    for z, d in dues.items():
        local = d.due.astimezone(ZoneInfo(z))
        assert (local.hour, local.minute) == (20, 0) and d.due >= start
    # +05:45 and Chatham's +13:45 (summer) land on quarter hours in UTC
    assert dues["Asia/Kathmandu"].due.minute == 15
    assert dues["Pacific/Chatham"].due == datetime(2026, 12, 1, 6, 15, tzinfo=UTC)
    # date line: 25 h apart on the clock, one hour apart in time — Kiritimati (+14) sees its
    # 20:00 on 12-01, Pago Pago (−11) its 20:00 of 11-30 one hour later
    assert dues["Pacific/Kiritimati"].local.date() == date(2026, 12, 1)
    assert dues["Pacific/Pago_Pago"].local.date() == date(2026, 11, 30)
    assert dues["Pacific/Pago_Pago"].due - dues["Pacific/Kiritimati"].due == timedelta(hours=1)
    groups = group_by_due(dues.values())
    assert ["Asia/Hong_Kong", "Asia/Shanghai"] in groups.values()
    assert list(groups) == sorted(groups)


def test_stagger_respects_workdays_in_the_recipients_date() -> None:
    # 2026-10-01 is a holiday; with workdays_only the first allowed day is Thu 10-08.
    start = datetime(2026, 9, 30, 13, 0, tzinfo=UTC)  # already past 20:00 in Shanghai
    opts = SendOptions(workdays_only=True, quiet_hours=None)
    due = local_time_due("Asia/Shanghai", time(20, 0), start, opts, CAL)
    assert due.local.date() == date(2026, 10, 8)


@settings(max_examples=150, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 1)),
    zone=st.sampled_from(
        [
            "America/New_York",
            "Europe/London",
            "Pacific/Chatham",
            "Asia/Kathmandu",
            "Australia/Lord_Howe",
            "Pacific/Apia",
            "Asia/Shanghai",
        ]
    ),
    at=st.times().map(lambda t: t.replace(second=0, microsecond=0)),
)
def test_local_time_due_is_the_first_matching_instant(
    moment: datetime, zone: str, at: time
) -> None:
    tz = ZoneInfo(zone)
    start = moment.replace(tzinfo=UTC)
    due = local_time_due(zone, at, start, NO_QUIET, CAL)
    assert due.due >= start
    local = due.due.astimezone(tz)
    if not due.shifted:
        assert (local.hour, local.minute) == (at.hour, at.minute)
    assert due.due - start < timedelta(days=2)  # the same or the next local day
