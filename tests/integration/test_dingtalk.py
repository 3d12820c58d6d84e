"""The dingtalk adapter against its sandbox twin, over real HTTP.

Each test sends through the adapter as the engine does, checks how the answer is classified, and
reads the sandbox ledger for what employees actually received. DingTalk's limits are silent: the
call succeeds and over-limit employees appear only in getsendresult's forbidden list.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from qunfa import rules
from qunfa.bootstrap import Container
from qunfa.channels.base import ContentError, OutboundBatch, Settlement
from qunfa.channels.dingtalk import DingTalk
from qunfa.channels.http import HttpClient
from qunfa.domain.outcomes import BatchOutcome, ErrorClass
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox

T = TypeVar("T")
TEXT = {"msgtype": "text", "text": {"content": "季度会议通知"}}


@dataclass
class Corp:
    app_id: str
    appkey: str
    userids: list[str]


def make_corp(
    admin: SandboxAdmin,
    c: Container,
    url: str,
    *,
    employees: int = 30,
    agent_id: int = 4242,
    sandbox_rules: dict[str, int] | None = None,
    qunfa_rules: dict[str, int] | None = None,
    **extra: Any,
) -> Corp:
    appkey, secret = f"ding{secrets.token_hex(6)}", secrets.token_hex(16)
    spec = {"appkey": appkey, "appsecret": secret, "agent_id": 4242, "employees": employees,
            "seed": 7, "job_delay_seconds": 0.05, "rules": sandbox_rules or {},
            **extra}  # fmt: skip
    admin.create_account("dingtalk", **spec)
    app_id = f"{appkey}:{agent_id}"
    c.accounts.add(
        channel="dingtalk",
        app_id=app_id,
        credentials={"appkey": appkey, "appsecret": secret, "agent_id": str(agent_id)},
        base_url=f"{url}/dingtalk",
        settings={"rules": qunfa_rules} if qunfa_rules else None,
    )
    ids = admin.get(f"/_sandbox/dingtalk/accounts/{appkey}/employees?limit={employees}")
    return Corp(app_id, appkey, ids["userids"])


@pytest.fixture
def corp(admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox) -> Corp:
    return make_corp(admin, container, sandbox.url, read_rate=0.5)


def run(fn: Callable[[DingTalk], Awaitable[T]], c: Container, corp: Corp, timeout: float = 5) -> T:
    async def main() -> T:
        async with HttpClient(timeout) as http:
            adapter = c.accounts.adapter(c.accounts.get(corp.app_id), http)
            assert isinstance(adapter, DingTalk)
            return await fn(adapter)

    return asyncio.run(main())


def send(c: Container, corp: Corp, users: list[str], content: Any = TEXT) -> BatchOutcome:
    b = OutboundBatch("camp", 0, "qf-camp-0", "list", content, users)
    return run(lambda a: a.send_batch(b), c, corp)


def settle(c: Container, corp: Corp, task_id: str | None) -> Settlement:
    assert task_id
    for _ in range(50):
        result = run(lambda a: a.settle(task_id), c, corp)
        assert result is not None
        if result.final:
            return result
        time.sleep(0.05)
    raise AssertionError("task never finished")


def test_send_is_async_and_settles_per_recipient(
    container: Container, corp: Corp, admin: SandboxAdmin
) -> None:
    out = send(container, corp, corp.userids[:20])
    assert out.accepted and out.platform_msg_id and not out.done
    assert admin.ledger("dingtalk", corp.appkey)["messages"] == 20
    result = settle(container, corp, out.platform_msg_id)
    assert result.ok and result.counts == {"total": 20, "sent": 20, "error": 0}
    assert {o.status for o in result.recipients.values()} == {"sent"}
    reads = [u for u, o in result.recipients.items() if o.reason == "read"]
    assert 0 < len(reads) < 20  # read_rate 0.5 splits read / unread


def test_progress_before_the_task_is_done_is_not_final(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    slow = make_corp(admin, container, sandbox.url, job_delay_seconds=30)
    out = send(container, slow, slow.userids[:3])
    result = run(lambda a: a.settle(str(out.platform_msg_id)), container, slow)
    assert result is not None and not result.final and result.status.startswith("processing")


def test_unknown_userids_are_invalid_and_not_delivered(
    container: Container, corp: Corp, admin: SandboxAdmin
) -> None:
    out = send(container, corp, [*corp.userids[:2], "nobody1", "nobody2"])
    assert out.accepted
    result = settle(container, corp, out.platform_msg_id)
    assert result.recipients["nobody1"].status == "failed"
    assert result.recipients["nobody1"].reason == "invalid userid"
    assert result.counts["error"] == 2
    assert admin.ledger("dingtalk", corp.appkey)["messages"] == 2


def test_same_content_twice_a_day_is_a_silent_drop(
    container: Container, corp: Corp, admin: SandboxAdmin
) -> None:
    users = corp.userids[:5]
    assert send(container, corp, users).accepted
    again = send(container, corp, users)
    assert again.accepted and again.error is None  # the platform says success …
    result = settle(container, corp, again.platform_msg_id)
    assert {o.status for o in result.recipients.values()} == {"failed"}  # … and drops them all
    assert all("same content" in str(o.reason) for o in result.recipients.values())
    assert not result.ok
    assert admin.ledger("dingtalk", corp.appkey)["max_per_recipient"] == 1
    admin.advance_clock(86400)  # next day: the same content goes through again
    assert settle(container, corp, send(container, corp, users).platform_msg_id).ok
    assert admin.ledger("dingtalk", corp.appkey)["max_per_recipient"] == 2


def test_per_employee_daily_cap_is_a_silent_drop(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    capped = make_corp(admin, container, sandbox.url, sandbox_rules={"per_employee_per_day": 2})
    users = capped.userids[:3]
    for n in range(2):
        content = {"msgtype": "text", "text": {"content": f"通知 {n}"}}
        assert send(container, capped, users, content).accepted
    third = send(container, capped, users, {"msgtype": "text", "text": {"content": "通知 3"}})
    result = settle(container, capped, third.platform_msg_id)
    assert all("daily limit" in str(o.reason) for o in result.recipients.values())
    assert admin.ledger("dingtalk", capped.appkey)["max_per_recipient"] == 2


def test_departed_employees_are_in_the_failed_list(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    gone = make_corp(admin, container, sandbox.url, fail_rate=1.0)
    result = settle(container, gone, send(container, gone, gone.userids[:4]).platform_msg_id)
    assert {o.reason for o in result.recipients.values()} == {"delivery failed"}
    assert admin.ledger("dingtalk", gone.appkey)["messages"] == 0


def test_recipients_per_minute_is_143103_retryable_after_a_minute(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    busy = make_corp(admin, container, sandbox.url, sandbox_rules={"recipients_per_minute": 10})
    assert send(container, busy, busy.userids[:8]).accepted
    out = send(container, busy, busy.userids[8:16])
    assert out.error is not None and out.error.code == 143103
    assert out.error.klass is ErrorClass.RETRYABLE and out.error.retry_after == 60
    assert admin.ledger("dingtalk", busy.appkey)["messages"] == 8


def test_list_over_the_per_call_limit_is_a_batch_error(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    assert DingTalk.batch_size(rules.load("dingtalk"), "list") == 5000
    small = make_corp(admin, container, sandbox.url, sandbox_rules={"userids_per_call": 5})
    out = send(container, small, small.userids[:6])
    assert out.error is not None and out.error.code == 40035
    assert out.error.klass is ErrorClass.BATCH


def test_content_validation_and_the_size_limit() -> None:
    r = rules.load("dingtalk")
    DingTalk.validate_content(TEXT, r)
    card = {"msgtype": "action_card", "action_card": {"title": "t", "markdown": "m"}}
    for bad in ({"msgtype": "sms"}, {"msgtype": "markdown", "markdown": {"title": "t"}}, card):
        with pytest.raises(ContentError):
            DingTalk.validate_content(bad, r)
    with pytest.raises(ContentError, match="2048"):
        DingTalk.validate_content({"msgtype": "text", "text": {"content": "长" * 700}}, r)


def test_oversized_message_sent_anyway_is_a_batch_error(container: Container, corp: Corp) -> None:
    out = send(
        container, corp, corp.userids[:2], {"msgtype": "text", "text": {"content": "x" * 3000}}
    )
    assert out.error is not None and out.error.klass is ErrorClass.BATCH


def test_revoked_token_is_refetched_once(
    container: Container, corp: Corp, admin: SandboxAdmin
) -> None:
    assert send(container, corp, corp.userids[:1]).accepted
    admin.faults(revoke_tokens=True)
    before = container.tokens.fetches
    other = {"msgtype": "text", "text": {"content": "第二条"}}
    assert send(container, corp, corp.userids[:1], other).accepted
    assert container.tokens.fetches == before + 1


def test_bad_secret_is_an_account_error(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    corp = make_corp(admin, container, sandbox.url)
    container.accounts.add(
        channel="dingtalk", app_id=corp.app_id, base_url=f"{sandbox.url}/dingtalk",
        credentials={"appkey": corp.appkey, "appsecret": "wrong", "agent_id": "4242"},
    )  # fmt: skip
    out = send(container, corp, corp.userids[:1])
    assert out.error is not None and out.error.code == 40089
    assert out.error.klass is ErrorClass.ACCOUNT


def test_wrong_agent_and_missing_permission_are_account_errors(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    wrong = make_corp(admin, container, sandbox.url, agent_id=1)
    out = send(container, wrong, wrong.userids[:1])
    assert out.error is not None and out.error.code == 40056
    assert out.error.klass is ErrorClass.ACCOUNT
    denied = make_corp(admin, container, sandbox.url, send_permission=False)
    out = send(container, denied, denied.userids[:1])
    assert out.error is not None and out.error.code == 60011  # errcode 88, sub_code 60011
    assert out.error.klass is ErrorClass.ACCOUNT


@pytest.mark.parametrize(
    ("errcode", "klass", "wait"),
    [
        (-1, ErrorClass.RETRYABLE, None),
        (143104, ErrorClass.RETRYABLE, 60),
        (88, ErrorClass.ACCOUNT, None),
    ],
)
def test_injected_errcodes_are_classified(
    container: Container, corp: Corp, admin: SandboxAdmin, errcode: int, klass: ErrorClass,
    wait: float | None,
) -> None:  # fmt: skip
    send(container, corp, corp.userids[:1])  # token fetched before the fault
    admin.faults(platform="dingtalk", error_rate=1.0, errcode=errcode, paths=["asyncsend_v2"])
    out = send(container, corp, corp.userids[1:2])
    assert out.error is not None and out.error.code == errcode
    assert out.error.klass is klass and out.error.retry_after == wait
    assert admin.ledger("dingtalk", corp.appkey)["messages"] == 1


def test_http_503_is_retryable_and_not_in_doubt(
    container: Container, corp: Corp, admin: SandboxAdmin
) -> None:
    admin.faults(platform="dingtalk", error_rate=1.0, http_status=503)
    out = send(container, corp, corp.userids[:1])
    assert out.error is not None and out.error.klass is ErrorClass.RETRYABLE and not out.in_doubt


def test_accept_then_timeout_is_in_doubt_and_never_resent(
    container: Container, corp: Corp, admin: SandboxAdmin
) -> None:
    send(container, corp, corp.userids[:1])  # token first
    admin.faults(platform="dingtalk", accept_then_timeout_rate=1.0, hang_seconds=3,
                 paths=["asyncsend_v2"])  # fmt: skip
    b = OutboundBatch("camp", 1, "qf-camp-1", "list", TEXT, corp.userids[1:4])
    out = run(lambda a: a.send_batch(b), container, corp, timeout=1.0)
    assert out.in_doubt and out.error is not None and out.error.klass is ErrorClass.RETRYABLE
    assert admin.ledger("dingtalk", corp.appkey)["messages"] == 4  # it did go out
    # No dedupe key: the engine must not re-send an in-doubt DingTalk batch.
    assert not DingTalk.idempotent and DingTalk.resend_window(rules.load("dingtalk"), 3600) == 0
    assert DingTalk.poll_interval == rules.load("dingtalk")["poll_interval_seconds"]
