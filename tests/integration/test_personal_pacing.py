"""Personal-WeChat pacing combined with send windows, quiet hours, holidays and a schedule.

The daily pace (rule ``daily_pace``) spreads batches over days; the campaign's timing options
say when in a day they may go. Together: one pace day per local date, never two on one date
(however the window, quiet hours or holidays move a day), every batch inside the window, the
next day starting at the window's start, holidays skipped when asked, and day 0 no earlier
than the campaign's schedule (``docs/time.md``, "Pacing").
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.services import scheduling
from qunfa.storage.models import Batch
from tests.integration.test_consent import plan
from tests.integration.test_personal_wechat import make_account

SH = ZoneInfo("Asia/Shanghai")
TWO_A_DAY = {"batch_max": 25, "daily_pace": 50}  # 120 friends: 5 batches, 2 a day, 3 days


def at(*args: int) -> float:
    return datetime(*args, tzinfo=SH).timestamp()  # type: ignore[misc]


def paced(
    c: Container,
    tmp_path: Path,
    admin: SandboxAdmin,
    monkeypatch: pytest.MonkeyPatch,
    now: float,
    timing: dict[str, Any] | None = None,
    scheduled: float | None = None,
) -> list[datetime]:
    """Plan a 120-friend campaign at ``now``; each batch's local due time, by batch number."""
    make_account(admin, c, tmp_path, friends=120, rules=TWO_A_DAY)
    monkeypatch.setattr(scheduling, "clock", lambda: now)
    camp = c.campaigns.create(
        name="新品通知", channel="personal_wechat", account="小王的微信", audience="all",
        content={"text": "老朋友好！新品到店"},
        options={"timing": timing} if timing is not None else None,
    )  # fmt: skip
    if scheduled is not None:
        with c.sessions() as s:  # the review service refuses a time before the real clock
            row = s.get(type(camp), camp.id)
            assert row is not None
            row.scheduled_at = scheduled
            s.commit()
    report = plan(c, camp.id)
    assert report.recipients == 120
    with c.sessions() as s:
        rows = s.scalars(
            select(Batch).where(Batch.campaign_id == camp.id).order_by(Batch.batch_no)
        ).all()
    assert [b.size for b in rows] == [25, 25, 25, 25, 20]
    return [datetime.fromtimestamp(max(b.next_attempt_at, now), SH) for b in rows]


def days_of(dues: list[datetime]) -> list[date]:
    return [d.date() for d in dues]


def test_inside_the_window_day_zero_is_now_and_the_next_days_start_at_the_window(
    container: Container, admin: SandboxAdmin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = at(2027, 3, 10, 19, 30)  # a Wednesday, inside education's 19:00–21:00
    dues = paced(container, tmp_path, admin, monkeypatch, now, {"category": "education"})
    assert days_of(dues) == [date(2027, 3, 10)] * 2 + [date(2027, 3, 11)] * 2 + [date(2027, 3, 12)]
    assert dues[0].timestamp() == now and dues[1].timestamp() == now  # a day's batches together
    assert all(d.hour == 19 and d.minute == 0 for d in dues[2:])  # the window's start
    assert all(19 <= d.hour < 21 for d in dues)


def test_after_the_window_day_zero_is_tomorrow_and_no_date_gets_two_days(
    container: Container, admin: SandboxAdmin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = at(2027, 3, 10, 21, 30)  # after today's window
    dues = paced(container, tmp_path, admin, monkeypatch, now, {"category": "education"})
    assert days_of(dues) == [date(2027, 3, 11)] * 2 + [date(2027, 3, 12)] * 2 + [date(2027, 3, 13)]
    assert all((d.hour, d.minute) == (19, 0) for d in dues)


def test_holidays_are_skipped_without_two_pace_days_on_the_day_after(
    container: Container, admin: SandboxAdmin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = at(2027, 9, 30, 19, 30)  # the eve of 国庆节 (10/1–10/3 in holidays_cn.toml)
    timing = {"category": "education", "skip_holidays": True}
    dues = paced(container, tmp_path, admin, monkeypatch, now, timing)
    assert days_of(dues) == [date(2027, 9, 30)] * 2 + [date(2027, 10, 4)] * 2 + [date(2027, 10, 5)]
    assert all(19 <= d.hour < 21 for d in dues)


def test_quiet_hours_move_day_zero_and_the_next_day_starts_at_the_pace_hour(
    container: Container, admin: SandboxAdmin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = at(2027, 3, 10, 23, 0)  # inside quiet hours 22:00–08:00, no window
    dues = paced(container, tmp_path, admin, monkeypatch, now,
                 {"window": "any", "quiet_hours": "22:00-08:00"})  # fmt: skip
    assert days_of(dues) == [date(2027, 3, 11)] * 2 + [date(2027, 3, 12)] * 2 + [date(2027, 3, 13)]
    # day 0: the timing step's first moment after the quiet hours (the default category's
    # start, as for any campaign); later days: the pace hour — never inside the quiet hours
    first = scheduling.timing.plan(
        {"window": "any", "quiet_hours": "22:00-08:00"},
        {"Asia/Shanghai"},
        datetime.fromtimestamp(now, UTC),
    )
    assert dues[0].timestamp() == first.due_by_zone["Asia/Shanghai"]
    assert [(d.hour, d.minute) for d in dues[::2]] == [(10, 0), (10, 0), (10, 0)]


def test_a_scheduled_campaign_paces_from_its_schedule(
    container: Container, admin: SandboxAdmin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = at(2027, 3, 10, 9, 0)
    when = at(2027, 3, 13, 15, 0)  # three days later
    dues = paced(container, tmp_path, admin, monkeypatch, now, scheduled=when)
    assert days_of(dues) == [date(2027, 3, 13)] * 2 + [date(2027, 3, 14)] * 2 + [date(2027, 3, 15)]
    assert dues[0].timestamp() == when
    assert [(d.hour, d.minute) for d in dues[2::2]] == [(10, 0), (10, 0)]  # pace_start_hour


def test_without_timing_day_zero_is_now_and_later_days_at_the_pace_hour(
    container: Container, admin: SandboxAdmin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime(2027, 3, 10, 14, 0, tzinfo=UTC).timestamp()  # 22:00 in Shanghai
    dues = paced(container, tmp_path, admin, monkeypatch, now)
    assert days_of(dues) == [date(2027, 3, 10)] * 2 + [date(2027, 3, 11)] * 2 + [date(2027, 3, 12)]
    assert dues[2].timestamp() - dues[0].timestamp() == 12 * 3600  # tomorrow 10:00
