"""The timing service: options validation, per-zone plans, the SQL mapping and explain()."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from qunfa.services import timing

FULL = {
    "category": "education",
    "workdays_only": True,
    "skip_holidays": True,
    "quiet_hours": "22:00-08:00",
    "local_time": "20:00",
    "window": "19:00-21:00",
}
ZONES = ["Asia/Shanghai", "Asia/Hong_Kong", "America/New_York", "Europe/London", "Asia/Kathmandu"]


def test_full_options_plan_per_zone_at_local_time() -> None:
    start = datetime(2026, 9, 30, 1, 0, tzinfo=UTC)  # Wed; 10-01..07 are holidays in China
    p = timing.plan(FULL, ZONES, start)
    for zone, due in p.due_by_zone.items():
        local = datetime.fromtimestamp(due, ZoneInfo(zone))
        assert (local.hour, local.minute) == (20, 0)
        assert due >= start.timestamp()
    assert p.due_by_zone["Asia/Shanghai"] == datetime(2026, 9, 30, 12, 0, tzinfo=UTC).timestamp()
    # Shanghai and Hong Kong share an offset, so they share a batch group
    assert ["Asia/Hong_Kong", "Asia/Shanghai"] in p.groups.values()
    assert len(p.groups) == 4


def test_workdays_only_skips_the_golden_week() -> None:
    start = datetime(2026, 9, 30, 13, 0, tzinfo=UTC)  # 21:00 in Shanghai: today's 20:00 passed
    p = timing.plan(FULL, ["Asia/Shanghai"], start)
    local = datetime.fromtimestamp(p.due_by_zone["Asia/Shanghai"], ZoneInfo("Asia/Shanghai"))
    assert local.date().isoformat() == "2026-10-08"


def test_without_local_time_the_category_window_applies() -> None:
    start = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
    p = timing.plan({"category": "电商"}, ["Asia/Shanghai"], start)
    local = datetime.fromtimestamp(p.due_by_zone["Asia/Shanghai"], ZoneInfo("Asia/Shanghai"))
    assert (local.hour, local.minute) == (20, 0)
    assert p.options.category == "ecommerce" and p.options.window_from == "category"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"local_time": "23:00"}, "local_time: 23:00 falls in quiet_hours"),
        ({"category": "education", "local_time": "18:00"}, "outside the category window"),
        ({"category": "astrology"}, "category: 'astrology' is not a known category"),
        ({"window": "23:00-23:30"}, "lies entirely in quiet_hours"),
        ({"workdays_only": "yes"}, "workdays_only: must be true or false"),
        ({"quiet_hours": "late"}, "quiet_hours: 'late' is not a window"),
        ({"local_time": 20}, "local_time: write HH:MM"),
        ({"send_at": "20:00"}, "unknown timing option(s) send_at"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, object], fragment: str) -> None:
    with pytest.raises(timing.TimingError) as info:
        timing.parse_options(options)
    assert fragment in str(info.value)


def test_quiet_hours_off_and_window_any() -> None:
    o = timing.parse_options({"quiet_hours": "off", "window": "any", "local_time": "23:30"})
    assert o.send.quiet_hours is None and o.send.window is None and o.local_time is not None


def test_bad_zone_and_naive_start() -> None:
    with pytest.raises(timing.TimingError, match="Mars/Base"):
        timing.plan({}, ["Mars/Base"], datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(timing.TimingError, match="not_before"):
        timing.plan({}, ["Asia/Shanghai"], datetime(2026, 1, 1))


def test_case_sql_maps_zones_to_dues() -> None:
    p = timing.plan(FULL, ZONES, datetime(2026, 9, 30, 1, 0, tzinfo=UTC))
    sql, params = p.case_sql("c.zone")
    assert sql.startswith("CASE c.zone WHEN :tz_0 THEN :due_0") and sql.endswith("END")
    pairs = {params[f"tz_{i}"]: params[f"due_{i}"] for i in range(len(ZONES))}
    assert pairs == p.due_by_zone
    assert params["due_default"] == p.due_by_zone["Asia/Shanghai"]


def test_case_sql_runs_in_sqlite() -> None:
    import sqlite3

    p = timing.plan(FULL, ZONES, datetime(2026, 9, 30, 1, 0, tzinfo=UTC))
    sql, params = p.case_sql("zone")
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE r (zone TEXT)")
    db.executemany("INSERT INTO r VALUES (?)", [(z,) for z in [*ZONES, "Unknown/Zone"]])
    got = dict(db.execute(f"SELECT zone, {sql} FROM r", params).fetchall())
    assert got["America/New_York"] == p.due_by_zone["America/New_York"]
    assert got["Unknown/Zone"] == p.due_by_zone["Asia/Shanghai"]


def test_resolve_zones_for_distinct_contact_rows() -> None:
    rows = [("Europe/London", None, None), (None, "广东省", "广州市"), (None, "香港", None),
            (None, None, None), ("bogus", None, None)]  # fmt: skip
    got = timing.resolve_zones(rows, account_zone="Asia/Tokyo")
    assert got[("Europe/London", None, None)] == "Europe/London"
    assert got[(None, "广东省", "广州市")] == "Asia/Shanghai"
    assert got[(None, "香港", None)] == "Asia/Hong_Kong"
    assert got[(None, None, None)] == "Asia/Tokyo"
    assert got[("bogus", None, None)] == "Asia/Tokyo"


def test_explain_is_a_readable_timeline() -> None:
    p = timing.plan(FULL, ZONES, datetime(2026, 9, 30, 1, 0, tzinfo=UTC))
    text = timing.explain(p)
    assert "category education" in text and "quiet hours 22:00-08:00" in text
    assert "workdays only" in text and "skip public holidays" in text
    assert "2026-09-30 12:00 UTC  ← Asia/Hong_Kong" in text
    assert text.count("UTC  ←") == 4


def test_explain_notes_provisional_years_and_dst_shifts() -> None:
    p = timing.plan(
        {"workdays_only": True, "local_time": "10:00"}, ["Asia/Shanghai"],
        datetime(2027, 3, 1, tzinfo=UTC),
    )  # fmt: skip
    assert any("2027 holidays are provisional" in n for n in p.notes)
    gap = timing.plan(
        {"local_time": "02:30", "quiet_hours": "off", "window": "any"}, ["America/New_York"],
        datetime(2026, 3, 8, 0, 0, tzinfo=UTC),
    )  # fmt: skip
    assert any("DST gap" in n for n in gap.notes) and "DST gap" in timing.explain(gap)
