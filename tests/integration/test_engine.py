"""The engine end to end against the sandbox: plan → send → reconcile, exactly once.

Batches are driven in-thread (``drain``) so each test controls timing; the callback receiver
runs in a real uvicorn server so MASSSENDJOBFINISH arrives encrypted over HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select, update

from qunfa.api.app import create_app
from qunfa.api.server import ServerThread
from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.storage.models import Batch, Delivery
from tests.approval import approve
from tests.conftest import OA, drain, make_oa

TEXT = {"msgtype": "text", "text": {"content": "引擎测试"}}


@pytest.fixture
def api(container: Container) -> Iterator[ServerThread]:
    server = ServerThread(create_app(container)).start()
    yield server
    server.stop()


def callback_url(api: ServerThread, appid: str) -> str:
    return f"{api.url}/callbacks/wechat/{appid}"


def wait_done(c: Container, campaign_id: int, timeout: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        drain(c, rounds=1)
        status = c.campaigns.status(campaign_id)
        if status["state"] in ("done", "failed", "paused"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"campaign {campaign_id} not done: {c.campaigns.status(campaign_id)}")


@pytest.fixture
def oa(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox, api: ServerThread
) -> OA:
    return make_oa(admin, container, sandbox.url, followers=25_000, callback_url="pending")


def point_callbacks(admin: SandboxAdmin, oa: OA, api: ServerThread, **extra: object) -> None:
    """Re-create the sandbox account with the callback URL of the running API."""
    admin.create_wechat_account(
        appid=oa.appid,
        secret=oa.secret,
        type="service",
        followers=25_000,
        tags={"VIP": 0.1, "上海": 0.3},
        token=oa.token,
        encoding_aes_key=oa.aes_key,
        callback_url=callback_url(api, oa.appid),
        job_delay_seconds=0.05,
        **extra,
    )


def test_list_campaign_in_batches_exactly_once(
    container: Container, oa: OA, admin: SandboxAdmin, api: ServerThread
) -> None:
    point_callbacks(admin, oa, api)
    camp = container.campaigns.create(
        name="list",
        channel="wechat_oa",
        account=oa.appid,
        audience="all",
        content=TEXT,
        as_list=True,
    )
    approve(container, camp.id)  # 25,000 followers: above the review threshold
    report = container.campaigns.start(camp.id)
    assert report is not None and report.recipients == 25_000 and report.batches == 3
    status = wait_done(container, camp.id)
    assert status["state"] == "done"
    assert status["deliveries"] == {"sent": 25_000}
    assert status["platform"] == {"total": 25_000, "filter": 25_000, "sent": 25_000, "error": 0}
    ledger = admin.ledger("wechat_oa", oa.appid)
    assert ledger == {**ledger, "messages": 25_000, "recipients": 25_000, "max_per_recipient": 1}


def test_tag_campaign_uses_sendall_and_counts_from_the_callback(
    container: Container, oa: OA, admin: SandboxAdmin, api: ServerThread
) -> None:
    point_callbacks(admin, oa, api)
    camp = container.campaigns.create(
        name="vip", channel="wechat_oa", account=oa.appid, audience="tag:VIP", content=TEXT
    )
    assert camp.mode == "tag"
    container.campaigns.start(camp.id)
    status = wait_done(container, camp.id)
    vip = status["planned"]
    assert status["state"] == "done" and 1500 < vip < 3500  # ~10% of 25,000
    assert status["platform"]["sent"] == vip  # type: ignore[index]
    assert admin.ledger("wechat_oa", oa.appid)["messages"] == vip


def test_service_account_filters_the_fifth_message_of_the_month(
    container: Container, oa: OA, admin: SandboxAdmin, api: ServerThread
) -> None:
    point_callbacks(admin, oa, api)
    for i in range(4):
        camp = container.campaigns.create(
            name=f"m{i}", channel="wechat_oa", account=oa.appid, audience="tag:VIP", content=TEXT
        )
        container.campaigns.start(camp.id)
        status = wait_done(container, camp.id)
    assert admin.ledger("wechat_oa", oa.appid)["max_per_recipient"] == 4
    # The fifth: qunfa's ledger knows what the platform would filter (docs/quotas.md) and
    # skips everyone at plan time; nothing is sent.
    camp = container.campaigns.create(
        name="m4", channel="wechat_oa", account=oa.appid, audience="tag:VIP", content=TEXT
    )
    container.review.check(camp.id, "author")
    container.campaigns.plan(camp.id)
    status = container.campaigns.status(camp.id)
    assert status["state"] == "failed" and set(status["deliveries"]) == {"skipped"}
    with container.sessions() as s:
        reasons = set(s.scalars(select(Delivery.reason).where(Delivery.campaign_id == camp.id)))
    assert reasons == {"quota:service_per_user_per_month"}
    assert admin.ledger("wechat_oa", oa.appid)["max_per_recipient"] == 4


def test_faults_are_retried_until_sent_once(
    container: Container, oa: OA, admin: SandboxAdmin, api: ServerThread
) -> None:
    point_callbacks(admin, oa, api)
    container.settings.max_attempts = 30  # half the calls fail: allow a long unlucky streak
    admin.faults(error_rate=0.5, errcode=-1, paths=["mass/send"], seed=7)
    camp = container.campaigns.create(
        name="faulty",
        channel="wechat_oa",
        account=oa.appid,
        audience="all",
        content=TEXT,
        as_list=True,
    )
    approve(container, camp.id)  # 25,000 followers: above the review threshold
    container.campaigns.start(camp.id)
    status = wait_done(container, camp.id, timeout=30)
    assert status["state"] == "done" and status["deliveries"] == {"sent": 25_000}
    with container.sessions() as s:
        attempts = s.scalar(select(func.sum(Batch.attempts)).where(Batch.campaign_id == camp.id))
    assert attempts is not None and attempts > 3  # some batches needed more than one try
    ledger = admin.ledger("wechat_oa", oa.appid)
    assert ledger["messages"] == 25_000 and ledger["max_per_recipient"] == 1


def test_in_doubt_batches_are_settled_by_dedupe_not_resent(
    container: Container, oa: OA, admin: SandboxAdmin, api: ServerThread, tmp_path: object
) -> None:
    point_callbacks(admin, oa, api)
    container.settings.http_timeout = 0.5
    admin.faults(accept_then_timeout_rate=1.0, hang_seconds=2, paths=["mass/send"])
    camp = container.campaigns.create(
        name="doubt",
        channel="wechat_oa",
        account=oa.appid,
        audience="all",
        content=TEXT,
        as_list=True,
    )
    approve(container, camp.id)  # 25,000 followers: above the review threshold
    container.campaigns.start(camp.id)
    drain(container, rounds=1)  # every call times out after the platform accepted it
    with container.sessions() as s:
        states = set(s.scalars(select(Batch.state).where(Batch.campaign_id == camp.id)))
        in_doubt = s.scalar(
            select(func.count()).where(Batch.campaign_id == camp.id, Batch.in_doubt.is_(True))
        )
    assert states == {"retry"} and in_doubt == 3
    admin.clear_faults()
    container.settings.http_timeout = 5.0
    status = wait_done(container, camp.id)
    assert status["state"] == "done" and status["deliveries"] == {"sent": 25_000}
    ledger = admin.ledger("wechat_oa", oa.appid)
    assert ledger["messages"] == 25_000 and ledger["max_per_recipient"] == 1


def test_in_doubt_beyond_the_dedupe_window_becomes_unknown(
    container: Container, oa: OA, admin: SandboxAdmin, api: ServerThread
) -> None:
    point_callbacks(admin, oa, api)
    camp = container.campaigns.create(
        name="old",
        channel="wechat_oa",
        account=oa.appid,
        audience="all",
        content=TEXT,
        as_list=True,
    )
    approve(container, camp.id)  # 25,000 followers: above the review threshold
    container.campaigns.start(camp.id)
    with container.sessions() as s:  # simulate a crash a day ago, mid-call
        s.execute(
            update(Batch)
            .where(Batch.campaign_id == camp.id)
            .values(
                state="sending",
                enqueued_at=time.time() - 86400 - 5,
                lease_expires_at=time.time() - 1,
                first_attempt_at=time.time() - 86400,
                attempts=1,
            )
        )
        s.commit()
    container.queued.clear()  # type: ignore[attr-defined]
    status = wait_done(container, camp.id)
    assert status["state"] == "done"
    assert status["deliveries"] == {"unknown": 25_000}
    assert admin.ledger("wechat_oa", oa.appid)["messages"] == 0  # never re-sent blind


def test_account_error_pauses_and_resume_finishes(
    container: Container, oa: OA, admin: SandboxAdmin, api: ServerThread
) -> None:
    point_callbacks(admin, oa, api)
    creds = container.accounts.credentials(container.accounts.get(oa.appid))
    container.accounts.add(
        channel="wechat_oa",
        app_id=oa.appid,
        secret="wrong",
        base_url=f"{admin.base}/wechat",
        token=creds["token"],
        encoding_aes_key=creds["encoding_aes_key"],
    )
    container.tokens._memory.clear()
    with container.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM access_tokens")
    camp = container.campaigns.create(
        name="paused",
        channel="wechat_oa",
        account=oa.appid,
        audience="all",
        content=TEXT,
        as_list=True,
    )
    approve(container, camp.id)  # 25,000 followers: above the review threshold
    container.campaigns.start(camp.id)
    status = wait_done(container, camp.id)
    assert status["state"] == "paused" and "40125" in str(status["last_error"])
    container.accounts.add(
        channel="wechat_oa",
        app_id=oa.appid,
        secret=oa.secret,
        base_url=f"{admin.base}/wechat",
        token=creds["token"],
        encoding_aes_key=creds["encoding_aes_key"],
    )
    with container.sessions() as s:
        s.execute(update(Batch).where(Batch.campaign_id == camp.id).values(next_attempt_at=0))
        s.commit()
    container.campaigns.start(camp.id)  # resume
    status = wait_done(container, camp.id)
    assert status["state"] == "done" and status["deliveries"] == {"sent": 25_000}


def test_subscription_quota_defers_the_second_campaign(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    sub = make_oa(admin, container, sandbox.url, followers=100, kind="subscription")
    ids = []
    for name in ("first", "second"):
        camp = container.campaigns.create(
            name=name,
            channel="wechat_oa",
            account=sub.appid,
            audience="all",
            content=TEXT,
            as_list=True,
        )
        container.campaigns.start(camp.id)
        drain(container, rounds=2)
        ids.append(camp.id)
    with container.sessions() as s:
        second = s.scalars(select(Batch).where(Batch.campaign_id == ids[1])).one()
    # qunfa's ledger knows the day's one mass send is spent (docs/quotas.md): the second is
    # planned for the next day in China and never reaches the platform for a 45028 today.
    from qunfa.domain.quota import Period, period_end

    assert second.state == "pending" and second.last_errcode is None and second.attempts == 0
    assert second.next_attempt_at == period_end(Period.DAY, time.time())


def test_replanning_after_a_crash_mid_plan_is_idempotent(container: Container, oa: OA) -> None:
    camp = container.campaigns.create(
        name="replan",
        channel="wechat_oa",
        account=oa.appid,
        audience="all",
        content=TEXT,
        as_list=True,
    )
    container.campaigns._set_state(camp.id, "planning")  # as if planning crashed
    with container.engine.begin() as conn:  # leftover rows from the crashed attempt
        conn.exec_driver_sql(
            "INSERT INTO deliveries (campaign_id, batch_no, identity_id, contact_id, status, "
            f"updated_at) SELECT {camp.id}, 0, id, contact_id, 'planned', 0 FROM identities "
            "LIMIT 10"
        )
    approve(container, camp.id)  # 25,000 followers: above the review threshold
    report = container.campaigns.plan(camp.id)
    assert report.recipients == 25_000 and report.batches == 3
    with container.sessions() as s:
        n = s.scalar(select(func.count()).where(Delivery.campaign_id == camp.id))
    assert n == 25_000


def test_empty_audience_fails_with_a_reason(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    oa = make_oa(admin, container, sandbox.url, followers=20, tags={"VIP": 0.0001})
    camp = container.campaigns.create(
        name="nobody", channel="wechat_oa", account=oa.appid, audience="tag:VIP", content=TEXT
    )
    container.review.check(camp.id, "tester")  # the gate: no plan without a check
    report = container.campaigns.plan(camp.id)
    assert report.recipients == 0
    status = container.campaigns.status(camp.id)
    assert status["state"] == "failed" and "empty" in str(status["last_error"])


def test_unknown_tag_is_refused_at_creation(container: Container, oa: OA) -> None:
    from qunfa.services.campaigns import CampaignError

    with pytest.raises(CampaignError, match=r"not found.*known tags: .*VIP"):
        container.campaigns.create(
            name="x", channel="wechat_oa", account=oa.appid, audience="tag:nope", content=TEXT
        )


def test_template_campaign(
    container: Container, oa: OA, admin: SandboxAdmin, api: ServerThread
) -> None:
    point_callbacks(admin, oa, api)
    content = {
        "template_id": "TPL_ORDER_SHIPPED",
        "data": {"thing1": "订单已发货", "character_string2": "SF1", "time3": "2026-11-23"},
    }
    camp = container.campaigns.create(
        name="tpl",
        channel="wechat_template",
        account=oa.appid,
        audience="tag:VIP",
        content=content,
    )
    container.campaigns.start(camp.id)
    status = wait_done(container, camp.id)
    d = status["deliveries"]
    assert status["state"] == "done"
    assert d.get("sent", 0) + d.get("failed", 0) == status["planned"]  # type: ignore[union-attr]
    ledger = admin.ledger("wechat_template", oa.appid)
    assert ledger["messages"] == d.get("sent") and ledger["max_per_recipient"] == 1  # type: ignore[union-attr]


def test_callback_that_beats_the_send_response_is_applied(container: Container, oa: OA) -> None:
    """MASSSENDJOBFINISH arriving before the msg_id is recorded waits, then is applied."""
    from qunfa.domain.outcomes import BatchOutcome

    camp = container.campaigns.create(
        name="race", channel="wechat_oa", account=oa.appid, audience="tag:VIP", content=TEXT
    )
    container.campaigns.start(camp.id)
    with container.sessions() as s:
        s.execute(
            update(Batch)
            .where(Batch.campaign_id == camp.id)
            .values(state="sending", lease_owner="me", lease_expires_at=time.time() + 60)
        )
        s.commit()
        batch = s.scalars(select(Batch).where(Batch.campaign_id == camp.id)).one()
    acc = container.accounts.get(oa.appid)
    event = {
        "Event": "MASSSENDJOBFINISH",
        "MsgID": "777",
        "Status": "send success",
        "TotalCount": "10",
        "FilterCount": "9",
        "SentCount": "9",
        "ErrorCount": "0",
    }
    assert container.reconciler.handle_wechat_event(acc, event) == "pending"
    assert container.reconciler.handle_wechat_event(acc, event) == "duplicate"
    camp_row = container.campaigns.get(camp.id)
    state = container.dispatcher.record(
        batch, camp_row, "me", BatchOutcome(accepted=True, platform_msg_id="777"), {}
    )
    assert state == "accepted"
    with container.sessions() as s:
        after = s.get(Batch, batch.id)
        assert after is not None
        assert after.state == "done" and after.sent_count == 9 and after.filter_count == 9
    assert container.campaigns.status(camp.id)["state"] == "done"


def test_start_enqueues_only_due_batches_and_the_sweeper_sends_the_rest_when_due(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    """A batch due later (staggering, deferral, pacing) is not handed to the workers at start:
    it is not sent early, and it goes as soon as it is due — not a lease time later."""
    acct = make_oa(admin, container, sandbox.url, followers=30)
    camp = container.campaigns.create(
        name="later", channel="wechat_oa", account=acct.appid, audience="all", content=TEXT,
        as_list=True,
    )  # fmt: skip
    container.review.check(camp.id, "tester")  # the gate: no plan without a check
    container.campaigns.plan(camp.id)
    due = time.time() + 1.0
    with container.sessions() as s:
        s.execute(update(Batch).where(Batch.campaign_id == camp.id).values(next_attempt_at=due))
        s.commit()
    queued: list[int] = container.queued  # type: ignore[attr-defined]
    container.campaigns.start(camp.id)
    assert queued == []  # nothing is due yet
    drain(container, rounds=3)
    with container.sessions() as s:
        batch = s.scalars(select(Batch).where(Batch.campaign_id == camp.id)).one()
    assert batch.state == "pending" and batch.attempts == 0 and batch.enqueued_at is None
    assert admin.ledger("wechat_oa", acct.appid).get("messages", 0) == 0
    time.sleep(max(0.0, due - time.time()) + 0.05)
    assert time.time() - due < container.settings.lease_seconds  # well inside a lease time
    drain(container, rounds=3)  # the sweeper finds it due at once
    with container.sessions() as s:
        batch = s.scalars(select(Batch).where(Batch.campaign_id == camp.id)).one()
        sent = s.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.campaign_id == camp.id, Delivery.status == "sent")
        )
    assert batch.state in ("accepted", "done") and batch.attempts == 1
    assert sent == 30
