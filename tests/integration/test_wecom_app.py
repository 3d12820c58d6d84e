"""The wecom_app adapter against the sandbox twin, over real HTTP.

message/send answers synchronously (``done``); the sandbox ledger shows what members actually
received — including what the platform drops silently (30/min per member).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from qunfa.bootstrap import Container
from qunfa.channels.base import ContentError, OutboundBatch
from qunfa.channels.http import HttpClient
from qunfa.channels.wecom_app import WecomApp
from qunfa.channels.wecom_common import WecomApiError
from qunfa.domain.outcomes import BatchOutcome, ErrorClass
from qunfa.rules import load as load_rules
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from tests.integration.test_wecom_customer import AGENTID, Corp, make_corp

T = TypeVar("T")
TEXT = {"msgtype": "text", "text": {"content": "今晚 8 点系统维护"}}


def app_id(corp: Corp) -> str:
    return f"{corp.corpid}:{AGENTID}"


def run(fn: Callable[[WecomApp], Awaitable[T]], c: Container, corp: Corp) -> T:
    async def main() -> T:
        async with HttpClient(5.0) as http:
            adapter = c.accounts.adapter(c.accounts.get(app_id(corp)), http)
            assert isinstance(adapter, WecomApp)
            return await fn(adapter)

    return asyncio.run(main())


def batch(users: list[str], key: str = "qf-app-0", content: Any = TEXT) -> OutboundBatch:
    return OutboundBatch("test", 0, key, "users", content, users)


def send(c: Container, corp: Corp, b: OutboundBatch) -> BatchOutcome:
    return run(lambda a: a.send_batch(b), c, corp)


@pytest.fixture
def corp(admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox) -> Corp:
    return make_corp(admin, container, sandbox.url, app=True, staff=8, customers=0)


def users(corp: Corp, n: int) -> list[str]:
    return [str(s["userid"]) for s in corp.staff][:n]


def test_send_is_done_at_once(container: Container, corp: Corp, admin: SandboxAdmin) -> None:
    out = send(container, corp, batch(users(corp, 5)))
    assert out.accepted and out.done and out.platform_msg_id and not out.recipient_failures
    ledger = admin.ledger("wecom_app", app_id(corp))
    assert ledger["messages"] == 5 and ledger["max_per_recipient"] == 1


def test_invaliduser_is_lower_cased_and_mapped_back(container: Container, corp: Corp) -> None:
    out = send(container, corp, batch([*users(corp, 2), "NoSuchUser"]))
    assert out.accepted and set(out.recipient_failures) == {"NoSuchUser"}
    assert out.recipient_failures["NoSuchUser"].klass is ErrorClass.RECIPIENT


def test_all_invalid_is_81013(container: Container, corp: Corp) -> None:
    out = send(container, corp, batch(["ghost1", "ghost2"]))
    assert out.error is not None and out.error.code == 81013
    assert out.error.klass is ErrorClass.BATCH


def test_duplicate_check_delivers_a_retried_batch_once(
    container: Container, corp: Corp, admin: SandboxAdmin
) -> None:
    first = send(container, corp, batch(users(corp, 4)))
    again = send(container, corp, batch(users(corp, 4)))
    assert again.accepted and again.platform_msg_id == first.platform_msg_id
    other = send(container, corp, batch(users(corp, 6)[4:]))  # another batch: other touser
    assert other.platform_msg_id != first.platform_msg_id
    ledger = admin.ledger("wecom_app", app_id(corp))
    assert ledger["messages"] == 6 and ledger["max_per_recipient"] == 1
    assert WecomApp.resend_window(load_rules("wecom"), 86400) == 0.9 * 1800


def test_in_doubt_send_retried_is_deduplicated(
    container: Container, corp: Corp, admin: SandboxAdmin
) -> None:
    b = batch(users(corp, 3), key="qf-doubt")
    admin.faults(
        platform="wecom", accept_then_timeout_rate=1.0, hang_seconds=3, paths=["message/send"]
    )

    async def short_timeout() -> BatchOutcome:
        async with HttpClient(0.5) as http:
            return await container.accounts.adapter(
                container.accounts.get(app_id(corp)), http
            ).send_batch(b)

    out = asyncio.run(short_timeout())
    assert not out.accepted and out.in_doubt
    admin.clear_faults()
    assert send(container, corp, b).accepted
    assert admin.ledger("wecom_app", app_id(corp))["max_per_recipient"] == 1


def test_more_than_30_a_minute_to_one_member_is_silently_dropped(
    container: Container, corp: Corp, admin: SandboxAdmin
) -> None:
    member = users(corp, 1)

    def text(i: int) -> dict[str, Any]:
        return {"msgtype": "text", "text": {"content": f"第{i}条"}}

    outcomes = [
        send(container, corp, batch(member, key=f"k{i}", content=text(i))) for i in range(31)
    ]
    assert all(o.accepted and not o.recipient_failures for o in outcomes)  # no error, as live
    assert admin.ledger("wecom_app", app_id(corp))["messages"] == 30  # the 31st vanished
    admin.advance_clock(61)
    send(container, corp, batch(member, key="k-late", content=text(99)))
    assert admin.ledger("wecom_app", app_id(corp))["messages"] == 31


def test_daily_person_times_is_a_quota(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    small = make_corp(
        admin,
        container,
        sandbox.url,
        app=True,
        staff=4,
        customers=0,
        seats=1,
        sandbox_rules={"app_daily_person_times_per_seat": 3},
    )
    assert send(container, small, batch(users(small, 2))).accepted
    out = send(container, small, batch(users(small, 4)[2:]))
    assert out.error is not None and out.error.code == 45009
    assert out.error.klass is ErrorClass.QUOTA
    assert out.error.retry_after is not None and 0 < out.error.retry_after <= 3600
    admin.advance_clock(86400)
    assert send(container, small, batch(users(small, 4)[2:])).accepted


@pytest.mark.parametrize(
    "content",
    [
        {"msgtype": "text", "text": {"content": "字" * 683}},  # 2049 bytes
        {"msgtype": "markdown", "markdown": {"content": ""}},
        {
            "msgtype": "textcard",
            "textcard": {"title": "t", "description": "d", "url": "u", "btntxt": "更多详情信息"},
        },
        {"msgtype": "news", "news": {"articles": [{"title": "a"}] * 9}},
        {"msgtype": "voice", "voice": {"media_id": "M"}},
    ],
)
def test_content_rules(content: dict[str, Any]) -> None:
    with pytest.raises(ContentError):
        WecomApp.validate_content(content, load_rules("wecom"))


def test_over_long_text_is_refused_by_the_platform_too(container: Container, corp: Corp) -> None:
    long_text = {"msgtype": "text", "text": {"content": "字" * 683}}
    out = send(container, corp, batch(users(corp, 1), content=long_text))
    assert out.error is not None and out.error.code == 45002
    assert out.error.klass is ErrorClass.BATCH


def test_recall_within_24_hours_only(container: Container, corp: Corp, admin: SandboxAdmin) -> None:
    first = send(container, corp, batch(users(corp, 2), key="r1"))
    run(lambda a: a.recall(str(first.platform_msg_id)), container, corp)
    other = {"msgtype": "markdown", "markdown": {"content": "**later**"}}
    second = send(container, corp, batch(users(corp, 2), key="r2", content=other))
    admin.advance_clock(86401)
    with pytest.raises(WecomApiError) as exc:
        run(lambda a: a.recall(str(second.platform_msg_id)), container, corp)
    assert exc.value.error.code == 40058


def test_contact_secret_cannot_send_app_messages(
    container: Container, corp: Corp, sandbox: EmbeddedSandbox
) -> None:
    container.accounts.add(
        channel="wecom_app",
        app_id=app_id(corp),
        base_url=f"{sandbox.url}/wecom",
        credentials={"corpid": corp.corpid, "agentid": str(AGENTID), "secret": corp.secret},
    )
    out = send(container, corp, batch(users(corp, 1)))
    assert out.error is not None and out.error.code == 48002
    assert out.error.klass is ErrorClass.ACCOUNT


def test_injected_system_error_is_retryable(
    container: Container, corp: Corp, admin: SandboxAdmin
) -> None:
    admin.faults(platform="wecom", error_rate=1.0, errcode=-1, paths=["message/send"])
    out = send(container, corp, batch(users(corp, 2)))
    assert out.error is not None and out.error.code == -1
    assert out.error.klass is ErrorClass.RETRYABLE and not out.in_doubt
    admin.clear_faults()
    assert send(container, corp, batch(users(corp, 2))).accepted
