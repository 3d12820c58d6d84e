"""Send-time optimisation (issue 6 item 5) and recurring series (item 4)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select, update

from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.services import scheduling, sto
from qunfa.services.campaigns import CampaignError
from qunfa.storage.models import Batch, Campaign, Contact, ContactFacts, Delivery, PersonEvent
from tests.approval import approve
from tests.conftest import OA, make_oa


@pytest.fixture
def container(container_on_both: Container) -> Container:
    """Every test here on both databases: the set-based SQL has to work on PostgreSQL too."""
    return container_on_both


TEXT = {"msgtype": "text", "text": {"content": "本周活动"}}
NOW = datetime(2027, 3, 10, 1, 0, tzinfo=UTC).timestamp()  # 09:00 Shanghai


def contact_ids(c: Container) -> list[int]:
    with c.sessions() as s:
        return sorted(s.scalars(select(Contact.id)))


def history(c: Container, cid: int, local_hour: int, kind: str, days: list[int]) -> None:
    """Events at ``local_hour`` Shanghai time, ``days`` days before NOW."""
    with c.sessions() as s:
        for d in days:
            base = datetime(2027, 3, 10, tzinfo=UTC).timestamp() - d * 86400
            at = base + (local_hour - 8) * 3600 + 600
            s.add(PersonEvent(contact_id=cid, kind=kind, at=at, received_at=at))
        s.commit()


@pytest.fixture
def oa(admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox) -> OA:
    return make_oa(admin, container, sandbox.url, followers=400)


def test_best_hour_learned_from_history_recency_weighted(container: Container, oa: OA) -> None:
    c = container
    a, b, d = contact_ids(c)[:3]
    history(c, a, 21, "open", [1, 2, 3])
    history(c, b, 9, "click", [2, 5])
    history(c, b, 14, "open", [1, 3])  # two opens (1 each) lose to two clicks (2 each)
    history(c, d, 7, "open", [60, 61, 62])  # old habit …
    history(c, d, 19, "open", [1, 2])  # … loses to a recent one despite fewer events
    assert sto.refresh(c, now=NOW) == 3
    with c.sessions() as s:
        facts = {f.contact_id: f for f in s.scalars(select(ContactFacts))}
    assert (facts[a].best_hour, facts[b].best_hour, facts[d].best_hour) == (21, 9, 19)
    assert facts[a].best_hour_weight == pytest.approx(1.0)
    assert 0.5 < (facts[b].best_hour_weight or 0) < 1.0


def test_sto_plan_best_hours_fallbacks_holdout(
    container: Container, oa: OA, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = container
    ids = contact_ids(c)
    history(c, ids[0], 21, "open", [1, 2])
    history(c, ids[1], 21, "open", [1])
    history(c, ids[2], 11, "click", [1])
    sto.refresh(c, now=NOW)
    monkeypatch.setattr(scheduling, "clock", lambda: NOW)
    camp = c.campaigns.create(
        name="sto", channel="wechat_oa", account=oa.appid, audience="all", content=TEXT,
        options={"timing": {"category": "notification", "optimise": "24h", "holdout": 0.25}},
    )  # fmt: skip
    approve(c, camp.id)
    c.campaigns.plan(camp.id)
    with c.sessions() as s:
        rows = {d.contact_id: d for d in s.scalars(select(Delivery))}
        bats = list(s.scalars(select(Batch).where(Batch.campaign_id == camp.id)))
    at21 = datetime(2027, 3, 10, 13, 0, tzinfo=UTC).timestamp()  # 21:00 Shanghai today
    at11 = datetime(2027, 3, 10, 3, 0, tzinfo=UTC).timestamp()
    fixed = datetime(2027, 3, 10, 1, 0, tzinfo=UTC).timestamp()  # now (allowed: 09:00)
    holdout = {cid for cid in ids if scheduling.in_holdout(camp.uid, cid, 0.25)}
    # deterministic: SQL and the Python twin agree person by person; share within tolerance
    assert {cid for cid, r in rows.items() if r.variant == "holdout"} == holdout
    assert 70 <= len(holdout) <= 130
    for cid, r in rows.items():
        if cid in holdout:
            assert r.due_at == fixed
        elif cid == ids[2]:
            assert r.due_at == at11  # learned 11:00
        else:  # learned 21:00, or the audience's modal hour (21) for people with no history
            assert r.due_at == at21
    # batches grouped by hour: one per due time, each batch's rows share it
    assert sorted(b.next_attempt_at for b in bats) == sorted({r.due_at or 0 for r in rows.values()})
    sent_ids = ids[:50]
    with c.sessions() as s:  # pretend the send happened; holdout people open less
        s.execute(update(Delivery).values(status="sent"))
        for cid in sent_ids:
            r = rows[cid]
            if cid not in holdout or cid % 2:
                t = (r.due_at or 0) + 1800
                s.add(PersonEvent(contact_id=cid, kind="open", at=t, received_at=t))
        s.commit()
    rep = sto.report(c, camp.id)
    assert rep["planned"] == {"holdout": len(holdout), "sto": 400 - len(holdout)}
    opened_sto = len([x for x in sent_ids if x not in holdout])
    assert rep["variants"]["sto"]["opened"] == opened_sto
    assert rep["variants"]["holdout"]["open_rate"] < rep["variants"]["sto"]["open_rate"] * 2


def test_category_default_hour_without_any_history(
    container: Container, oa: OA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduling, "clock", lambda: NOW)
    camp = container.campaigns.create(
        name="edu", channel="wechat_oa", account=oa.appid, audience="all", content=TEXT,
        options={"timing": {"category": "education", "optimise": "24h"}},
    )  # fmt: skip
    approve(container, camp.id)
    container.campaigns.plan(camp.id)
    with container.sessions() as s:
        dues = set(s.scalars(select(Delivery.due_at)))
    assert dues == {datetime(2027, 3, 10, 11, 0, tzinfo=UTC).timestamp()}  # 19:00 education


def test_recurring_series_runs_without_reapproval_until_content_changes(
    container: Container, oa: OA
) -> None:
    c = container
    series = c.campaigns.create(
        name="weekly", channel="wechat_oa", account=oa.appid, audience="tag:VIP", content=TEXT,
        options={"recurrence": "0 20 * * MON", "timing": {"category": "notification"}},
    )  # fmt: skip
    assert scheduling.spawn_due_runs(c, now=NOW + 30 * 86400) == 0  # not approved yet
    approve(c, series.id)
    approved_at = c.campaigns.get(series.id).approved_at or 0
    with pytest.raises(CampaignError, match="recurring series"):
        c.campaigns.plan(series.id)
    first_monday = scheduling.cron.next_fire(
        "0 20 * * MON", datetime.fromtimestamp(approved_at, UTC), "Asia/Shanghai"
    )
    assert scheduling.spawn_due_runs(c, now=first_monday.timestamp() - 60) == 0
    assert scheduling.spawn_due_runs(c, now=first_monday.timestamp() + 60) == 1
    assert scheduling.spawn_due_runs(c, now=first_monday.timestamp() + 120) == 0  # once per fire
    info = scheduling.runs(c, series.id)
    assert len(info["runs"]) == 1 and info["runs"][0]["run_at"] == first_monday.timestamp()
    with c.sessions() as s:
        child = s.scalars(select(Campaign).where(Campaign.parent_id == series.id)).one()
    assert child.options == {
        "timing": {"category": "notification"},
        "run_at": first_monday.timestamp(),
    }
    assert child.scheduled_at == first_monday.timestamp()
    c.review.require(child.id, auto_check=False)  # inherits the approval: the gate is open
    # a missed week gives one catch-up run, not a burst
    assert scheduling.spawn_due_runs(c, now=first_monday.timestamp() + 15 * 86400) == 1
    c.campaigns.edit_content(
        series.id, {"msgtype": "text", "text": {"content": "新内容"}}, "author"
    )
    assert scheduling.spawn_due_runs(c, now=first_monday.timestamp() + 30 * 86400) == 0
    assert len(scheduling.runs(c, series.id)["runs"]) == 2


def test_two_sweepers_create_a_recurring_run_exactly_once(
    container: Container, oa: OA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sweepers (two containers, as two processes would be, on the same SQLite file or
    PostgreSQL database) reach the same fire time at once: one run, not two. Both read "no run
    yet" before either writes (a barrier inside the read), so the race always happens."""
    import threading

    c = container
    other = Container(c.settings)  # a second process's engine and sessions, same database
    series = c.campaigns.create(
        name="weekly", channel="wechat_oa", account=oa.appid, audience="tag:VIP", content=TEXT,
        options={"recurrence": "0 20 * * MON"},
    )  # fmt: skip
    approve(c, series.id)
    approved_at = c.campaigns.get(series.id).approved_at or 0
    fire = scheduling.cron.next_fire(
        "0 20 * * MON", datetime.fromtimestamp(approved_at, UTC), "Asia/Shanghai"
    ).timestamp()
    barrier = threading.Barrier(2, timeout=10)
    read = scheduling._last_run_at

    def racing_read(cc: Container, series_id: int) -> float | None:
        last = read(cc, series_id)
        barrier.wait()  # both sweepers have seen "no run yet"
        return last

    monkeypatch.setattr(scheduling, "_last_run_at", racing_read)
    made: list[int] = []
    errors: list[BaseException] = []

    def sweep(cc: Container) -> None:
        try:
            made.append(scheduling.spawn_due_runs(cc, now=fire + 60))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sweep, args=(cc,)) for cc in (c, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    other.close()
    assert not errors
    assert sorted(made) == [0, 1]
    with c.sessions() as s:
        children = s.scalars(select(Campaign).where(Campaign.parent_id == series.id)).all()
    assert [ch.options["run_at"] for ch in children] == [fire]
    monkeypatch.setattr(scheduling, "_last_run_at", read)
    assert scheduling.spawn_due_runs(c, now=fire + 120) == 0  # and later sweeps see it
