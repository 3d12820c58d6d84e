"""The webhook adapter against the sandbox receiver, over real HTTP.

The receiver verifies the signature with the sandbox clock, dedupes by Idempotency-Key and writes
each recipient to the ledger, so these tests check the contract from both ends.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from qunfa import rules
from qunfa.bootstrap import Container
from qunfa.channels.base import OutboundBatch
from qunfa.channels.http import HttpClient
from qunfa.channels.webhook import Webhook, sign
from qunfa.domain.outcomes import BatchOutcome, ErrorClass
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox

T = TypeVar("T")
PUSH = {"title": "新品上架", "body": "点击查看", "url": "https://example.com/p/1"}
USERS = [f"device-{n}" for n in range(7)]


@dataclass
class Endpoint:
    name: str
    secret: str
    url: str


def make_endpoint(
    admin: SandboxAdmin,
    c: Container,
    base: str,
    *,
    qunfa_rules: dict[str, int] | None = None,
    secret: str | None = None,
    **receiver: Any,
) -> Endpoint:
    name, real = f"app-push-{secrets.token_hex(4)}", secrets.token_hex(16)
    admin.create_account("webhook", name=name, secret=real, **receiver)
    ep = Endpoint(name, real, f"{base}/webhook/receive/{name}")
    c.accounts.add(
        channel="webhook",
        app_id=name,
        credentials={"url": ep.url, "secret": secret or real},
        settings={"rules": qunfa_rules} if qunfa_rules else None,
    )
    return ep


@pytest.fixture
def ep(admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox) -> Endpoint:
    return make_endpoint(admin, container, sandbox.url)


def run(fn: Callable[[Webhook], Awaitable[T]], c: Container, ep: Endpoint, timeout: float = 5) -> T:
    async def main() -> T:
        async with HttpClient(timeout) as http:
            adapter = c.accounts.adapter(c.accounts.get(ep.name), http)
            assert isinstance(adapter, Webhook)
            return await fn(adapter)

    return asyncio.run(main())


def send(
    c: Container, ep: Endpoint, users: list[str], key: str = "qf-c-0", **kw: Any
) -> BatchOutcome:
    b = OutboundBatch("c", 0, key, "list", PUSH, users)
    return run(lambda a: a.send_batch(b), c, ep, **kw)


def requests(admin: SandboxAdmin, ep: Endpoint) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = admin.get(f"/_sandbox/webhook/accounts/{ep.name}/requests")[
        "requests"
    ]
    return result


def test_signed_post_is_accepted_and_final(
    container: Container, ep: Endpoint, admin: SandboxAdmin
) -> None:
    out = send(container, ep, USERS[:3])
    assert out.accepted and out.done and out.platform_msg_id == "qf-c-0"
    assert admin.ledger("webhook", ep.name) == {
        "channel": "webhook", "account": ep.name, "messages": 3, "recipients": 3,
        "max_per_recipient": 1, "message_ids": 1,
    }  # fmt: skip


def test_a_resent_batch_is_deduped_by_the_receiver(
    container: Container, ep: Endpoint, admin: SandboxAdmin
) -> None:
    assert send(container, ep, USERS[:3]).accepted
    assert send(container, ep, USERS[:3]).accepted  # same key: 200, nothing recorded again
    assert admin.ledger("webhook", ep.name)["max_per_recipient"] == 1
    assert [r["status"] for r in requests(admin, ep)] == [200, 200]
    assert Webhook.idempotent and Webhook.resend_window(rules.load("webhook"), 1e9) == 0.9 * 86400


def test_a_large_batch_is_split_into_keyed_parts(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    ep = make_endpoint(admin, container, sandbox.url, qunfa_rules={"recipients_per_request": 3})
    assert send(container, ep, USERS).accepted
    assert [r["key"] for r in requests(admin, ep)] == ["qf-c-0.0", "qf-c-0.1", "qf-c-0.2"]
    assert admin.ledger("webhook", ep.name)["messages"] == 7
    over = rules.load("webhook").with_overrides({"batch_size": 500})
    assert Webhook.batch_size(over, "list") == 500


def test_wrong_secret_is_401_and_an_account_error(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    ep = make_endpoint(admin, container, sandbox.url, secret="not-the-secret")
    out = send(container, ep, USERS[:2])
    assert out.error is not None and out.error.code == 401
    assert out.error.klass is ErrorClass.ACCOUNT and "bad signature" in out.error.message
    assert admin.ledger("webhook", ep.name)["messages"] == 0


def test_stale_timestamp_is_rejected(
    container: Container, ep: Endpoint, admin: SandboxAdmin
) -> None:
    admin.advance_clock(rules.load("webhook")["signature_max_age_seconds"] + 60)
    out = send(container, ep, USERS[:2])
    assert out.error is not None and out.error.code == 401


def test_unsigned_or_tampered_posts_are_rejected(ep: Endpoint, admin: SandboxAdmin) -> None:
    body = json.dumps({"recipients": ["x"]}).encode()
    ts = str(int(time.time()))
    for headers in (
        {},
        {"X-Qunfa-Timestamp": ts, "X-Qunfa-Signature": sign(ep.secret, ts, body + b" ")},
    ):
        req = urllib.request.Request(ep.url, data=body, method="POST", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)
        assert info.value.code == 401
    assert admin.ledger("webhook", ep.name)["messages"] == 0


def test_429_is_retryable_with_retry_after(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    ep = make_endpoint(admin, container, sandbox.url, force_status=429, retry_after="7")
    out = send(container, ep, USERS[:1])
    assert out.error is not None and out.error.klass is ErrorClass.RETRYABLE
    assert out.error.retry_after == 7 and not out.in_doubt


@pytest.mark.parametrize(("status", "doubt"), [(500, True), (503, False)])
def test_5xx_is_retryable(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox, status: int, doubt: bool
) -> None:
    ep = make_endpoint(admin, container, sandbox.url, force_status=status)
    out = send(container, ep, USERS[:1])
    assert out.error is not None and out.error.klass is ErrorClass.RETRYABLE
    assert out.in_doubt is doubt


def test_other_4xx_is_a_batch_error_with_the_body_truncated(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    body = "unknown template: " + "x" * 100
    ep = make_endpoint(admin, container, sandbox.url, force_status=422, force_body=body,
                       qunfa_rules={"error_body_max_chars": 30})  # fmt: skip
    out = send(container, ep, USERS[:1])
    assert out.error is not None and out.error.klass is ErrorClass.BATCH and out.error.code == 422
    assert out.error.message == f"HTTP 422: {body[:30]}"


def test_injected_fault_is_a_503_and_nothing_is_recorded(
    container: Container, ep: Endpoint, admin: SandboxAdmin
) -> None:
    admin.faults(platform="webhook", error_rate=1.0)
    out = send(container, ep, USERS[:2])
    assert out.error is not None and out.error.code == 503 and not out.in_doubt
    assert admin.ledger("webhook", ep.name)["messages"] == 0


def test_accept_then_timeout_is_in_doubt_and_the_retry_is_deduped(
    container: Container, ep: Endpoint, admin: SandboxAdmin
) -> None:
    admin.faults(platform="webhook", accept_then_timeout_rate=1.0, hang_seconds=3)
    out = send(container, ep, USERS[:2], timeout=1.0)
    assert out.in_doubt and out.error is not None and out.error.klass is ErrorClass.RETRYABLE
    admin.clear_faults()
    assert send(container, ep, USERS[:2]).accepted  # same key: the receiver dedupes
    assert admin.ledger("webhook", ep.name)["max_per_recipient"] == 1


def test_refused_connection_is_retryable_and_not_in_doubt(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ep = make_endpoint(admin, container, sandbox.url)
    closed = {"url": f"http://127.0.0.1:{port}/hook", "secret": "s"}
    container.accounts.add(channel="webhook", app_id=ep.name, credentials=closed)
    out = send(container, ep, USERS[:1])
    assert out.error is not None and out.error.klass is ErrorClass.RETRYABLE and not out.in_doubt
