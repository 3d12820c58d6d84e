"""The feishu adapter against its sandbox twin, over real HTTP.

Each test sends through the adapter as the engine does, checks the classification of Feishu's
``{"code", "msg"}`` answers, and reads the sandbox ledger for what users actually received.
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
from qunfa.channels.feishu import Feishu
from qunfa.channels.http import HttpClient
from qunfa.domain.outcomes import BatchOutcome, ErrorClass
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.feishu import open_ids
from qunfa.sandbox.server import EmbeddedSandbox

T = TypeVar("T")
TEXT = {"msg_type": "text", "content": {"text": "飞书通知"}}


@dataclass
class Tenant:
    app_id: str
    users: list[str]


def make_tenant(
    admin: SandboxAdmin,
    c: Container,
    url: str,
    *,
    users: int = 30,
    sandbox_rules: dict[str, int] | None = None,
    qunfa_rules: dict[str, int] | None = None,
    **extra: Any,
) -> Tenant:
    app_id, secret = f"cli_{secrets.token_hex(8)}", secrets.token_hex(16)
    spec = {"app_id": app_id, "app_secret": secret, "users": users, "seed": 3,
            "job_delay_seconds": 0.05, "rules": sandbox_rules or {}, **extra}  # fmt: skip
    admin.create_account("feishu", **spec)
    c.accounts.add(
        channel="feishu",
        app_id=app_id,
        credentials={"app_id": app_id, "app_secret": secret},
        base_url=f"{url}/feishu",
        settings={"rules": qunfa_rules} if qunfa_rules else None,
    )
    return Tenant(app_id, open_ids(app_id, 3, users))


@pytest.fixture
def tenant(admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox) -> Tenant:
    return make_tenant(admin, container, sandbox.url)


def run(fn: Callable[[Feishu], Awaitable[T]], c: Container, t: Tenant, timeout: float = 5) -> T:
    async def main() -> T:
        async with HttpClient(timeout) as http:
            adapter = c.accounts.adapter(c.accounts.get(t.app_id), http)
            assert isinstance(adapter, Feishu)
            return await fn(adapter)

    return asyncio.run(main())


def send(c: Container, t: Tenant, users: list[str], content: Any = TEXT) -> BatchOutcome:
    b = OutboundBatch("camp", 0, "qf-camp-0", "list", content, users)
    return run(lambda a: a.send_batch(b), c, t)


def settle(c: Container, t: Tenant, message_id: str | None) -> Settlement:
    assert message_id
    for _ in range(50):
        result = run(lambda a: a.settle(message_id), c, t)
        assert result is not None
        if result.final:
            return result
        time.sleep(0.05)
    raise AssertionError("batch never settled")


def test_batch_send_is_accepted_and_settles(
    container: Container, tenant: Tenant, admin: SandboxAdmin
) -> None:
    out = send(container, tenant, tenant.users[:20])
    assert out.accepted and str(out.platform_msg_id).startswith("bm-") and not out.done
    assert not out.recipient_failures
    assert admin.ledger("feishu", tenant.app_id)["messages"] == 20
    result = settle(container, tenant, out.platform_msg_id)
    assert result.ok and result.counts["total"] == 20 and result.counts["sent"] == 20
    reads = run(lambda a: a.read_counts(str(out.platform_msg_id)), container, tenant)
    assert reads["total_count"] == 20 and 0 < reads["read_count"] < 20


def test_invalid_open_ids_are_recipient_failures(
    container: Container, tenant: Tenant, admin: SandboxAdmin
) -> None:
    out = send(container, tenant, [*tenant.users[:3], "ou_nobody"])
    assert out.accepted and set(out.recipient_failures) == {"ou_nobody"}
    assert out.recipient_failures["ou_nobody"].klass is ErrorClass.RECIPIENT
    assert admin.ledger("feishu", tenant.app_id)["messages"] == 3


def test_no_valid_open_id_at_all_is_11101(container: Container, tenant: Tenant) -> None:
    out = send(container, tenant, ["ou_a", "ou_b"])
    assert out.error is not None and out.error.code == 11101


def test_progress_is_zero_until_scheduled(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    slow = make_tenant(admin, container, sandbox.url, job_delay_seconds=30)
    out = send(container, slow, slow.users[:3])
    result = run(lambda a: a.settle(str(out.platform_msg_id)), container, slow)
    assert result is not None and not result.final and result.counts["total"] == 0


def test_bot_invisible_users_end_the_poll_after_the_rule_time(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    hidden = make_tenant(admin, container, sandbox.url, invisible_rate=0.5,
                         qunfa_rules={"progress_final_after_seconds": 0})  # fmt: skip
    out = send(container, hidden, hidden.users[:20])
    result = settle(container, hidden, out.platform_msg_id)
    assert result.counts["total"] == 20 and 0 < result.counts["sent"] < 20
    assert admin.ledger("feishu", hidden.app_id)["messages"] == result.counts["sent"]


def test_daily_quota_is_11247_until_the_next_day(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    t = make_tenant(admin, container, sandbox.url, sandbox_rules={"messages_per_day": 10})
    assert send(container, t, t.users[:8]).accepted
    out = send(container, t, t.users[8:11])  # 8 + 3 > 10: refused whole
    assert out.error is not None and out.error.code == 11247
    assert out.error.klass is ErrorClass.QUOTA
    assert out.error.retry_after is not None and 0 < out.error.retry_after <= 86400 + 5
    admin.advance_clock(86400)
    assert send(container, t, t.users[8:11]).accepted
    assert admin.ledger("feishu", t.app_id)["messages"] == 11


def test_rate_limit_is_99991400_retryable(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    t = make_tenant(admin, container, sandbox.url, sandbox_rules={"requests_per_minute": 2})
    for n in range(2):
        assert send(container, t, t.users[n : n + 1]).accepted
    out = send(container, t, t.users[2:3])
    assert out.error is not None and out.error.code == 99991400
    assert out.error.klass is ErrorClass.RETRYABLE and out.error.retry_after == 1


def test_qunfa_limiter_keeps_under_the_per_second_limit(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    # The platform allows 5/s; qunfa paces at 2/s. The margin covers scheduling jitter: a
    # window's calls delayed under load can reach the server together with the next window's
    # (2 + 2 <= 5; at 3/s, 3 + 3 would not be).
    t = make_tenant(admin, container, sandbox.url, sandbox_rules={"requests_per_second": 5},
                    qunfa_rules={"requests_per_second": 2})  # fmt: skip

    async def burst(a: Feishu) -> list[BatchOutcome]:
        batches = [OutboundBatch("c", n, f"k{n}", "list", TEXT, [t.users[n]]) for n in range(7)]
        return list(await asyncio.gather(*(a.send_batch(b) for b in batches)))

    run(lambda a: a.ctx.tokens.get(a.account.id, a._fetch_token), container, t)  # token first
    started = time.monotonic()
    outcomes = run(burst, container, t)
    assert [o.error for o in outcomes if not o.accepted] == []
    assert time.monotonic() - started >= 3.0  # 7 calls at 2/s need four windows


def test_account_problems_are_account_errors(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    for spec, code in (({"bot": False}, 11205), ({"batch_permission": False}, 11203)):
        t = make_tenant(admin, container, sandbox.url, **spec)
        out = send(container, t, t.users[:1])
        assert out.error is not None and out.error.code == code
        assert out.error.klass is ErrorClass.ACCOUNT


def test_bad_secret_is_an_account_error(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    t = make_tenant(admin, container, sandbox.url)
    container.accounts.add(channel="feishu", app_id=t.app_id, base_url=f"{sandbox.url}/feishu",
                           credentials={"app_id": t.app_id, "app_secret": "nope"})  # fmt: skip
    out = send(container, t, t.users[:1])
    assert out.error is not None and out.error.code == 10014
    assert out.error.klass is ErrorClass.ACCOUNT


@pytest.mark.parametrize(
    ("content", "code"),
    [
        ({"msg_type": "text", "content": {"body": "x"}}, 11246),
        ({"msg_type": "image", "content": {"image_key": "bad"}}, 11227),
        ({"msg_type": "text", "content": {"text": "含违禁词"}}, 11312),
        ({"msg_type": "text", "content": '{"text": "a string"}'}, 10003),
    ],
)
def test_content_errors_are_batch_errors(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox, content: Any, code: int
) -> None:
    t = make_tenant(admin, container, sandbox.url, blocked_words=["违禁"])
    b = OutboundBatch("camp", 0, "k", "list", {"msg_type": "text"}, t.users[:1])

    async def raw(a: Feishu) -> Any:  # content as given, bypassing send_batch's shaping
        return await a.call("POST", "message/v4/batch_send/",
                            {**content, "open_ids": list(b.recipients)})  # fmt: skip

    with pytest.raises(Exception) as info:
        run(raw, container, t)
    error = info.value.error  # type: ignore[attr-defined]
    assert error.code == code and error.klass is ErrorClass.BATCH


def test_content_validation() -> None:
    r = rules.load("feishu")
    Feishu.validate_content(TEXT, r)
    Feishu.validate_content({"msg_type": "interactive", "card": {"elements": []}}, r)
    for bad in (
        {"msg_type": "audio"},
        {"msg_type": "text", "content": '{"text": "x"}'},
        {"msg_type": "post", "content": {}},
        {"msg_type": "interactive"},
    ):
        with pytest.raises(ContentError):
            Feishu.validate_content(bad, r)
    assert Feishu.batch_size(r, "list") == 200
    assert not Feishu.idempotent and Feishu.resend_window(r, 3600) == 0


def test_revoked_token_is_refetched_once(
    container: Container, tenant: Tenant, admin: SandboxAdmin
) -> None:
    assert send(container, tenant, tenant.users[:1]).accepted
    admin.faults(revoke_tokens=True)
    before = container.tokens.fetches
    assert send(container, tenant, tenant.users[1:2]).accepted
    assert container.tokens.fetches == before + 1


def test_injected_faults_use_feishu_shaped_errors(
    container: Container, tenant: Tenant, admin: SandboxAdmin
) -> None:
    send(container, tenant, tenant.users[:1])  # token first
    admin.faults(platform="feishu", error_rate=1.0, errcode=10002, errmsg="send fail",
                 paths=["batch_send"])  # fmt: skip
    out = send(container, tenant, tenant.users[1:2])
    assert out.error is not None and out.error.code == 10002 and out.error.message == "send fail"
    assert out.error.klass is ErrorClass.RETRYABLE
    admin.faults(platform="feishu", error_rate=1.0, errcode=11247, paths=["batch_send"])
    out = send(container, tenant, tenant.users[1:2])
    assert out.error is not None and out.error.klass is ErrorClass.QUOTA
    admin.faults(platform="feishu", accept_then_timeout_rate=1.0, hang_seconds=3)
    b = OutboundBatch("camp", 1, "k1", "list", TEXT, tenant.users[2:5])
    out = run(lambda a: a.send_batch(b), container, tenant, timeout=1.0)
    assert out.in_doubt and admin.ledger("feishu", tenant.app_id)["messages"] == 4
