"""Quotas, caps and the dry run end to end, against the sandbox over HTTP (docs/quotas.md).

The sandbox enforces the same rule files: where qunfa's ledger says someone is over a platform
rule, the twin would refuse them too, and what qunfa lets through the twin accepts.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import func, select, update

from qunfa.bootstrap import Container
from qunfa.domain.quota import Period, period_end
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.services.campaigns import CampaignError
from qunfa.storage.models import (
    Account,
    Batch,
    Campaign,
    Contact,
    Delivery,
    Identity,
    QuotaReservation,
)
from tests.approval import approve
from tests.conftest import drain, make_oa
from tests.integration.test_consent import plan
from tests.integration.test_sms_tencent import CONTENT, make_account, phones


@pytest.fixture
def container(container_on_both: Container) -> Container:
    """Every test here on both databases: the set-based SQL has to work on PostgreSQL too."""
    return container_on_both


CAPS = {"marketing_7d": {"limit": 3, "days": 7}, "marketing_1d": {"limit": 1, "days": 1}}


def people(c: Container, apps: list[str], values: list[str]) -> list[int]:
    """One contact per value with a phone identity on each SMS account (one person, N ids)."""
    now = time.time()
    out = []
    with c.sessions() as s:
        accs = [s.scalars(select(Account).where(Account.app_id == a)).one() for a in apps]
        for v in values:
            contact = Contact(created_at=now, updated_at=now)
            s.add(contact)
            s.flush()
            for acc in accs:
                s.add(Identity(contact_id=contact.id, account_id=acc.id, kind="phone",
                               value_enc=c.keyring.encrypt(v), value_bi=c.keyring.blind(v),
                               updated_at=now))  # fmt: skip
            out.append(contact.id)
        s.commit()
    return out


def sms(c: Container, app: str, **options: Any) -> int:
    content = options.pop("content", CONTENT)
    camp = c.campaigns.create(name="q", channel="sms_tencent", account=app, audience="all",
                              content=content, options=options)  # fmt: skip
    return int(camp.id)


def send(c: Container, cid: int) -> None:
    plan(c, cid)
    c.campaigns.start(cid)
    drain(c)


def outcomes(c: Container, cid: int) -> dict[tuple[str, str | None], int]:
    with c.sessions() as s:
        rows = s.execute(
            select(Delivery.status, Delivery.reason, func.count())
            .where(Delivery.campaign_id == cid)
            .group_by(Delivery.status, Delivery.reason)
        ).all()
    return {(st, r): int(n) for st, r, n in rows}


def test_per_number_daily_agrees_with_the_sandbox(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    c = container
    app = make_account(admin, c, sandbox, per_number_daily=2,
                       settings={"rules": {"per_number_daily": 2}})  # fmt: skip
    people(c, [app], phones(3))
    for _ in range(2):
        send(c, sms(c, app))
    with c.sessions() as s:  # sent_at is what the ledger counts
        assert s.scalar(select(func.count()).where(Delivery.sent_at.is_not(None))) == 6
    assert admin.ledger("sms_tencent", app)["max_per_recipient"] == 2
    third = sms(c, app)
    plan(c, third)
    assert outcomes(c, third) == {("skipped", "quota:per_number_daily"): 3}
    elig = c.quota.eligibility(third)
    assert elig["eligible_now"] == 0
    # a new phone is eligible; the sandbox accepts it and refuses nobody
    people(c, [app], phones(1, start=50))
    fourth = sms(c, app, over_cap="defer")
    send(c, fourth)
    got = outcomes(c, fourth)
    assert got[("sent", None)] == 1 and got[("planned", "quota:per_number_daily")] == 3
    with c.sessions() as s:
        due = set(s.scalars(select(Delivery.due_at).where(
            Delivery.campaign_id == fourth, Delivery.status == "planned")))  # fmt: skip
        later = s.scalars(select(Batch).where(Batch.campaign_id == fourth,
                                              Batch.state == "pending")).all()  # fmt: skip
    assert due == {period_end(Period.DAY, time.time())}  # the next midnight in China
    assert len(later) == 1 and later[0].next_attempt_at >= max(due)  # their own batch
    assert admin.ledger("sms_tencent", app)["max_per_recipient"] == 2  # nobody over the cap


def test_caps_count_every_channel_and_identity_of_a_person(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    c = container
    c.settings.caps = CAPS
    a, b = make_account(admin, c, sandbox), make_account(admin, c, sandbox)
    ids = people(c, [a, b], phones(4, start=100))
    first = sms(c, a)
    send(c, first)
    assert outcomes(c, first) == {("sent", None): 4}
    # the same people on another account (another identity): over 1 a day
    second = sms(c, b)
    plan(c, second)
    assert outcomes(c, second) == {("skipped", "cap:marketing_1d"): 4}
    # everyone capped: the plan fails with the quota step's reason, not "audience is empty"
    status = c.campaigns.status(second)
    assert status["state"] == "failed"
    assert status["last_error"] == (
        "every recipient is over a frequency cap or platform quota: cap:marketing_1d 4"
    )
    # transactional messages are exempt
    otp = sms(c, b, transactional=True)
    send(c, otp)
    assert outcomes(c, otp) == {("sent", None): 4}
    # and a transactional send does not count towards the marketing caps of others
    c.settings.caps = {"marketing_1d": {"limit": 2, "days": 1}}
    third = sms(c, b)
    plan(c, third)
    assert outcomes(c, third) == {("planned", None): 4}
    # (a planned campaign's rows count for later plans too — see the scheduled-campaigns
    # test below; this one is never sent)
    c.campaigns.cancel(third)
    # defer: the next allowed moment is the first send + 1 day, per person
    c.settings.caps = CAPS
    with c.sessions() as s:
        sent_at = dict(s.execute(select(Delivery.contact_id, Delivery.sent_at).where(
            Delivery.campaign_id == first)).all())  # fmt: skip
    fourth = sms(c, b, over_cap="defer")
    plan(c, fourth)
    with c.sessions() as s:
        due = dict(s.execute(select(Delivery.contact_id, Delivery.due_at).where(
            Delivery.campaign_id == fourth)).all())  # fmt: skip
    assert due == {cid: sent_at[cid] + 86400 for cid in ids}


def test_fallback_routes_the_capped_to_another_channel(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    c = container
    c.settings.caps = CAPS
    a, b = make_account(admin, c, sandbox), make_account(admin, c, sandbox)
    people(c, [a, b], phones(2, start=200))
    people(c, [a, b], phones(1, start=300))
    send(c, sms(c, a))  # everyone got one today
    people(c, [a, b], phones(2, start=400))  # two fresh people
    main = sms(c, a, over_cap="fallback:sms_tencent", fallback_account=b,
               fallback_content={"sms_tencent": CONTENT})  # fmt: skip
    plan(c, main)
    assert outcomes(c, main) == {("skipped", "cap:marketing_1d"): 3, ("planned", None): 2}
    with c.sessions() as s:
        child = s.scalars(select(Campaign).where(Campaign.parent_id == main)).one()
    assert child.channel == "sms_tencent" and child.audience.startswith("openids:")
    assert child.account_id != c.campaigns.get(main).account_id  # the fallback account
    assert len(child.audience.removeprefix("openids:").split(",")) == 3


def test_reservations_prevent_double_booking(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    c = container
    sub = make_oa(admin, c, sandbox.url, followers=30, kind="subscription")
    text = {"msgtype": "text", "text": {"content": "hello"}}

    def campaign() -> int:
        camp = c.campaigns.create(name="r", channel="wechat_oa", account=sub.appid,
                                  audience="all", content=text, as_list=True)  # fmt: skip
        return int(camp.id)

    first, second = campaign(), campaign()
    plan(c, first)  # planned, not sent: it holds today's one mass send
    with c.sessions() as s:
        res = s.scalars(select(QuotaReservation).where(QuotaReservation.campaign_id == first)).one()
    assert (res.rule, res.count) == ("subscription_mass_per_day", 1)
    plan(c, second)
    tomorrow = period_end(Period.DAY, time.time())
    with c.sessions() as s:
        b2 = s.scalars(select(Batch).where(Batch.campaign_id == second)).one()
    assert b2.next_attempt_at == tomorrow  # the slot was taken: the second waits a day
    shown = {r["rule"]: r for r in c.quota.show(sub.appid)}
    assert shown["subscription_mass_per_day"]["reserved"] == 1
    assert shown["subscription_mass_per_day"]["remaining"] == 0
    c.campaigns.cancel(first)  # a cancelled campaign's reservation no longer counts
    assert c.quota.release() >= 1
    assert {r["rule"]: r for r in c.quota.show(sub.appid)}["subscription_mass_per_day"][
        "remaining"
    ] == 1


def test_dry_run_equals_the_real_plan_and_leaves_no_trace(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    c = container
    c.settings.caps = CAPS
    app = make_account(admin, c, sandbox, settings={"sms_price_per_segment": 0.045})
    people(c, [app], phones(5, start=500))
    send(c, sms(c, app))
    people(c, [app], phones(3, start=600))
    cid = sms(c, app)  # no check, no approval: a dry run is advice and passes no gate
    dry = c.dryrun.run(cid)
    assert dry["recipients"] == 3 and dry["dropped"] == {"cap:marketing_1d": 5}
    assert dry["sms_cost"]["segments"] == 3 and dry["sms_cost"]["estimate"] == round(3 * 0.045, 2)
    assert sum(dry["timeline"]["per_day"].values()) == 3
    assert any(r["code"] == "caps" for r in dry["risk"]["reasons"]) and dry["risk"]["score"] > 0
    camp = c.campaigns.get(cid)
    assert camp.state == "draft" and camp.planned_count == 0
    with c.sessions() as s:
        assert s.scalar(select(func.count()).where(Delivery.campaign_id == cid)) == 0
        assert s.scalar(select(func.count()).where(Batch.campaign_id == cid)) == 0
    real = plan(c, cid)
    assert (real.recipients, real.batches) == (dry["recipients"], dry["batches"])
    got = outcomes(c, cid)
    assert {r: n for (st, r), n in got.items() if st == "skipped"} == dry["dropped"]


def test_risk_reasons_for_a_protected_send_to_all(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=20)
    with c.sessions() as s:
        s.execute(update(Account).where(Account.app_id == oa.appid)
                  .values(settings={"mass_send_protection": True}))  # fmt: skip
        s.commit()
    camp = c.campaigns.create(name="all", channel="wechat_oa", account=oa.appid, audience="all",
                              content={"msgtype": "text", "text": {"content": "hi"}})  # fmt: skip
    dry = c.dryrun.run(camp.id)
    assert dry["mode"] == "to_all"
    assert [r["code"] for r in dry["risk"]["reasons"]] == ["mass_send_protection"]
    assert dry["risk"]["score"] == 30


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"over_cap": "later"}, ["over_cap", "skip", "defer", "fallback:<channel>"]),
        ({"over_cap": "fallback:carrier_pigeon"}, ["over_cap", "carrier_pigeon", "sms_tencent"]),
        ({"caps": True}, ["caps", "false", "limit", "days"]),
        ({"caps": {"marketing_1d": {"limit": 0, "days": 1}}}, ["caps", "marketing_1d", "limit"]),
        ({"caps": {"weekly": 3}}, ["caps", "weekly", "limit", "days"]),
        ({"transactional": "yes"}, ["transactional", "true", "false"]),
    ],
)
def test_quota_options_are_checked_at_create(
    admin: SandboxAdmin,
    container: Container,
    sandbox: EmbeddedSandbox,
    options: dict[str, Any],
    names: list[str],
) -> None:
    """A bad ``over_cap``, ``caps`` or ``transactional`` fails when the campaign is created,
    naming the option and what it accepts — not later, when it is planned."""
    app = make_account(admin, container, sandbox)
    with pytest.raises(CampaignError) as err:
        sms(container, app, **options)
    for name in names:
        assert name in str(err.value)
    ok = sms(container, app, over_cap="fallback:sms_aliyun", transactional=False,
             caps={"marketing_1d": None, "weekly": {"limit": 2, "days": 7}})  # fmt: skip
    assert container.campaigns.get(ok).state == "draft"


def test_scheduled_campaigns_share_a_followers_last_monthly_slot(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    """服务号: 4 mass sends a month per follower. Followers at 3 this month; two campaigns
    scheduled for the same day: the first takes the last slot, the second is told — in its
    dry run and in its plan — instead of both planning to send (issue 6: per-recipient rules
    count other scheduled campaigns' planned rows)."""
    c = container
    oa = make_oa(admin, c, sandbox.url, followers=5, kind="service")
    text = {"msgtype": "text", "text": {"content": "本月活动"}}

    def campaign(**options: Any) -> int:
        camp = c.campaigns.create(name="m", channel="wechat_oa", account=oa.appid,
                                  audience="all", content=text, as_list=True,
                                  options=options)  # fmt: skip
        return int(camp.id)

    for _ in range(3):
        send(c, campaign())
    assert admin.ledger("wechat_oa", oa.appid)["max_per_recipient"] == 3
    # both on the same day, later this month (near a month's end: its last minutes)
    now = time.time()
    at = min(now + 3600, period_end(Period.MONTH, now) - 300)
    reason = "quota:service_per_user_per_month"
    first, second = campaign(), campaign()
    c.review.schedule(first, at, "author")
    c.review.schedule(second, at + 60, "author")
    assert c.dryrun.run(second)["recipients"] == 5  # nothing else planned yet
    assert plan(c, first).recipients == 5
    dry = c.dryrun.run(second)  # told before planning: who is dropped and why
    assert dry["recipients"] == 0 and dry["dropped"] == {reason: 5}
    plan(c, second)
    assert outcomes(c, second) == {("skipped", reason): 5}
    assert outcomes(c, first) == {("planned", None): 5}
    # deferred instead of skipped: to the next month, when the follower has slots again
    third = campaign(over_cap="defer")
    c.review.schedule(third, at + 120, "author")
    plan(c, third)
    with c.sessions() as s:
        due = set(s.scalars(select(Delivery.due_at).where(Delivery.campaign_id == third)))
    assert due == {period_end(Period.MONTH, at)}
    # a cancelled campaign's planned rows no longer count
    c.campaigns.cancel(first)
    assert c.dryrun.run(campaign())["recipients"] == 5


def test_caps_count_planned_rows_of_other_campaigns_inside_their_window(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    """Cross-channel caps count another live campaign's planned rows by when they are due:
    inside the cap's window they count (defer: to that send + the window), outside not."""
    c = container
    c.settings.caps = {"marketing_1d": {"limit": 1, "days": 1}}
    a, b = make_account(admin, c, sandbox), make_account(admin, c, sandbox)
    people(c, [a, b], phones(3, start=700))
    now = time.time()

    def scheduled(app: str, at: float, **options: Any) -> int:
        cid = sms(c, app, **options)
        approve(c, cid)  # the SMS content asks for a review; scheduling passes the gate
        c.review.schedule(cid, at, "author")
        return cid

    later = scheduled(
        a, now + 3 * 86400
    )  # on another account and channel identity of the same people
    c.review.schedule(later, now + 3 * 86400, "author")
    c.campaigns.plan(later)
    soon = scheduled(b, now + 3600, over_cap="defer")  # 2+ days before: outside the window
    c.campaigns.plan(soon)
    assert outcomes(c, soon) == {("planned", None): 3}
    near = scheduled(b, now + 3 * 86400 + 3600, over_cap="defer")  # an hour after: inside
    c.campaigns.plan(near)
    with c.sessions() as s:
        due = set(s.scalars(select(Delivery.due_at).where(Delivery.campaign_id == near)))
    assert len(due) == 1 and due.pop() == pytest.approx(now + 4 * 86400)  # a day after it
    assert outcomes(c, near) == {("planned", "cap:marketing_1d"): 3}


def test_rebatch_keeps_due_now_rows_in_their_batches_and_moves_only_the_deferred(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    """The incremental re-batch: rows still due now keep the batch planning gave them (a batch
    that lost rows is sent smaller), deferred rows get batches of their own after the last,
    and every batch's size is what it holds."""
    c = container
    c.settings.caps = {"marketing_1d": {"limit": 1, "days": 1}}
    app = make_account(admin, c, sandbox)
    people(c, [app], phones(150, start=1000))
    send(c, sms(c, app))  # these 150 got a message today
    people(c, [app], phones(300, start=2000))
    cid = sms(c, app, over_cap="defer")
    plan(c, cid)
    with c.sessions() as s:
        rows = s.execute(
            select(Delivery.identity_id, Delivery.batch_no, Delivery.status, Delivery.due_at)
            .where(Delivery.campaign_id == cid)
            .order_by(Delivery.identity_id)
        ).all()
        batches = s.scalars(
            select(Batch).where(Batch.campaign_id == cid).order_by(Batch.batch_no)
        ).all()
    assert [r.status for r in rows] == ["planned"] * 450
    now_rows = [r for r in rows if r.due_at is None]
    later = [r for r in rows if r.due_at is not None]
    assert len(now_rows) == 300 and len(later) == 150
    # planning numbered identities 200 a batch; the due-now rows are where it put them
    assert [r.batch_no for r in now_rows] == [(150 + i) // 200 for i in range(300)]
    assert {r.batch_no for r in later} == {3}
    assert [(b.batch_no, b.size) for b in batches] == [(0, 50), (1, 200), (2, 50), (3, 150)]
    assert batches[3].next_attempt_at >= max(r.due_at for r in later) > time.time()
    assert all(b.next_attempt_at == 0 for b in batches[:3])
