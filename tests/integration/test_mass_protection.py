"""API mass-send protection (风险操作保护, issue 6 item 7) against the sandbox over HTTP.

The twin plays the Official Account's admin: a send to all waits for a confirmation; refused
gives MASSSENDJOBFINISH ``err(40001)``, no answer within 30 minutes ``err(40002)``. qunfa records
the batch as failed with the reason, never re-sends it, and the campaign says why.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from qunfa.api.app import create_app
from qunfa.api.server import ServerThread
from qunfa.bootstrap import Container
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.storage.models import Batch
from tests.approval import approve
from tests.conftest import OA, drain, make_oa


@pytest.fixture
def api(container: Container) -> Iterator[ServerThread]:
    server = ServerThread(create_app(container)).start()
    yield server
    server.stop()


@pytest.fixture
def oa(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox, api: ServerThread
) -> OA:
    oa = make_oa(admin, container, sandbox.url, followers=50, callback_url="pending")
    admin.create_wechat_account(
        appid=oa.appid, secret=oa.secret, type="service", followers=50, tags={"VIP": 0.1},
        token=oa.token, encoding_aes_key=oa.aes_key, job_delay_seconds=0.05,
        callback_url=f"{api.url}/callbacks/wechat/{oa.appid}",
    )  # fmt: skip
    return oa


def send_to_all(c: Container, oa: OA, text: str) -> tuple[int, str]:
    camp = c.campaigns.create(
        name=text, channel="wechat_oa", account=oa.appid, audience="all",
        content={"msgtype": "text", "text": {"content": text}},
    )  # fmt: skip
    approve(c, camp.id)
    c.campaigns.start(camp.id)
    drain(c)
    with c.sessions() as s:
        batch = s.scalars(select(Batch).where(Batch.campaign_id == camp.id)).one()
    assert batch.state == "accepted" and batch.platform_msg_id
    return camp.id, batch.platform_msg_id


def wait_state(c: Container, cid: int, timeout: float = 15.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = c.campaigns.status(cid)
        if status["state"] in ("done", "failed"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"campaign {cid} not finished: {c.campaigns.status(cid)}")


def batch_of(c: Container, cid: int) -> Batch:
    with c.sessions() as s:
        return s.scalars(select(Batch).where(Batch.campaign_id == cid)).one()


def test_admin_refuses_then_does_not_answer_then_confirms(
    container: Container, oa: OA, admin: SandboxAdmin
) -> None:
    c = container
    path = f"/_sandbox/wechat/accounts/{oa.appid}/protection"
    assert admin.post(path, {"enabled": True, "policy": "manual"})["enabled"] is True

    # 1. refused by the admin → err(40001)
    cid, msg_id = send_to_all(c, oa, "第一次群发")
    time.sleep(0.3)
    assert admin.get(path)["jobs"][0]["state"] == "waiting"
    assert c.campaigns.status(cid)["state"] == "sending"  # waits for the admin
    assert admin.post(f"/_sandbox/wechat/mass/{msg_id}/refuse")["state"] == "refused"
    status = wait_state(c, cid)
    b = batch_of(c, cid)
    assert (b.state, b.last_errcode, b.platform_status) == ("failed", "40001", "err(40001)")
    assert "admin refused" in str(status["last_error"])
    assert admin.ledger("wechat_oa", oa.appid)["messages"] == 0  # nobody got it
    drain(c)  # a failed batch is never re-sent
    assert batch_of(c, cid).attempts == 1

    # 2. no answer within 30 minutes → err(40002)
    cid, msg_id = send_to_all(c, oa, "第二次群发")
    admin.advance_clock(1801)
    status = wait_state(c, cid)
    assert batch_of(c, cid).last_errcode == "40002"
    assert "did not confirm" in str(status["last_error"])

    # 3. an admin who confirms after a delay: the job completes normally
    admin.post(path, {"enabled": True, "policy": "confirm", "delay_seconds": 60})
    cid, msg_id = send_to_all(c, oa, "第三次群发")
    admin.advance_clock(61)
    wait_state(c, cid)
    b = batch_of(c, cid)
    assert (b.state, b.platform_status) == ("done", "send success")
    assert admin.ledger("wechat_oa", oa.appid)["messages"] == 50


def test_list_sends_are_not_held(container: Container, oa: OA, admin: SandboxAdmin) -> None:
    admin.post(f"/_sandbox/wechat/accounts/{oa.appid}/protection", {"policy": "manual"})
    camp = container.campaigns.create(
        name="list", channel="wechat_oa", account=oa.appid, audience="all", as_list=True,
        content={"msgtype": "text", "text": {"content": "列表群发"}},
    )  # fmt: skip
    approve(container, camp.id)
    container.campaigns.start(camp.id)
    drain(container)
    assert wait_state(container, camp.id)["state"] == "done"
    assert admin.get(f"/_sandbox/wechat/accounts/{oa.appid}/protection")["jobs"] == []
