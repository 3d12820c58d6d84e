"""Official Account ``mass/send`` takes at least 2 openids (40130): qunfa never sends it one.

Against the sandbox over HTTP: the twin refuses a one-openid list with the real errcode; at
plan time a lone recipient joins (or borrows from) a neighbouring batch, and a campaign of
exactly one recipient fails that recipient with a clear reason; at send time a batch left with
one recipient after the consent re-check fails that recipient with the same reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.services.list_minimum import REASON
from qunfa.storage.models import Batch, Delivery
from tests.conftest import drain, fast_settings, make_oa
from tests.integration.test_consent import contact_of, openids, plan

TEXT = {"msgtype": "text", "text": {"content": "本周新品上架"}}


def mass_send_sizes(admin: SandboxAdmin) -> list[int]:
    """List sizes of every ``mass/send`` call the twin answered (not ``mass/sendall``)."""
    paths = admin.get("/_sandbox/calls?path=mass/send")["paths"]
    return [n for p, v in paths.items() if p.endswith("/mass/send") for n in v["sizes"]]


def batches(c: Container, cid: int) -> list[tuple[int, str, int]]:
    with c.sessions() as s:
        rows = s.execute(
            select(Batch.batch_no, Batch.state, Batch.size)
            .where(Batch.campaign_id == cid)
            .order_by(Batch.batch_no)
        ).all()
    return [(int(n), str(st), int(sz)) for n, st, sz in rows]


def live_sizes(c: Container, cid: int) -> list[int]:
    return [size for _, state, size in batches(c, cid) if state == "pending"]


def rows_of(c: Container, cid: int) -> list[tuple[str, str | None]]:
    with c.sessions() as s:
        got = s.execute(
            select(Delivery.status, Delivery.reason).where(Delivery.campaign_id == cid)
        ).all()
    return [(str(st), r) for st, r in got]


def campaign(c: Container, appid: str, audience: str) -> int:
    camp = c.campaigns.create(name="群发", channel="wechat_oa", account=appid, audience=audience,
                              content=TEXT)  # fmt: skip
    return int(camp.id)


def withdraw(c: Container, openid: str) -> None:
    c.consent.withdraw(contact_id=contact_of(c, "openid", openid), scope="wechat_oa",
                       source="api")  # fmt: skip


def test_the_twin_refuses_a_one_openid_list_with_40130(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    import asyncio

    from qunfa.channels.base import OutboundBatch
    from qunfa.channels.http import HttpClient

    c = container
    oa = make_oa(admin, c, sandbox.url, followers=3, tags={})
    who = openids(c, oa.appid)

    async def send(recipients: list[str]) -> Any:
        async with HttpClient() as http:
            adapter = c.accounts.adapter(c.accounts.get(oa.appid), http)
            n = len(recipients)
            batch = OutboundBatch("u", n, f"k{n}", "list", TEXT, recipients)
            return await adapter.send_batch(batch)

    one = asyncio.run(send(who[:1]))
    assert not one.accepted and one.error is not None and one.error.code == 40130
    assert admin.ledger("wechat_oa", oa.appid)["messages"] == 0
    two = asyncio.run(send(who[:2]))
    assert two.accepted and admin.ledger("wechat_oa", oa.appid)["messages"] == 2


def test_a_campaign_of_exactly_one_recipient_fails_it_at_plan_time(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=3, tags={})
    who = openids(c, oa.appid)
    cid = campaign(c, oa.appid, f"openids:{who[0]}")
    report = plan(c, cid)
    assert report.recipients == 0
    status = c.campaigns.status(cid)
    assert status["state"] == "failed" and status["last_error"] == REASON
    assert rows_of(c, cid) == [("failed", REASON)]
    assert [st for _, st, _ in batches(c, cid)] == ["failed"]
    # to_all of two where one withdrew: the platform must not pick (list), and one is left.
    withdraw(c, who[1])
    withdraw(c, who[2])
    everyone = campaign(c, oa.appid, "all")
    assert plan(c, everyone).recipients == 0
    status = c.campaigns.status(everyone)
    assert status["state"] == "failed" and status["last_error"] == REASON
    assert sorted(rows_of(c, everyone)) == [
        ("failed", REASON), ("skipped", "suppressed"), ("skipped", "suppressed")
    ]  # fmt: skip
    assert mass_send_sizes(admin) == [] and admin.ledger("wechat_oa", oa.appid)["messages"] == 0


def test_a_lone_recipient_joins_a_neighbour_with_room(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=8, tags={},
                 qunfa_rules={"mass_max_per_call": 5})  # fmt: skip
    who = openids(c, oa.appid)
    # openid lists of 5 and 3; one withdrawal in the first and two in the second leave 4 + 1.
    for o in (who[0], who[5], who[6]):
        withdraw(c, o)
    cid = campaign(c, oa.appid, "openids:" + ",".join(who))
    assert plan(c, cid).recipients == 5
    assert live_sizes(c, cid) == [5]
    merged = [b for b in batches(c, cid) if b[1] == "done"]
    assert merged == [(1, "done", 0)]
    c.campaigns.start(cid)
    drain(c)
    assert mass_send_sizes(admin) == [5]
    assert admin.ledger("wechat_oa", oa.appid)["messages"] == 5
    assert c.campaigns.status(cid)["deliveries"] == {"sent": 5, "skipped": 3}


def test_a_lone_recipient_next_to_full_batches_borrows_one(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    _borrow(container, admin, sandbox)


def test_lone_recipients_on_postgresql(
    pg_url: str, tmp_path: Path, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = Container(fast_settings(tmp_path / "pg", database_url=pg_url))
    c.migrate()
    queued: list[int] = []
    c.set_enqueue(queued.extend)
    c.queued = queued  # type: ignore[attr-defined]
    try:
        _borrow(c, admin, sandbox)
        oa = make_oa(admin, c, sandbox.url, followers=3, tags={})
        cid = campaign(c, oa.appid, f"openids:{openids(c, oa.appid)[0]}")
        assert plan(c, cid).recipients == 0 and rows_of(c, cid) == [("failed", REASON)]
    finally:
        c.close()


def _borrow(c: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox) -> None:
    oa = make_oa(admin, c, sandbox.url, followers=8, tags={},
                 qunfa_rules={"mass_max_per_call": 3})  # fmt: skip
    who = openids(c, oa.appid)
    withdraw(c, who[7])  # to_all becomes openid lists of 3: 3 + 3 + 1 → 3 + 2 + 2
    cid = campaign(c, oa.appid, "all")
    assert plan(c, cid).recipients == 7
    assert c.campaigns.status(cid)["mode"] == "list"
    assert live_sizes(c, cid) == [3, 2, 2]
    c.campaigns.start(cid)
    drain(c)
    assert sorted(mass_send_sizes(admin)) == [2, 2, 3]
    assert admin.ledger("wechat_oa", oa.appid)["messages"] == 7
    assert c.campaigns.status(cid)["deliveries"] == {"sent": 7, "skipped": 1}


def test_a_batch_left_with_one_after_a_late_withdrawal_fails_that_recipient(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=6, tags={},
                 qunfa_rules={"mass_max_per_call": 3})  # fmt: skip
    who = openids(c, oa.appid)
    cid = campaign(c, oa.appid, "openids:" + ",".join(who[:5]))  # lists of 3 + 2
    assert plan(c, cid).recipients == 5 and live_sizes(c, cid) == [3, 2]
    withdraw(c, who[3])  # after planning: batch 1 keeps only who[4]
    # to_all to two followers, planned as a platform-wide send; one withdraws before it goes:
    # the send would reach them, so it becomes an openid list — of one.
    small = make_oa(admin, c, sandbox.url, followers=2, tags={})
    pair = openids(c, small.appid)
    everyone = campaign(c, small.appid, "all")
    plan(c, everyone)
    assert c.campaigns.status(everyone)["mode"] == "to_all"
    withdraw(c, pair[0])
    c.campaigns.start(cid)
    c.campaigns.start(everyone)
    drain(c)
    assert mass_send_sizes(admin) == [3]  # never a one-openid call
    assert admin.get("/_sandbox/calls?path=mass/sendall")["calls"] == 0
    assert admin.ledger("wechat_oa", oa.appid)["messages"] == 3
    assert admin.ledger("wechat_oa", small.appid)["messages"] == 0
    for camp, lone in ((cid, who[4]), (everyone, pair[1])):
        with c.sessions() as s:
            got = s.execute(
                select(Delivery.status, Delivery.reason).where(
                    Delivery.campaign_id == camp,
                    Delivery.contact_id == contact_of(c, "openid", lone),
                )
            ).one()
        assert tuple(got) == ("failed", REASON)
    assert c.campaigns.status(everyone)["state"] == "done"  # its only batch is settled
    with c.sessions() as s:
        failed = s.execute(
            select(Batch.campaign_id, Batch.last_error).where(Batch.state == "failed")
        ).all()
    assert sorted(failed) == [(cid, REASON), (everyone, REASON)]
