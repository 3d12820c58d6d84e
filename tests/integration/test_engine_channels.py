"""The engine on the other channels: import or sync recipients, plan, send, settle, exactly once.

SMS has no platform dedupe, so an in-doubt batch must end *unknown* and never be re-sent;
WeCom customer results come only by polling, per customer.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sqlalchemy import func, select, update

from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.storage.models import Batch
from tests.approval import approve
from tests.conftest import drain
from tests.integration.test_sms_tencent import CONTENT, make_account
from tests.integration.test_wecom_customer import make_corp


def wait(c: Container, campaign_id: int, timeout: float = 30.0, poll: bool = False) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        drain(c, rounds=1)
        if poll:
            c.reconciler.settle_accepted(0)
        status = c.campaigns.status(campaign_id)
        if status["state"] in ("done", "failed", "paused"):
            return status
        time.sleep(0.05)
    raise AssertionError(c.campaigns.status(campaign_id))


def phones_csv(path: Path, n: int, bad: int = 0) -> Path:
    lines = ["phone,name"] + [f"138 {i:04d} {i:04d},客户{i}" for i in range(n)]
    lines += [f"12345,坏号{i}" for i in range(bad)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_import_reports_bad_rows_and_keeps_the_good(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, tmp_path: Path
) -> None:
    app = make_account(admin, container, sandbox)
    report = container.contacts.import_csv(app, phones_csv(tmp_path / "p.csv", 500, bad=3))
    assert (report.rows, report.imported, report.rejected) == (503, 500, 3)
    assert report.errors_file is not None
    errors = report.errors_file.read_text(encoding="utf-8").splitlines()
    assert errors[0] == "row,column,value,reason" and len(errors) == 4
    assert errors[1].startswith("502,phone,12345,")  # row number counts the header line
    again = container.contacts.import_csv(app, phones_csv(tmp_path / "p2.csv", 500))
    assert again.new == 0 and again.imported == 500 and again.errors_file is None  # idempotent


def test_sms_campaign_sends_each_number_once(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, tmp_path: Path
) -> None:
    app = make_account(admin, container, sandbox)
    container.contacts.import_csv(app, phones_csv(tmp_path / "p.csv", 450))
    camp = container.campaigns.create(
        name="短信", channel="sms_tencent", account=app, audience="all", content=CONTENT
    )
    approve(container, camp.id)  # the link qf.example is off the allow-list: review
    report = container.campaigns.start(camp.id)
    assert report is not None and (report.recipients, report.batches) == (450, 3)  # 200 a call
    status = wait(container, camp.id)
    assert status["state"] == "done" and status["deliveries"] == {"sent": 450}
    ledger = admin.ledger("sms_tencent", app)
    assert ledger["messages"] == 450 and ledger["max_per_recipient"] == 1


def test_marketing_sms_without_opt_out_is_refused_before_sending(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    import pytest

    from qunfa.services.campaigns import CampaignError

    app = make_account(admin, container, sandbox)
    no_opt_out = {**CONTENT, "text": "双十一全场5折"}
    with pytest.raises(CampaignError, match="回T退订"):
        container.campaigns.create(
            name="x", channel="sms_tencent", account=app, audience="all", content=no_opt_out
        )


def test_in_doubt_sms_batch_is_unknown_and_never_resent(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox, tmp_path: Path
) -> None:
    app = make_account(admin, container, sandbox)
    container.contacts.import_csv(app, phones_csv(tmp_path / "p.csv", 150))
    camp = container.campaigns.create(
        name="doubt", channel="sms_tencent", account=app, audience="all", content=CONTENT
    )
    approve(container, camp.id)  # the link qf.example is off the allow-list: review
    container.campaigns.start(camp.id)
    container.settings.http_timeout = 0.5
    admin.faults(platform="sms_tencent", accept_then_timeout_rate=1.0, hang_seconds=2)
    drain(container, rounds=1)  # the platform sends, the answer never arrives
    admin.clear_faults()
    container.settings.http_timeout = 5.0
    status = wait(container, camp.id)
    assert status["state"] == "done" and status["deliveries"] == {"unknown": 150}
    with container.sessions() as s:
        batch = s.scalars(select(Batch).where(Batch.campaign_id == camp.id)).one()
    assert batch.state == "unknown" and batch.attempts == 2 and "no dedupe" in str(batch.last_error)
    assert admin.ledger("sms_tencent", app)["max_per_recipient"] == 1  # sent once, not twice


def test_wecom_customer_sync_and_campaign_settle_per_customer(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    corp = make_corp(admin, container, sandbox.url, customers=60, staff=3)
    sync = asyncio.run(container.accounts.sync(corp.corpid))
    assert sync.followers == 60 and sync.new == 60
    camp = container.campaigns.create(
        name="客户群发", channel="wecom_customer", account=corp.corpid, audience="all",
        content={"text": {"content": "年终回馈，点击领取"}},
    )  # fmt: skip
    container.campaigns.start(camp.id)
    status = wait(container, camp.id, poll=True)
    assert status["state"] == "done" and status["deliveries"] == {"sent": 60}
    ledger = admin.ledger("wecom_customer", corp.corpid)
    assert ledger["messages"] == 60 and ledger["max_per_recipient"] == 1
    with container.sessions() as s:
        polled = s.scalar(select(func.count()).where(Batch.polled_at.is_not(None)))
    assert polled == 1


def test_wecom_customer_in_doubt_is_unknown(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    corp = make_corp(admin, container, sandbox.url, customers=20, staff=2)
    asyncio.run(container.accounts.sync(corp.corpid))
    camp = container.campaigns.create(
        name="doubt", channel="wecom_customer", account=corp.corpid, audience="all",
        content={"text": {"content": "年终回馈"}},
    )  # fmt: skip
    container.campaigns.start(camp.id)
    with container.sessions() as s:  # as if the worker died mid-call
        s.execute(
            update(Batch)
            .where(Batch.campaign_id == camp.id)
            .values(state="sending", lease_expires_at=time.time() - 1, enqueued_at=None,
                    first_attempt_at=time.time() - 5, attempts=1)
        )  # fmt: skip
        s.commit()
    container.queued.clear()  # type: ignore[attr-defined]
    status = wait(container, camp.id)
    assert status["deliveries"] == {"unknown": 20}
    assert admin.ledger("wecom_customer", corp.corpid)["messages"] == 0


def test_wecom_staff_who_have_not_sent_are_shown_reminded_and_cancelled(
    container: Container, admin: SandboxAdmin, sandbox: EmbeddedSandbox
) -> None:
    # Nobody confirms: every member's task stays open until reminded or cancelled.
    corp = make_corp(admin, container, sandbox.url, customers=40, staff=4, confirm_rate=0.0)
    asyncio.run(container.accounts.sync(corp.corpid))
    camp = container.campaigns.create(
        name="提醒", channel="wecom_customer", account=corp.corpid, audience="all",
        content={"text": {"content": "年终回馈"}}, options={"remind_every_hours": 0.0001},
    )  # fmt: skip
    container.campaigns.start(camp.id)
    drain(container, rounds=1)
    container.reconciler.settle_accepted(0)
    status = container.campaigns.status(camp.id)
    assert status["state"] == "sending" and status["deliveries"] == {"sending": 40}
    senders = container.tasks.senders(camp.id)
    assert len(senders) == 4 and not any(s.sent for s in senders)
    reminded = 0
    for _ in range(6):  # the schedule asks every 0.36 s; the platform allows 3 a day
        time.sleep(0.4)
        reminded += container.tasks.remind_due()
    assert reminded == 3 and container.tasks.reminders(camp.id) == 3
    container.campaigns.cancel(camp.id)
    status = container.campaigns.status(camp.id)
    assert status["state"] == "cancelled" and status["deliveries"] == {"failed": 40}
    assert admin.ledger("wecom_customer", corp.corpid)["messages"] == 0


def test_campaign_options_are_validated(container: Container, admin: SandboxAdmin,
                                        sandbox: EmbeddedSandbox) -> None:  # fmt: skip
    import pytest

    from qunfa.services.campaigns import CampaignError

    corp = make_corp(admin, container, sandbox.url, customers=5, staff=1)
    for bad, message in (({"remind_every": 1}, "unknown campaign option"),
                         ({"remind_every_hours": -1}, "positive")):  # fmt: skip
        with pytest.raises(CampaignError, match=message):
            container.campaigns.create(
                name="x", channel="wecom_customer", account=corp.corpid, audience="all",
                content={"text": {"content": "x"}}, options=bad,
            )  # fmt: skip
