"""Exactly once under kill -9: a 200,000-recipient campaign, the worker killed at random points.

The sandbox runs as its own process (its ledger is the witness), qunfa's worker runs as
another and is SIGKILLed several times mid-campaign, then restarted. Every platform call is
slowed down so kills land while calls are in flight. Afterwards the sandbox must show each
recipient received the message exactly once.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from qunfa.api.app import create_app
from qunfa.api.server import ServerThread
from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.settings import Settings
from qunfa.storage.models import Batch
from tests.approval import approve
from tests.conftest import aes_key

RECIPIENTS = 200_000
QUNFA = str(Path(sys.executable).with_name("qunfa"))
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sandbox_process(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [QUNFA, "sandbox", "--port", str(port), "--state", str(tmp_path / "sandbox.db")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    admin = SandboxAdmin(url, timeout=2)
    for _ in range(100):
        try:
            admin.get("/_sandbox/health")
            break
        except Exception:
            time.sleep(0.1)
    yield url
    proc.kill()
    proc.wait()


def worker_env(data_dir: Path, sandbox_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "QUNFA_DATA_DIR": str(data_dir),
        "QUNFA_SANDBOX_URL": sandbox_url,
        "QUNFA_LEASE_SECONDS": "3",
        "QUNFA_HTTP_TIMEOUT": "2.5",
        "QUNFA_SWEEP_INTERVAL": "0.3",
        "QUNFA_SETTLE_AFTER": "2",
        "QUNFA_RETRY_BASE": "0.2",
        "QUNFA_RETRY_MAX": "1",
        "QUNFA_LOG_LEVEL": "WARNING",
    }


def run_with_kills(
    c: Container, campaign_id: int, env: dict[str, str], admin: SandboxAdmin, seed: int
) -> int:
    """Start a worker, SIGKILL it at random moments four times, then let one finish.

    Returns how many kills landed while a batch was being sent.
    """
    rng = random.Random(seed)
    kills_in_flight = 0
    worker = None
    cmd = [QUNFA, "worker", "--threads", "3"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    try:
        for _ in range(4):
            worker = subprocess.Popen(cmd, env=env, **quiet)  # type: ignore[call-overload]
            time.sleep(rng.uniform(1.5, 3.0))
            with c.sessions() as s:
                sending = s.scalar(
                    select(func.count()).where(
                        Batch.campaign_id == campaign_id, Batch.state == "sending"
                    )
                )
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            kills_in_flight += int(bool(sending))
        admin.clear_faults()
        worker = subprocess.Popen(cmd, env=env, **quiet)  # type: ignore[call-overload]
        deadline = time.monotonic() + 120
        while c.campaigns.status(campaign_id)["state"] != "done":
            if time.monotonic() > deadline:
                with c.sessions() as s:
                    rows = s.execute(
                        select(Batch.batch_no, Batch.state, Batch.attempts, Batch.last_error).where(
                            Batch.campaign_id == campaign_id, Batch.state != "done"
                        )
                    ).all()
                raise AssertionError(f"not done after 120 s; open batches: {rows}")
            time.sleep(0.5)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
    return kills_in_flight


def batch_counts(c: Container, campaign_id: int) -> tuple[int, int]:
    with c.sessions() as s:
        retried = s.scalar(
            select(func.count()).where(Batch.campaign_id == campaign_id, Batch.attempts > 1)
        )
        in_doubt = s.scalar(
            select(func.count()).where(Batch.campaign_id == campaign_id, Batch.in_doubt.is_(True))
        )
    return int(retried or 0), int(in_doubt or 0)


def test_kill_9_during_a_200k_campaign_delivers_exactly_once(
    tmp_path: Path, sandbox_process: str
) -> None:
    data_dir = tmp_path / "data"
    env = worker_env(data_dir, sandbox_process)
    settings = Settings(
        data_dir=data_dir, sandbox_url=sandbox_process, lease_seconds=3, settle_after=2
    )
    c = Container(settings)
    c.migrate()
    api = ServerThread(create_app(c)).start()  # receives MASSSENDJOBFINISH
    admin = SandboxAdmin(sandbox_process)
    appid, secret, token, key = "wxcrash00000001", "s" * 32, "tok", aes_key()
    admin.create_wechat_account(
        appid=appid,
        secret=secret,
        type="service",
        followers=RECIPIENTS,
        token=token,
        encoding_aes_key=key,
        callback_url=f"{api.url}/callbacks/wechat/{appid}",
        job_delay_seconds=0.2,
        rules={"mass_calls_per_minute": 10_000},
    )
    c.accounts.add(
        channel="wechat_oa",
        app_id=appid,
        secret=secret,
        base_url=f"{sandbox_process}/wechat",
        token=token,
        encoding_aes_key=key,
        settings={"rules": {"mass_calls_per_minute": 10_000}},
    )
    asyncio.run(c.accounts.sync(appid))
    camp = c.campaigns.create(
        name="crash",
        channel="wechat_oa",
        account=appid,
        audience="all",
        content={"msgtype": "text", "text": {"content": "exactly once"}},
        as_list=True,
    )
    approve(c, camp.id)  # above the review threshold / a link to review
    report = c.campaigns.start(camp.id)  # enqueues 20 batch tasks in Huey's SQLite queue
    assert report is not None and report.batches == 20
    # Slow every send down so kills land while calls are in flight.
    admin.faults(latency_ms=700, paths=["mass/send"])
    try:
        kills_in_flight = run_with_kills(c, camp.id, env, admin, seed=20261123)
    finally:
        api.stop()
    assert kills_in_flight >= 2, "the kills should land while batches are being sent"
    assert c.campaigns.status(camp.id)["deliveries"] == {"sent": RECIPIENTS}
    retried, in_doubt = batch_counts(c, camp.id)
    assert retried > 0, "some batches must have been taken over after a kill"
    # Batches whose holder died mid-call were in doubt and settled by the platform's dedupe.
    assert in_doubt > 0
    ledger = admin.ledger("wechat_oa", appid)
    assert ledger["messages"] == RECIPIENTS
    assert ledger["recipients"] == RECIPIENTS
    assert ledger["max_per_recipient"] == 1
    c.close()


def check_no_dedupe_channel(c: Container, camp_id: int, admin: SandboxAdmin, channel: str,
                            account: str, total: int) -> None:  # fmt: skip
    """Without platform dedupe an in-doubt batch ends unknown: nobody gets it twice, every
    recipient marked sent did get it, and the unknown ones got it at most once."""
    d = c.campaigns.status(camp_id)["deliveries"]
    sent, unknown = d.get("sent", 0), d.get("unknown", 0)
    assert sent + unknown + d.get("failed", 0) == total, d
    assert unknown > 0, "kills mid-call must leave in-doubt batches, reported as unknown"
    ledger = admin.ledger(channel, account)
    assert ledger["max_per_recipient"] == 1  # never re-sent
    assert sent <= ledger["messages"] <= sent + unknown


def test_kill_9_during_an_sms_campaign_never_resends(tmp_path: Path, sandbox_process: str) -> None:
    data_dir = tmp_path / "data"
    env = worker_env(data_dir, sandbox_process)
    c = Container(Settings(data_dir=data_dir, sandbox_url=sandbox_process, lease_seconds=3))
    c.migrate()
    admin = SandboxAdmin(sandbox_process)
    app, sid, key, n = "1400555000", "AKIDcrash", "k" * 32, 20_000
    template = "会员日全场{1}折，回T退订"
    admin.create_account(
        "sms_tencent", sdk_app_id=app, secret_id=sid, secret_key=key, sign_name="qunfa",
        templates={"1001": template}, receipt_delay_seconds=3600.0,
    )  # fmt: skip
    c.accounts.add(
        channel="sms_tencent", app_id=app, base_url=f"{sandbox_process}/sms_tencent",
        credentials={"secret_id": sid, "secret_key": key, "sdk_app_id": app, "sign_name": "qunfa"},
    )  # fmt: skip
    phones = tmp_path / "phones.csv"
    phones.write_text("phone\n" + "".join(f"139{i:08d}\n" for i in range(n)), encoding="utf-8")
    assert c.contacts.import_csv(app, phones).imported == n
    camp = c.campaigns.create(
        name="sms crash", channel="sms_tencent", account=app, audience="all",
        content={"template_id": "1001", "params": ["8"], "text": "会员日全场8折，回T退订",
                 "category": "marketing"},
    )  # fmt: skip
    approve(c, camp.id)  # above the review threshold / a link to review
    report = c.campaigns.start(camp.id)
    assert report is not None and report.batches == 100  # 200 numbers a call
    admin.faults(platform="sms_tencent", latency_ms=250)
    assert run_with_kills(c, camp.id, env, admin, seed=7) >= 2
    check_no_dedupe_channel(c, camp.id, admin, "sms_tencent", app, n)
    c.close()


def test_kill_9_during_a_wecom_customer_campaign_never_resends(
    tmp_path: Path, sandbox_process: str
) -> None:
    data_dir = tmp_path / "data"
    env = {**worker_env(data_dir, sandbox_process), "QUNFA_SETTLE_AFTER": "1"}
    c = Container(Settings(data_dir=data_dir, sandbox_url=sandbox_process, lease_seconds=3))
    c.migrate()
    admin = SandboxAdmin(sandbox_process)
    corpid, secret, n = "wwcrash000000001", "c" * 32, 20_000
    small = {"customer_max_per_call": 500}  # 40 batches, so kills land mid-call
    admin.create_account(
        "wecom", corpid=corpid, secret=secret, staff=10, customers=n,
        confirm_delay_seconds=0.5, confirm_rate=1.0, rules=small,
    )  # fmt: skip
    c.accounts.add(
        channel="wecom_customer", app_id=corpid, base_url=f"{sandbox_process}/wecom",
        credentials={"corpid": corpid, "secret": secret}, settings={"rules": small},
    )  # fmt: skip
    assert asyncio.run(c.accounts.sync(corpid)).followers == n
    camp = c.campaigns.create(
        name="wecom crash", channel="wecom_customer", account=corpid, audience="all",
        content={"text": {"content": "年终回馈"}},
    )  # fmt: skip
    approve(c, camp.id)  # above the review threshold / a link to review
    report = c.campaigns.start(camp.id)
    assert report is not None and report.batches == 40
    admin.faults(platform="wecom", latency_ms=300, paths=["add_msg_template"])
    assert run_with_kills(c, camp.id, env, admin, seed=11) >= 2
    check_no_dedupe_channel(c, camp.id, admin, "wecom_customer", corpid, n)
    c.close()
