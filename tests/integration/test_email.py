"""The email adapter against the twin's real SMTP server (aiosmtpd), plus bounces pushed to the
receipts router."""

from __future__ import annotations

import asyncio
import email
import email.policy
import secrets
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from qunfa.api.app import create_app
from qunfa.api.routers.callbacks_receipts import router
from qunfa.api.server import ServerThread
from qunfa.bootstrap import Container
from qunfa.channels.base import ContentError, OutboundBatch
from qunfa.channels.email import Email, message_id
from qunfa.channels.http import HttpClient
from qunfa.domain.outcomes import BatchOutcome, ErrorClass
from qunfa.rules import load
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from tests.integration.test_sms_tencent import pushes_done, seed_deliveries, statuses, wait_for

CONTENT = {
    "subject": "双十一 5 折",
    "text": "全场 5 折，仅限今天。",
    "html": "<p>全场 <b>5 折</b>，仅限今天。</p>",
    "from_name": "qunfa 商城",
}


def make_account(
    admin: SandboxAdmin,
    c: Container,
    *,
    password: str | None = None,
    port: int | None = None,
    settings: dict[str, Any] | None = None,
    sender: str | None = None,
    **twin: Any,
) -> str:
    sender = sender or f"news-{secrets.token_hex(4)}@shop.example"
    user, real = f"u{secrets.token_hex(4)}", secrets.token_hex(8)
    admin.create_account("email", from_address=sender, username=user, password=real,
                         bounce_delay_seconds=60, **twin)  # fmt: skip
    smtp = admin.get("/_sandbox/email/smtp")
    c.accounts.add(
        channel="email",
        app_id=sender,
        credentials={
            "host": smtp["host"],
            "port": str(port or smtp["port"]),
            "username": user,
            "password": password or real,
            "from_address": sender,
        },
        settings={"unsubscribe_base": "https://qf.example/u/", **(settings or {})},
    )
    return sender


def send(c: Container, sender: str, recipients: list[str], key: str = "qf-mail-0") -> BatchOutcome:
    batch = OutboundBatch("camp1", 0, key, "list", CONTENT, recipients)

    async def main() -> BatchOutcome:
        async with HttpClient(5.0) as http:
            acc = next(a for a in c.accounts.all() if a.app_id == sender)
            adapter = c.accounts.adapter(acc, http)
            assert isinstance(adapter, Email)
            return await adapter.send_batch(batch)

    return asyncio.run(main())


def stored(admin: SandboxAdmin, to: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = admin.get(f"/_sandbox/email/messages?to={to}")["messages"]
    return result


@pytest.fixture
def sender(admin: SandboxAdmin, container: Container) -> str:
    return make_account(admin, container)


def test_one_message_per_recipient_with_unsubscribe_headers(
    container: Container, sender: str, admin: SandboxAdmin
) -> None:
    rcpts = ["a@mail.example", "b@mail.example", "c@mail.example"]
    out = send(container, sender, rcpts, key="qf-key-7")
    assert out.accepted and out.done and not out.recipient_failures
    assert out.recipient_msg_ids == {r: message_id("qf-key-7", r, sender) for r in rcpts}
    assert admin.ledger("email", sender)["messages"] == 3
    [row] = stored(admin, "b@mail.example")
    msg = email.message_from_bytes(row["raw"].encode(), policy=email.policy.default)
    assert msg["Message-ID"] == out.recipient_msg_ids["b@mail.example"]
    unsub = str(msg["List-Unsubscribe"])
    assert f"<mailto:{sender}?subject=unsubscribe>" in unsub and "<https://qf.example/u/" in unsub
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_content_type() == "multipart/alternative"
    parts = {p.get_content_type(): p.get_content() for p in msg.iter_parts()}
    assert "5 折" in parts["text/plain"] and "<b>5 折</b>" in parts["text/html"]
    assert msg["Subject"] == "双十一 5 折"


def test_message_id_is_deterministic_per_batch_key_and_recipient() -> None:
    a = message_id("k1", "x@mail.example", "n@shop.example")
    assert a == message_id("k1", "X@mail.example", "n@shop.example")
    assert a != message_id("k2", "x@mail.example", "n@shop.example")
    assert a.startswith("<") and a.endswith("@shop.example>")
    assert Email.batch_size(load("email"), "list") == 100 and Email.idempotent is False


def test_bad_credentials_are_an_account_error(admin: SandboxAdmin, container: Container) -> None:
    sender = make_account(admin, container, password="wrong")
    out = send(container, sender, ["a@mail.example"])
    assert out.error is not None and out.error.code == 535
    assert out.error.klass is ErrorClass.ACCOUNT and not out.in_doubt
    assert admin.ledger("email", sender)["messages"] == 0


def test_unreachable_relay_is_retryable_and_not_in_doubt(
    admin: SandboxAdmin, container: Container
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sender = make_account(admin, container, port=port)
    out = send(container, sender, ["a@mail.example"])
    assert out.error is not None and out.error.klass is ErrorClass.RETRYABLE
    assert not out.in_doubt and not out.recipient_msg_ids


def test_5xx_recipient_fails_that_recipient_only(admin: SandboxAdmin, container: Container) -> None:
    sender = make_account(admin, container, reject_domains=["gone.example"])
    out = send(container, sender, ["x@gone.example", "ok@mail.example", "not-an-address"])
    assert out.accepted and set(out.recipient_msg_ids) == {"ok@mail.example"}
    assert out.recipient_failures["x@gone.example"].code == 550
    assert out.recipient_failures["x@gone.example"].klass is ErrorClass.RECIPIENT
    assert out.recipient_failures["not-an-address"].klass is ErrorClass.RECIPIENT
    assert stored(admin, "x@gone.example") == []


def test_4xx_retries_the_batch_only_when_nothing_was_accepted(
    admin: SandboxAdmin, container: Container
) -> None:
    sender = make_account(admin, container, defer_domains=["busy.example"])
    out = send(container, sender, ["a@busy.example", "b@busy.example"])
    assert not out.accepted and out.error is not None
    assert out.error.code == 451 and out.error.klass is ErrorClass.RETRYABLE and not out.in_doubt
    mixed = send(container, sender, ["c@busy.example", "d@mail.example"], key="qf-mail-1")
    assert mixed.accepted and set(mixed.recipient_msg_ids) == {"d@mail.example"}
    assert mixed.recipient_failures["c@busy.example"].code == 451


def test_several_connections_deliver_each_recipient_once(
    admin: SandboxAdmin, container: Container
) -> None:
    sender = make_account(admin, container, settings={"rules": {"smtp_connections": 3}})
    rcpts = [f"r{i}@mail.example" for i in range(10)]
    out = send(container, sender, rcpts)
    assert out.accepted and set(out.recipient_msg_ids) == set(rcpts)
    ledger = admin.ledger("email", sender)
    assert ledger["messages"] == 10 and ledger["max_per_recipient"] == 1


def test_content_needs_subject_and_text() -> None:
    rules = load("email")
    Email.validate_content(CONTENT, rules)
    with pytest.raises(ContentError, match="subject"):
        Email.validate_content({**CONTENT, "subject": ""}, rules)
    with pytest.raises(ContentError, match="plain-text"):
        Email.validate_content({**CONTENT, "text": ""}, rules)


@pytest.fixture
def api(container: Container) -> Iterator[ServerThread]:
    app = create_app(container)
    app.include_router(router)
    server = ServerThread(app).start()
    yield server
    server.stop()


def test_bounces_are_listed_pushed_and_applied(
    admin: SandboxAdmin, container: Container, api: ServerThread
) -> None:
    sender = "news@bounce-test.example"
    url = f"{api.url}/callbacks/email/{sender}"
    make_account(
        admin, container, sender=sender, bounce_domains=["bounce.example"], callback_url=url
    )
    rcpts = ["x@bounce.example", "y@mail.example"]
    out = send(container, sender, rcpts)
    assert out.accepted and set(out.recipient_msg_ids) == set(rcpts)  # accepted, bounces later
    assert admin.ledger("email", sender)["messages"] == 1  # the bounce never counts
    ids = seed_deliveries(container, "email", sender, out.recipient_msg_ids)
    since = admin.get("/_sandbox/clock")["now"]
    assert admin.get(f"/_sandbox/email/bounces?since={since}")["bounces"] == []
    admin.advance_clock(61)
    wait_for(lambda: pushes_done(admin, "email"))
    [bounce] = admin.get(f"/_sandbox/email/bounces?since={since}")["bounces"]
    assert bounce["recipient"] == "x@bounce.example"
    assert bounce["message_id"] == out.recipient_msg_ids["x@bounce.example"]
    got = statuses(container, ids)
    assert got["y@mail.example"] == ("sent", None)
    status, reason = got["x@bounce.example"]
    assert status == "failed" and reason is not None and reason.startswith("bounced: 5.1.1")


def test_smtp_port_and_pending_bounces_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "restart.db"
    with EmbeddedSandbox(path) as sb:
        admin = SandboxAdmin(sb.url)
        port = admin.get("/_sandbox/email/smtp")["port"]
        admin.create_account("email", from_address="n@shop.example", username="u",
                             password="p", bounce_domains=["bounce.example"],
                             bounce_delay_seconds=60)  # fmt: skip
        asyncio.run(_smtp_send(port, "x@bounce.example"))
        assert admin.get("/_sandbox/email/bounces")["bounces"] == []
    with EmbeddedSandbox(path) as sb:
        admin = SandboxAdmin(sb.url)
        assert admin.get("/_sandbox/email/smtp")["port"] == port
        admin.advance_clock(61)
        wait_for(lambda: len(admin.get("/_sandbox/email/bounces")["bounces"]) == 1)
        asyncio.run(_smtp_send(port, "y@mail.example"))  # the login still works
        assert admin.ledger("email", "n@shop.example")["messages"] == 1


async def _smtp_send(port: int, rcpt: str) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "n@shop.example", rcpt, "hi"
    msg.set_content("hello")
    await aiosmtplib.send(msg, hostname="127.0.0.1", port=port, username="u", password="p",
                          start_tls=False)  # fmt: skip


def test_injected_smtp_faults_are_retryable_or_in_doubt(
    admin: SandboxAdmin, container: Container
) -> None:
    """POST /_sandbox/faults applies to the SMTP twin: a 421 is retryable and sends nothing;
    a message committed whose reply never comes in time leaves the batch in doubt."""
    sender = make_account(admin, container, settings={"rules": {"smtp_timeout_seconds": 1}})
    to = ["fault1@mail.example", "fault2@mail.example"]
    admin.faults(platform="email", error_rate=1.0)
    out = send(container, sender, to, key="qf-mail-fault")
    assert not out.accepted and out.error is not None
    assert out.error.klass is ErrorClass.RETRYABLE
    assert stored(admin, to[0]) == []
    admin.faults(platform="email", accept_then_timeout_rate=1.0, hang_seconds=3)
    doubt = send(container, sender, to[:1], key="qf-mail-doubt")
    admin.clear_faults()
    assert not doubt.accepted and doubt.in_doubt
    assert len(stored(admin, to[0])) == 1  # it did go out: the engine must not re-send it
