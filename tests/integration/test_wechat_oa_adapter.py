"""The wechat_oa and wechat_template adapters against the sandbox, over real HTTP.

Each test sends through the adapter exactly as the engine does and checks how the platform's
answer is classified; the sandbox ledger confirms what recipients actually received.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from qunfa.bootstrap import Container
from qunfa.channels.base import OutboundBatch
from qunfa.channels.http import HttpClient
from qunfa.channels.wechat_oa import WechatApiError, WechatOA
from qunfa.channels.wechat_template import WechatTemplate
from qunfa.domain.outcomes import BatchOutcome, ErrorClass
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from tests.conftest import OA, make_oa

T = TypeVar("T")
TEXT = {"msgtype": "text", "text": {"content": "测试消息"}}


def run(fn: Callable[[WechatOA], Awaitable[T]], c: Container, oa: OA) -> T:
    async def main() -> T:
        async with HttpClient(5.0) as http:
            adapter = c.accounts.adapter(c.accounts.get(oa.appid), http)
            assert isinstance(adapter, WechatOA)
            return await fn(adapter)

    return asyncio.run(main())


def run_tpl(fn: Callable[[WechatTemplate], Awaitable[T]], c: Container, oa: OA) -> T:
    async def main() -> T:
        async with HttpClient(5.0) as http:
            adapter = c.accounts.adapter(c.accounts.get(oa.appid), http, "wechat_template")
            assert isinstance(adapter, WechatTemplate)
            return await fn(adapter)

    return asyncio.run(main())


def followers(c: Container, oa: OA, n: int) -> list[str]:
    async def first_page(a: WechatOA) -> list[str]:
        async for page in a.followers():
            return page[:n]
        return []

    return run(first_page, c, oa)


def batch(recipients: list[str], key: str = "qf-test-0", **kw: Any) -> OutboundBatch:
    mode = kw.pop("mode", "list")
    content = kw.pop("content", TEXT)
    return OutboundBatch("test", 0, key, mode, content, recipients, **kw)


@pytest.fixture
def oa(admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox) -> OA:
    return make_oa(admin, container, sandbox.url, followers=300, sync=False)


def send(c: Container, oa: OA, b: OutboundBatch) -> BatchOutcome:
    return run(lambda a: a.send_batch(b), c, oa)


def test_list_send_is_accepted_and_delivered(
    container: Container, oa: OA, admin: SandboxAdmin
) -> None:
    ids = followers(container, oa, 50)
    out = send(container, oa, batch(ids))
    assert out.accepted and out.platform_msg_id and not out.deduplicated
    ledger = admin.ledger("wechat_oa", oa.appid)
    assert ledger["messages"] == 50 and ledger["max_per_recipient"] == 1


def test_fewer_than_two_openids_is_40130(container: Container, oa: OA) -> None:
    out = send(container, oa, batch(followers(container, oa, 1)))
    assert not out.accepted and out.error is not None
    assert out.error.code == 40130 and out.error.klass is ErrorClass.BATCH


def test_more_than_ten_thousand_is_40032(container: Container, oa: OA) -> None:
    ids = followers(container, oa, 2) * 5001
    out = send(container, oa, batch(ids))
    assert out.error is not None and out.error.code == 40032
    assert out.error.klass is ErrorClass.BATCH


def test_same_clientmsgid_is_45065_with_the_original_msg_id(
    container: Container, oa: OA, admin: SandboxAdmin
) -> None:
    ids = followers(container, oa, 20)
    first = send(container, oa, batch(ids, key="qf-dedupe-1"))
    again = send(container, oa, batch(ids, key="qf-dedupe-1"))
    assert again.accepted and again.deduplicated
    assert again.platform_msg_id == first.platform_msg_id
    assert admin.ledger("wechat_oa", oa.appid)["messages"] == 20  # nothing sent twice


def test_clientmsgid_over_64_bytes_is_45067(container: Container, oa: OA) -> None:
    out = send(container, oa, batch(followers(container, oa, 3), key="k" * 65))
    assert out.error is not None and out.error.code == 45067
    assert out.error.klass is ErrorClass.BATCH


def test_subscription_account_second_mass_send_is_quota(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    sub = make_oa(admin, container, sandbox.url, followers=50, kind="subscription", sync=False)
    ids = followers(container, sub, 10)
    assert send(container, sub, batch(ids, key="qf-a")).accepted
    out = send(container, sub, batch(ids, key="qf-b"))
    assert out.error is not None and out.error.code == 45028
    assert out.error.klass is ErrorClass.QUOTA
    # Deferred to the next midnight in China: somewhere within the next 24 hours.
    assert out.error.retry_after is not None and 0 < out.error.retry_after <= 86400 + 60
    admin.advance_clock(86400)
    assert send(container, sub, batch(ids, key="qf-c")).accepted


def test_rate_limit_45009_is_retryable_after_a_minute(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    # The sandbox allows 2 mass calls a minute; qunfa's own limiter is told 100, so the
    # platform's 45009 is what stops the third call.
    tight = make_oa(
        admin,
        container,
        sandbox.url,
        followers=50,
        sync=False,
        sandbox_rules={"mass_calls_per_minute": 2},
        qunfa_rules={"mass_calls_per_minute": 100},
    )
    ids = followers(container, tight, 5)
    assert send(container, tight, batch(ids, key="qf-1")).accepted
    assert send(container, tight, batch(ids, key="qf-2")).accepted
    out = send(container, tight, batch(ids, key="qf-3"))
    assert out.error is not None and out.error.code == 45009
    assert out.error.klass is ErrorClass.RETRYABLE and out.error.retry_after == 60.0


def test_qunfa_limiter_keeps_under_the_platform_limit(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    from qunfa.channels.ratelimit import LocalRateLimiter

    tight = make_oa(admin, container, sandbox.url, followers=50, sync=False)
    limiter = LocalRateLimiter()
    key = f"wechat:{tight.appid}:mass"
    assert all(limiter.try_acquire(key, 60, 60) == 0 for _ in range(60))
    assert limiter.try_acquire(key, 60, 60) > 0  # the 61st call in a minute would wait


def test_retry_after_refused_attempt_is_45066(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    sub = make_oa(admin, container, sandbox.url, followers=50, kind="subscription", sync=False)
    ids = followers(container, sub, 5)
    assert send(container, sub, batch(ids, key="qf-first")).accepted
    refused = send(container, sub, batch(ids, key="qf-second"))
    assert refused.error is not None and refused.error.code == 45028
    again = send(container, sub, batch(ids, key="qf-second"))  # same key within a minute
    assert again.error is not None and again.error.code == 45066
    assert again.error.klass is ErrorClass.RETRYABLE and again.error.retry_after == 60.0


def test_injected_system_error_is_retryable(
    container: Container, oa: OA, admin: SandboxAdmin
) -> None:
    ids = followers(container, oa, 5)
    admin.faults(error_rate=1.0, errcode=-1, paths=["mass/send"])
    out = send(container, oa, batch(ids))
    assert out.error is not None and out.error.code == -1
    assert out.error.klass is ErrorClass.RETRYABLE
    admin.clear_faults()
    assert send(container, oa, batch(ids)).accepted


def test_http_503_is_retryable_and_not_in_doubt(
    container: Container, oa: OA, admin: SandboxAdmin
) -> None:
    ids = followers(container, oa, 5)
    admin.faults(error_rate=1.0, http_status=503, paths=["mass/send"])
    out = send(container, oa, batch(ids))
    assert out.error is not None and out.error.klass is ErrorClass.RETRYABLE
    assert not out.in_doubt


def test_accept_then_timeout_is_in_doubt_and_dedupe_settles_it(
    container: Container, oa: OA, admin: SandboxAdmin
) -> None:
    ids = followers(container, oa, 30)
    admin.faults(accept_then_timeout_rate=1.0, hang_seconds=3, paths=["mass/send"])

    async def short_timeout() -> BatchOutcome:
        async with HttpClient(0.5) as http:
            a = container.accounts.adapter(container.accounts.get(oa.appid), http)
            return await a.send_batch(batch(ids, key="qf-doubt"))

    out = asyncio.run(short_timeout())
    assert not out.accepted and out.in_doubt
    assert out.error is not None and out.error.klass is ErrorClass.RETRYABLE
    admin.clear_faults()
    settled = send(container, oa, batch(ids, key="qf-doubt"))
    assert settled.accepted and settled.deduplicated
    ledger = admin.ledger("wechat_oa", oa.appid)
    assert ledger["messages"] == 30 and ledger["max_per_recipient"] == 1


def test_revoked_token_is_refetched_once(container: Container, oa: OA, admin: SandboxAdmin) -> None:
    ids = followers(container, oa, 5)
    before = container.tokens.fetches
    admin.faults(revoke_tokens=True)
    assert send(container, oa, batch(ids, key="qf-after-revoke")).accepted
    assert container.tokens.fetches == before + 1


def test_bad_secret_is_an_account_error(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    bad = make_oa(admin, container, sandbox.url, followers=10, sync=False)
    container.accounts.add(
        channel="wechat_oa",
        app_id=bad.appid,
        secret="wrong-secret",
        base_url=f"{sandbox.url}/wechat",
    )

    async def attempt(a: WechatOA) -> None:
        await a.tags()

    with pytest.raises(WechatApiError) as exc:
        run(attempt, container, bad)
    assert exc.value.error.klass is ErrorClass.ACCOUNT


def test_sendall_to_tag_and_everyone(container: Container, oa: OA, admin: SandboxAdmin) -> None:
    tags = run(lambda a: a.tags(), container, oa)
    vip = next(t for t in tags if t["name"] == "VIP")
    out = send(container, oa, batch([], key="qf-tag", mode="tag", tag_id=vip["id"]))
    assert out.accepted
    assert admin.ledger("wechat_oa", oa.appid)["messages"] == vip["count"]
    assert send(container, oa, batch([], key="qf-all", mode="to_all")).accepted
    ledger = admin.ledger("wechat_oa", oa.appid)
    assert ledger["recipients"] == 300 and ledger["messages"] == 300 + vip["count"]


def test_status_preview_and_delete(container: Container, oa: OA) -> None:
    ids = followers(container, oa, 5)
    from qunfa.content.mediafile import png_header  # the twin takes only media ids it issued

    image = container.materials.create(kind="image", title="i", data=png_header(8, 8))
    acc = container.accounts.get(oa.appid)

    async def upload(_: WechatOA) -> str:
        async with HttpClient() as http:
            media_id: str = await container.materials.media_id(image.id, acc, "wechat_oa", http)
            return media_id

    news = {"msgtype": "mpnews", "mpnews": {"media_id": run(upload, container, oa)}}
    out = send(container, oa, batch(ids, key="qf-news", content=news))
    assert out.platform_msg_id

    async def lifecycle(a: WechatOA) -> tuple[str, str, str]:
        for _ in range(50):
            settled = await a.settle(str(out.platform_msg_id))
            assert settled is not None
            if settled.final:
                break
            await asyncio.sleep(0.05)
        preview = await a.preview(TEXT, openid=ids[0])
        await a.delete(str(out.platform_msg_id))
        after = await a.settle(str(out.platform_msg_id))
        assert after is not None
        return settled.status, preview, after.status

    status, preview_id, after = run(lifecycle, container, oa)
    assert status == "SEND_SUCCESS" and preview_id and after == "DELETE"


def test_unknown_msg_id_is_40059(container: Container, oa: OA) -> None:
    with pytest.raises(WechatApiError) as exc:
        run(lambda a: a.settle("999999999"), container, oa)
    assert exc.value.error.code == 40059


def test_followers_are_paged_to_the_end(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    big = make_oa(admin, container, sandbox.url, followers=25_000, sync=False)

    async def pages(a: WechatOA) -> list[int]:
        return [len(p) async for p in a.followers()]

    sizes = run(pages, container, big)
    assert sizes == [10_000, 10_000, 5_000]


# -- template messages --------------------------------------------------------------------------
TPL = {
    "template_id": "TPL_ORDER_SHIPPED",
    "data": {"thing1": "您的订单已发货", "character_string2": "SF1234567", "time3": "2026-11-23"},
}


def send_tpl(c: Container, oa: OA, b: OutboundBatch) -> BatchOutcome:
    return run_tpl(lambda a: a.send_batch(b), c, oa)


def test_template_send_per_recipient(container: Container, oa: OA, admin: SandboxAdmin) -> None:
    ids = followers(container, oa, 40)
    out = send_tpl(container, oa, batch(ids, key="qf-tpl", mode="template", content=TPL))
    assert out.accepted and out.done
    assert len(out.recipient_msg_ids) + len(out.recipient_failures) == 40
    assert all(e.klass is ErrorClass.RECIPIENT for e in out.recipient_failures.values())
    sent = admin.ledger("wechat_template", oa.appid)
    assert sent["messages"] == len(out.recipient_msg_ids)


def test_template_client_msg_id_dedupe(container: Container, oa: OA, admin: SandboxAdmin) -> None:
    ids = followers(container, oa, 10)
    first = send_tpl(container, oa, batch(ids, key="qf-tpl-d", mode="template", content=TPL))
    again = send_tpl(container, oa, batch(ids, key="qf-tpl-d", mode="template", content=TPL))
    assert again.recipient_msg_ids == first.recipient_msg_ids
    assert admin.ledger("wechat_template", oa.appid)["max_per_recipient"] == 1


def test_template_unknown_id_is_a_batch_error(container: Container, oa: OA) -> None:
    bad = {"template_id": "NOPE", "data": {"thing1": "x"}}
    out = send_tpl(container, oa, batch(followers(container, oa, 3), mode="template", content=bad))
    assert out.error is not None and out.error.code == 40037
    assert out.error.klass is ErrorClass.BATCH


def test_template_missing_field_is_47003(container: Container, oa: OA) -> None:
    bad = {"template_id": "TPL_ORDER_SHIPPED", "data": {"thing1": "x"}}
    out = send_tpl(container, oa, batch(followers(container, oa, 2), mode="template", content=bad))
    assert out.error is not None and out.error.code == 47003


def test_template_unfollowed_user_is_43004(
    container: Container, oa: OA, sandbox: EmbeddedSandbox
) -> None:
    import json
    import urllib.request

    ids = followers(container, oa, 3)
    req = urllib.request.Request(
        f"{sandbox.url}/_sandbox/wechat/accounts/{oa.appid}/unfollow",
        data=json.dumps({"openids": [ids[0]]}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(req).read()
    out = send_tpl(container, oa, batch(ids, key="qf-unf", mode="template", content=TPL))
    assert ids[0] in out.recipient_failures
    assert out.recipient_failures[ids[0]].code == 43004
