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
    report = c.campaigns.start(camp.id)  # enqueues 20 batch tasks in Huey's SQLite queue
    assert report is not None and report.batches == 20
    # Slow every send down so kills land while calls are in flight.
    admin.faults(latency_ms=700, paths=["mass/send"])

    rng = random.Random(20261123)
    kills_in_flight = 0
    worker = None
    try:
        for _ in range(4):
            worker = subprocess.Popen(
                [QUNFA, "worker", "--threads", "3"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(1.5, 3.0))
            with c.sessions() as s:
                sending = s.scalar(
                    select(func.count()).where(
                        Batch.campaign_id == camp.id, Batch.state == "sending"
                    )
                )
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            kills_in_flight += int(bool(sending))
        admin.clear_faults()
        worker = subprocess.Popen(
            [QUNFA, "worker", "--threads", "3"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while c.campaigns.status(camp.id)["state"] != "done":
            if time.monotonic() > deadline:
                with c.sessions() as s:
                    rows = s.execute(
                        select(
                            Batch.batch_no,
                            Batch.state,
                            Batch.lease_expires_at,
                            Batch.enqueued_at,
                            Batch.attempts,
                            Batch.last_error,
                        ).where(Batch.state != "done")
                    ).all()
                raise AssertionError(f"stuck: {rows} now={time.time()}")
            time.sleep(0.5)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        api.stop()

    assert kills_in_flight >= 2, "the kills should land while batches are being sent"
    status = c.campaigns.status(camp.id)
    assert status["deliveries"] == {"sent": RECIPIENTS}
    with c.sessions() as s:
        retried = s.scalar(
            select(func.count()).where(Batch.campaign_id == camp.id, Batch.attempts > 1)
        )
        in_doubt = s.scalar(
            select(func.count()).where(Batch.campaign_id == camp.id, Batch.in_doubt.is_(True))
        )
    assert retried and retried > 0, "some batches must have been taken over after a kill"
    # Batches whose holder died mid-call were in doubt and settled by the platform's dedupe.
    assert in_doubt and in_doubt > 0
    ledger = admin.ledger("wechat_oa", appid)
    assert ledger["messages"] == RECIPIENTS
    assert ledger["recipients"] == RECIPIENTS
    assert ledger["max_per_recipient"] == 1
    c.close()
