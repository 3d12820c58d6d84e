"""Reading typed send times: wall times in China time, 明天 20:00, +2h, ISO with offset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qunfa.domain.when import WhenError, parse_when

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 23, 23, 0, tzinfo=UTC)  # 2026-11-24 07:00 in Shanghai


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01 20:00", datetime(2026, 12, 1, 20, 0, tzinfo=SH)),
        ("2026/12/01 20:00", datetime(2026, 12, 1, 20, 0, tzinfo=SH)),
        ("明天 20:00", datetime(2026, 11, 25, 20, 0, tzinfo=SH)),  # tomorrow in China time
        ("今天 晚上8点", datetime(2026, 11, 24, 20, 0, tzinfo=SH)),
        ("后天 9点半", datetime(2026, 11, 26, 9, 30, tzinfo=SH)),
        ("tomorrow 08:15", datetime(2026, 11, 25, 8, 15, tzinfo=SH)),
        ("+2h", NOW + timedelta(hours=2)),
        ("+1d3h", NOW + timedelta(days=1, hours=3)),
        ("+30m", NOW + timedelta(minutes=30)),
        ("2026-12-01T20:00+09:00", datetime(2026, 12, 1, 11, 0, tzinfo=UTC)),
        ("2026-12-01T12:00Z", datetime(2026, 12, 1, 12, 0, tzinfo=UTC)),
        ("now", NOW),
    ],
)
def test_forms(text: str, expected: datetime) -> None:
    got = parse_when(text, NOW)
    assert got.tzinfo is not None and got == expected


@pytest.mark.parametrize("text", ["", "+", "next week", "2026-13-01 10:00", "明天 25:00"])
def test_errors_say_what_is_understood(text: str) -> None:
    with pytest.raises(WhenError, match="明天 20:00"):
        parse_when(text, NOW)


def test_other_default_zone_and_dst_gap() -> None:
    ny = ZoneInfo("America/New_York")
    got = parse_when("2026-03-08 02:30", NOW, ny)  # inside the gap → 03:30 EDT
    assert got.astimezone(UTC) == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31),
                    timezones=st.sampled_from([UTC, SH, ZoneInfo("Asia/Kathmandu")])))  # fmt: skip
def test_iso_round_trip(moment: datetime) -> None:
    assert parse_when(moment.isoformat(), NOW).astimezone(UTC) == moment.astimezone(UTC)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)))
def test_wall_time_is_china_time(moment: datetime) -> None:
    got = parse_when(moment.strftime("%Y-%m-%d %H:%M"), NOW)
    assert got.utcoffset() == timedelta(hours=8) or moment.year < 1992  # no DST since 1991
    assert got.replace(tzinfo=None) == moment.replace(second=0, microsecond=0)


@given(st.integers(0, 30), st.integers(0, 47), st.integers(0, 59))
def test_relative_adds_exactly(d: int, h: int, m: int) -> None:
    got = parse_when(f"+{d}d{h}h{m}m", NOW)
    assert got - NOW == timedelta(days=d, hours=h, minutes=m)
