"""Time in planning (issue 6 item 4): due times per zone, quiet hours, workdays, the sweeper.

The planner's clock is ``scheduling.clock`` (patched to plan at a chosen moment); the
dispatcher and sweeper use the real clock, so a batch planned in 2027 is not due yet.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, update

from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.services import scheduling
from qunfa.services.campaigns import CampaignError
from qunfa.storage.models import Batch, Contact, Delivery
from tests.approval import approve
from tests.conftest import OA, drain, make_oa


@pytest.fixture
def container(container_on_both: Container) -> Container:
    """Every test here on both databases: the set-based SQL has to work on PostgreSQL too."""
    return container_on_both


TEXT = {"msgtype": "text", "text": {"content": "按时发送"}}


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


def at(monkeypatch: pytest.MonkeyPatch, moment: float) -> None:
    monkeypatch.setattr(scheduling, "clock", lambda: moment)


@pytest.fixture
def oa(admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox) -> OA:
    return make_oa(admin, container, sandbox.url, followers=30, tags={"VIP": 0.2})


def set_zones(c: Container) -> dict[int, str]:
    """10 contacts without a zone (→ Asia/Shanghai), 10 in New York, 5 with the Kathmandu zone
    and 5 by city only; returns contact id → expected zone."""
    with c.sessions() as s:
        ids = sorted(s.scalars(select(Contact.id)))
        assert len(ids) == 30
        expect = {}
        for i, cid in enumerate(ids):
            row = s.get(Contact, cid)
            assert row is not None
            if i < 10:
                expect[cid] = "Asia/Shanghai"
            elif i < 20:
                row.timezone, expect[cid] = "America/New_York", "America/New_York"
            elif i < 25:
                row.timezone, expect[cid] = "Asia/Kathmandu", "Asia/Kathmandu"
            else:
                row.city, expect[cid] = "加德满都", "Asia/Kathmandu"
        s.commit()
    return expect


def create(c: Container, oa: OA, timing: dict[str, object], **kw: object) -> int:
    camp = c.campaigns.create(
        name="timed", channel="wechat_oa", account=oa.appid, audience="all", content=TEXT,
        options={"timing": timing}, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    approve(c, camp.id)
    return camp.id


def batches(c: Container, cid: int) -> list[tuple[int, int, float]]:
    with c.sessions() as s:
        return [
            (b.batch_no, b.size, b.next_attempt_at)
            for b in s.scalars(
                select(Batch).where(Batch.campaign_id == cid).order_by(Batch.batch_no)
            )
        ]


def dues_by_contact(c: Container, cid: int) -> dict[int, float]:
    with c.sessions() as s:
        return {
            r.contact_id: r.due_at or 0.0
            for r in s.scalars(select(Delivery).where(Delivery.campaign_id == cid))
        }


def test_zones_staggered_into_separate_batches_across_dst(
    container: Container, oa: OA, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = container
    expect = set_zones(c)
    # 2027-03-14 is the day New York springs forward (02:00 EST → 03:00 EDT).
    at(monkeypatch, utc(2027, 3, 14, 13, 0))
    cid = create(c, oa, {"local_time": "20:00", "per_recipient_local": True})
    c.campaigns.plan(cid)
    want = {
        "Asia/Kathmandu": utc(2027, 3, 14, 14, 15),  # 20:00 +05:45
        "America/New_York": utc(2027, 3, 15, 0, 0),  # 20:00 EDT (−4), not 01:00 (EST)
        "Asia/Shanghai": utc(2027, 3, 15, 12, 0),  # today's 20:00 had passed
    }
    got = batches(c, cid)
    assert [(n, due) for _, n, due in got] == [
        (10, want["Asia/Kathmandu"]), (10, want["America/New_York"]), (10, want["Asia/Shanghai"])
    ]  # fmt: skip
    dues = dues_by_contact(c, cid)
    assert all(dues[cid_] == want[zone] for cid_, zone in expect.items())
    with c.sessions() as s:  # no batch mixes due times
        mixed = s.execute(
            select(Delivery.batch_no)
            .where(Delivery.campaign_id == cid)
            .group_by(Delivery.batch_no)
            .having(func.count(func.distinct(Delivery.due_at)) > 1)
        ).all()
    assert mixed == []
    camp = c.campaigns.get(cid)
    assert camp.mode == "list"  # a to_all send cannot be split by time
    assert "different times" in (camp.last_error or "")

    # The day before, New York was still on EST: 20:00 on 03-13 is 01:00 UTC.
    at(monkeypatch, utc(2027, 3, 13, 13, 0))
    cid2 = create(c, oa, {"local_time": "20:00", "per_recipient_local": True})
    c.campaigns.plan(cid2)
    assert utc(2027, 3, 14, 1, 0) in {due for _, _, due in batches(c, cid2)}


def test_quiet_hours_push_to_next_morning(
    container: Container, oa: OA, monkeypatch: pytest.MonkeyPatch
) -> None:
    at(monkeypatch, utc(2027, 3, 10, 15, 30))  # 23:30 in Shanghai
    cid = create(container, oa, {"category": "notification"})
    container.campaigns.plan(cid)
    morning = utc(2027, 3, 11, 0, 0)  # 08:00 Shanghai, the end of the quiet hours
    assert [due for _, _, due in batches(container, cid)] == [morning]
    assert set(dues_by_contact(container, cid).values()) == {morning}
    assert container.campaigns.get(cid).mode == "to_all"  # one due time: still one send


@pytest.mark.parametrize(
    ("now", "due"),
    [
        # Wed 2026-09-30 22:00 → the National Day holiday (10-01..10-07) → Thu 10-08 10:00
        (utc(2026, 9, 30, 14, 0), utc(2026, 10, 8, 2, 0)),
        # Fri 2026-10-09 22:00 → Saturday 10-10 is a make-up working day (调休) → 10:00
        (utc(2026, 10, 9, 14, 0), utc(2026, 10, 10, 2, 0)),
    ],
)
def test_workdays_only_skips_holidays_and_keeps_makeup_saturday(
    container: Container, oa: OA, monkeypatch: pytest.MonkeyPatch, now: float, due: float
) -> None:
    at(monkeypatch, now)
    cid = create(container, oa, {"workdays_only": True})
    container.campaigns.plan(cid)
    assert [d for _, _, d in batches(container, cid)] == [due]


def test_invalid_timing_options_are_refused_at_create(container: Container, oa: OA) -> None:
    with pytest.raises(CampaignError, match="local_time"):
        create(container, oa, {"local_time": "23:00", "per_recipient_local": True})
    with pytest.raises(CampaignError, match="holdout"):
        create(container, oa, {"holdout": 0.1})
    with pytest.raises(CampaignError, match="recurrence: cron hour"):
        container.campaigns.create(
            name="bad", channel="wechat_oa", account=oa.appid, audience="all", content=TEXT,
            options={"recurrence": "0 25 * * *"},
        )  # fmt: skip


def test_sweeper_waits_for_the_due_time(
    container: Container, oa: OA, admin: SandboxAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = container
    at(monkeypatch, utc(2027, 3, 10, 15, 30))  # due 2027-03-11 00:00 UTC: in the future
    cid = create(c, oa, {"category": "notification"})
    c.campaigns.start(cid)
    drain(c)  # the enqueued batch cannot be leased before its time
    assert c.sweeper.due_batches() == []
    assert batches(c, cid)[0][2] > datetime.now(UTC).timestamp()
    assert c.campaigns.status(cid)["batches"].get("pending", {}).get("batches") == 1
    assert admin.ledger("wechat_oa", oa.appid)["messages"] == 0
    with c.sessions() as s:  # the due time has come (and the early wake-up is long gone)
        s.execute(
            update(Batch)
            .where(Batch.campaign_id == cid)
            .values(next_attempt_at=1.0, enqueued_at=None)
        )
        s.commit()
    assert len(c.sweeper.due_batches()) == 1
    drain(c)
    assert admin.ledger("wechat_oa", oa.appid)["messages"] == 30


def test_scheduled_at_is_the_earliest_due(container: Container, oa: OA) -> None:
    c = container
    cid = create(c, oa, {"category": "notification", "quiet_hours": "off"})
    later = datetime.now(UTC).timestamp() + 3 * 86400
    c.review.schedule(cid, later, "author")
    c.campaigns.plan(cid)
    assert [d for _, _, d in batches(c, cid)] == [float(int(later) // 60 * 60 + 60)]
