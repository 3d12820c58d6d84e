"""The wecom_customer adapter and WeCom callbacks against the sandbox twin, over real HTTP.

Each test sends through the adapter as the engine does; settle() reads the task back as the
members confirm it (or never do); the sandbox ledger says what customers actually received.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from qunfa.api.app import create_app
from qunfa.api.server import ServerThread
from qunfa.bootstrap import Container
from qunfa.channels.base import ContentError, OutboundBatch, Settlement
from qunfa.channels.http import HttpClient
from qunfa.channels.wecom_common import WecomApiError
from qunfa.channels.wecom_customer import NEVER_SENT, WecomCustomer
from qunfa.crypto.wxbizmsgcrypt import WXBizMsgCrypt
from qunfa.domain.outcomes import BatchOutcome, ErrorClass
from qunfa.rules import load as load_rules
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.storage.models import Event
from tests.conftest import aes_key

T = TypeVar("T")
TEXT = {"text": {"content": "双十一会员专享 8 折"}}
AGENTID = 1000002


@dataclass
class Corp:
    corpid: str
    secret: str
    app_secret: str
    token: str
    aes_key: str
    staff: list[dict[str, Any]] = field(default_factory=list)


def make_corp(
    admin: SandboxAdmin,
    c: Container,
    sandbox_url: str,
    *,
    sandbox_rules: dict[str, int] | None = None,
    qunfa_rules: dict[str, int] | None = None,
    app: bool = False,
    **spec: Any,
) -> Corp:
    """A corp on the sandbox, registered in qunfa as a wecom_customer (or wecom_app) account."""
    corpid = str(spec.pop("corpid", None) or f"ww{secrets.token_hex(8)}")
    corp = Corp(
        corpid, secrets.token_hex(16), secrets.token_hex(16), secrets.token_hex(6), aes_key()
    )
    fields: dict[str, Any] = {
        "staff": 3,
        "customers": 30,
        "confirm_delay_seconds": 0.05,
        "confirm_rate": 1.0,
        "seed": 7,
        **spec,
    }
    made = admin.create_account(
        "wecom",
        corpid=corp.corpid,
        secret=corp.secret,
        app_secrets={str(AGENTID): corp.app_secret},
        token=corp.token,
        encoding_aes_key=corp.aes_key,
        rules=sandbox_rules or {},
        **fields,
    )
    corp.staff = made["staff"]
    settings = {"rules": qunfa_rules} if qunfa_rules else None
    if app:
        c.accounts.add(
            channel="wecom_app",
            app_id=f"{corp.corpid}:{AGENTID}",
            base_url=f"{sandbox_url}/wecom",
            credentials={"corpid": corp.corpid, "agentid": str(AGENTID), "secret": corp.app_secret},
            settings=settings,
        )
    else:
        c.accounts.add(
            channel="wecom_customer",
            app_id=corp.corpid,
            base_url=f"{sandbox_url}/wecom",
            credentials={"corpid": corp.corpid, "secret": corp.secret},
            token=corp.token,
            encoding_aes_key=corp.aes_key,
            settings=settings,
        )
    return corp


def run(fn: Callable[[WecomCustomer], Awaitable[T]], c: Container, corp: Corp) -> T:
    async def main() -> T:
        async with HttpClient(5.0) as http:
            adapter = c.accounts.adapter(c.accounts.get(corp.corpid), http)
            assert isinstance(adapter, WecomCustomer)
            return await fn(adapter)

    return asyncio.run(main())


def customers(c: Container, corp: Corp) -> list[dict[str, Any]]:
    async def all_customers(a: WecomCustomer) -> list[dict[str, Any]]:
        return [row async for page in a.customers(await a.follow_users()) for row in page]

    return run(all_customers, c, corp)


def batch(recipients: list[str], key: str = "qf-wc-0", content: Any = TEXT) -> OutboundBatch:
    return OutboundBatch("test", 0, key, "single", content, recipients)


def send(c: Container, corp: Corp, b: OutboundBatch) -> BatchOutcome:
    return run(lambda a: a.send_batch(b), c, corp)


def settle_until(
    c: Container, corp: Corp, msgid: str, done: Callable[[Settlement], bool]
) -> Settlement:
    for _ in range(60):
        result = run(lambda a: a.settle(msgid), c, corp)
        assert result is not None
        if done(result):
            return result
        time.sleep(0.05)
    raise AssertionError(f"never settled: {result}")


@pytest.fixture
def corp(admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox) -> Corp:
    return make_corp(admin, container, sandbox.url, qunfa_rules={"groupmsg_result_page_max": 7})


def ids(c: Container, corp: Corp, n: int | None = None) -> list[str]:
    return [str(r["external_userid"]) for r in customers(c, corp)][:n]


# -- sending and settling -----------------------------------------------------------------------
def test_task_is_confirmed_and_settles_per_customer(
    container: Container, corp: Corp, admin: SandboxAdmin
) -> None:
    targets = ids(container, corp)
    out = send(container, corp, batch(targets))
    assert out.accepted and out.platform_msg_id and not out.done and not out.recipient_failures
    result = settle_until(container, corp, out.platform_msg_id, lambda s: s.final)
    assert result.ok and result.status.startswith("SENT 3/3")
    assert {r: o.status for r, o in result.recipients.items()} == dict.fromkeys(targets, "sent")
    assert result.counts["sent"] == 30  # read through pages of 7 per member
    ledger = admin.ledger("wecom_customer", corp.corpid)
    assert ledger["messages"] == 30 and ledger["max_per_recipient"] == 1


def test_invalid_ids_come_back_in_fail_list(container: Container, corp: Corp) -> None:
    good = ids(container, corp, 5)
    out = send(container, corp, batch([*good, "wmNOSUCHCUSTOMER", "wmGONE"]))
    assert out.accepted
    assert set(out.recipient_failures) == {"wmNOSUCHCUSTOMER", "wmGONE"}
    assert all(e.klass is ErrorClass.RECIPIENT for e in out.recipient_failures.values())


def test_all_invalid_is_40096_recipient_class(container: Container, corp: Corp) -> None:
    out = send(container, corp, batch(["wmA", "wmB"]))
    assert not out.accepted and out.error is not None and out.error.code == 40096
    assert out.error.klass is ErrorClass.RECIPIENT and set(out.recipient_failures) == {"wmA", "wmB"}


def test_missing_content_is_40063_and_validation_catches_it_first(
    container: Container, corp: Corp
) -> None:
    rules = load_rules("wecom")
    with pytest.raises(ContentError):
        WecomCustomer.validate_content({"text": {"content": " "}}, rules)
    out = send(container, corp, batch(ids(container, corp, 2), content={}))
    assert out.error is not None and out.error.code == 40063
    assert out.error.klass is ErrorClass.BATCH


@pytest.mark.parametrize(
    "content",
    [
        {"text": {"content": "字" * 1334}},  # 4002 bytes
        {"text": "x", "attachments": [{"msgtype": "image", "image": {"media_id": "M"}}] * 10},
        {"attachments": [{"msgtype": "link", "link": {"title": "标" * 43, "url": "https://a.cn"}}]},
        {"attachments": [{"msgtype": "link", "link": {"title": "ok"}}]},  # no url
        {"attachments": [{"msgtype": "voice", "voice": {"media_id": "M"}}]},
    ],
)
def test_content_rules(content: dict[str, Any]) -> None:
    with pytest.raises(ContentError):
        WecomCustomer.validate_content(content, load_rules("wecom"))


def test_cap_hit_at_confirmation_is_status_3(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    daily = make_corp(
        admin, container, sandbox.url, monthly_rule="1_per_day", confirm_delay_seconds=0.3
    )
    targets = ids(container, daily, 6)
    first = send(container, daily, batch(targets, key="k1"))
    second = send(container, daily, batch(targets, key="k2"))  # both created before confirming
    assert first.platform_msg_id and second.platform_msg_id
    one = settle_until(container, daily, first.platform_msg_id, lambda s: s.final)
    two = settle_until(container, daily, second.platform_msg_id, lambda s: s.final)
    assert all(o.status == "sent" for o in one.recipients.values())
    assert {o.status for o in two.recipients.values()} == {"failed"}
    assert all("(3)" in str(o.reason) for o in two.recipients.values())
    assert not two.ok and admin.ledger("wecom_customer", daily.corpid)["max_per_recipient"] == 1
    # A third send now finds every customer at the cap: 41048 before any task is created.
    third = send(container, daily, batch(targets, key="k3"))
    assert third.error is not None and third.error.code == 41048
    assert third.error.klass is ErrorClass.BATCH
    admin.advance_clock(86400)  # next day in China: the cap resets
    assert send(container, daily, batch(targets, key="k4")).accepted


def test_customer_no_longer_a_friend_is_status_2(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    slow = make_corp(admin, container, sandbox.url, confirm_delay_seconds=0.3)
    targets = ids(container, slow, 4)
    out = send(container, slow, batch(targets))
    assert out.platform_msg_id
    admin.post(
        f"/_sandbox/wecom/accounts/{slow.corpid}/delete_customer", {"external_userid": targets[0]}
    )
    result = settle_until(container, slow, out.platform_msg_id, lambda s: s.final)
    assert result.recipients[targets[0]].status == "failed"
    assert "(2)" in str(result.recipients[targets[0]].reason)
    assert admin.ledger("wecom_customer", slow.corpid)["messages"] == 3


def test_staff_who_never_confirm_stay_pending_until_the_give_up_time(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    mixed = make_corp(admin, container, sandbox.url, staff=6, customers=36, confirm_rate=0.5)
    never = {s["userid"] for s in mixed.staff if not s["confirms"]}
    assert never and len(never) < 6, "seed 7 gives a mix of confirming and silent members"
    rows = customers(container, mixed)
    out = send(container, mixed, batch([r["external_userid"] for r in rows]))
    msgid = str(out.platform_msg_id)
    partial = 36 - 6 * len(never)  # customers of members who confirmed

    def some_sent(s: Settlement) -> bool:
        return "WAITING" in s.status and len(s.recipients) == partial

    waiting = settle_until(container, mixed, msgid, some_sent)
    assert not waiting.final
    staff = run(lambda a: a.staff_status(msgid), container, mixed)
    assert {u for u, status, _ in staff if status == 0} == never
    # A week later (rule customer_give_up_seconds) the silent members count as never sending.
    week = load_rules("wecom")["customer_give_up_seconds"] + 60
    admin.advance_clock(week)

    async def later(a: WecomCustomer) -> Settlement | None:
        a.clock = lambda: time.time() + week
        return await a.settle(msgid)

    final = run(later, container, mixed)
    assert final is not None and final.final and final.ok and "GAVE_UP" in final.status
    silent = {r["external_userid"] for r in rows if r["userid"] in never}
    assert {r for r, o in final.recipients.items() if o.reason == NEVER_SENT} == silent
    assert admin.ledger("wecom_customer", mixed.corpid)["messages"] == 36 - len(silent)


def test_remind_is_limited_to_three_a_day(
    admin: SandboxAdmin, container: Container, corp: Corp
) -> None:
    msgid = str(send(container, corp, batch(ids(container, corp, 3))).platform_msg_id)
    for _ in range(3):
        run(lambda a: a.remind(msgid), container, corp)
    with pytest.raises(WecomApiError) as exc:
        run(lambda a: a.remind(msgid), container, corp)
    assert exc.value.error.code == 45009 and exc.value.error.klass is ErrorClass.RETRYABLE
    admin.advance_clock(86401)
    run(lambda a: a.remind(msgid), container, corp)


def test_cancel_stops_members_who_have_not_confirmed(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    slow = make_corp(admin, container, sandbox.url, confirm_delay_seconds=30)
    msgid = str(send(container, slow, batch(ids(container, slow))).platform_msg_id)
    run(lambda a: a.cancel(msgid), container, slow)
    admin.advance_clock(60)
    staff = run(lambda a: a.staff_status(msgid), container, slow)
    assert len(staff) == 3 and {status for _, status, _ in staff} == {0}
    assert admin.ledger("wecom_customer", slow.corpid)["messages"] == 0
    with pytest.raises(WecomApiError) as exc:
        run(lambda a: a.cancel("msgNOPE"), container, slow)
    assert exc.value.error.klass is ErrorClass.BATCH


# -- platform errors ------------------------------------------------------------------------------
def test_frequency_limit_is_retryable_after_a_minute(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    tight = make_corp(admin, container, sandbox.url, sandbox_rules={"api_calls_per_minute": 2})
    targets = ids(container, tight, 2)
    assert send(container, tight, batch(targets, key="a")).accepted
    assert send(container, tight, batch(targets, key="b")).accepted
    out = send(container, tight, batch(targets, key="c"))
    assert out.error is not None and out.error.code == 45009
    assert out.error.klass is ErrorClass.RETRYABLE and out.error.retry_after == 60.0


def test_injected_faults_on_the_wecom_platform(
    container: Container, corp: Corp, admin: SandboxAdmin
) -> None:
    targets = ids(container, corp, 4)
    admin.faults(platform="wecom", error_rate=1.0, errcode=-1, paths=["add_msg_template"])
    out = send(container, corp, batch(targets))
    assert out.error is not None and out.error.code == -1
    assert out.error.klass is ErrorClass.RETRYABLE and not out.in_doubt
    admin.faults(platform="wecom", error_rate=1.0, http_status=503, paths=["add_msg_template"])
    out = send(container, corp, batch(targets))
    assert out.error is not None and out.error.klass is ErrorClass.RETRYABLE and not out.in_doubt
    admin.faults(platform="wechat", error_rate=1.0)  # another platform's faults leave us alone
    assert send(container, corp, batch(targets)).accepted


def test_in_doubt_send_is_found_by_find_task_not_resent(
    container: Container, corp: Corp, admin: SandboxAdmin
) -> None:
    assert (
        not WecomCustomer.idempotent and WecomCustomer.resend_window(load_rules("wecom"), 60) == 0
    )
    targets = ids(container, corp, 8)
    b = batch(targets, key="qf-doubt", content={"text": {"content": "in doubt 消息"}})
    started = time.time()
    admin.faults(
        platform="wecom", accept_then_timeout_rate=1.0, hang_seconds=3, paths=["add_msg_template"]
    )

    async def short_timeout() -> BatchOutcome:
        async with HttpClient(0.5) as http:
            a = container.accounts.adapter(container.accounts.get(corp.corpid), http)
            return await a.send_batch(b)

    out = asyncio.run(short_timeout())
    assert not out.accepted and out.in_doubt
    admin.clear_faults()
    send(container, corp, batch(targets[:3], key="other"))  # same text, other audience: no match
    found = run(lambda a: a.find_task(b, since=started), container, corp)
    assert found is not None and found.startswith("msg")
    staff = run(lambda a: a.staff_status(found), container, corp)
    assert staff  # the task really exists; the batch can be settled with this msgid


def test_bad_secret_and_corpid_are_account_errors(
    container: Container, corp: Corp, sandbox: EmbeddedSandbox
) -> None:
    for corpid, secret, code in ((corp.corpid, "wrong", 40001), ("wwnope", corp.secret, 40013)):
        container.accounts.add(
            channel="wecom_customer",
            app_id=corp.corpid,
            base_url=f"{sandbox.url}/wecom",
            credentials={"corpid": corpid, "secret": secret},
        )
        out = send(container, corp, batch(["wm1"]))
        assert out.error is not None and out.error.code == code
        assert out.error.klass is ErrorClass.ACCOUNT


def test_revoked_token_is_refetched_once(
    container: Container, corp: Corp, admin: SandboxAdmin
) -> None:
    targets = ids(container, corp, 2)
    before = container.tokens.fetches
    admin.faults(revoke_tokens=True)
    assert send(container, corp, batch(targets)).accepted
    assert container.tokens.fetches == before + 1


# -- contacts and tags ----------------------------------------------------------------------------
def test_customers_are_paged_with_remarks_and_tags(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    big = make_corp(admin, container, sandbox.url, staff=2, customers=250)
    rows = customers(container, big)
    assert len(rows) == 250 and len({r["external_userid"] for r in rows}) == 250
    assert all(r["name"] and r["unionid"] and r["userid"].startswith("staff") for r in rows)
    groups = run(lambda a: a.corp_tags(), container, big)
    tag = groups[0]["tag"][0]["id"]
    untagged = next(r for r in rows if tag not in r["tag_ids"])

    async def tag_one(a: WecomCustomer) -> None:
        await a.mark_tag(untagged["userid"], untagged["external_userid"], add=[tag])

    run(tag_one, container, big)
    again = {r["external_userid"]: r for r in customers(container, big)}
    assert tag in again[untagged["external_userid"]]["tag_ids"]


# -- callbacks ------------------------------------------------------------------------------------
@pytest.fixture
def api(container: Container) -> Any:
    server = ServerThread(create_app(container)).start()
    yield server
    server.stop()


def test_callback_url_verification(container: Container, corp: Corp, api: Any) -> None:
    crypt = WXBizMsgCrypt(corp.token, corp.aes_key, corp.corpid)
    echostr = crypt.encrypt("5927782489442352469")
    ts, nonce = "1411443780", "437374425"
    query = {
        "msg_signature": crypt.sign(ts, nonce, echostr),
        "timestamp": ts,
        "nonce": nonce,
        "echostr": echostr,
    }
    url = f"{api.url}/callbacks/wecom/{corp.corpid}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url) as resp:
        assert resp.read() == b"5927782489442352469"
    query["msg_signature"] = "0" * 40
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(
            f"{api.url}/callbacks/wecom/{corp.corpid}?{urllib.parse.urlencode(query)}"
        )
    assert exc.value.code == 403


def test_deleted_customer_event_is_verified_and_stored_once(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox, api: Any
) -> None:
    corpid = f"ww{secrets.token_hex(8)}"
    hooked = make_corp(
        admin,
        container,
        sandbox.url,
        corpid=corpid,
        callback_url=f"{api.url}/callbacks/wecom/{corpid}",
    )
    assert hooked.corpid == corpid
    ext = ids(container, hooked, 1)[0]
    admin.post(f"/_sandbox/wecom/accounts/{corpid}/delete_customer", {"external_userid": ext})
    deadline = time.monotonic() + 20  # generous under load; returns as soon as it arrives
    while True:
        with container.sessions() as s:
            events = list(
                s.scalars(select(Event).where(Event.kind == "wecom.change_external_contact"))
            )
        if events or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(events) == 1
    payload = events[0].payload
    assert payload["ChangeType"] == "del_follow_user" and payload["ExternalUserID"] == ext
    assert events[0].dedupe_key.startswith(
        f"{corpid}:change_external_contact:del_follow_user:{ext}:"
    )
    # The sandbox records the delivery after our reply: poll for its own view too.
    while (delivered := admin.callbacks(corpid)["callbacks"])[0]["status"] != "delivered":
        assert time.monotonic() < deadline + 20, delivered
        time.sleep(0.05)
    # A forged POST (bad signature) is refused.
    req = urllib.request.Request(
        f"{api.url}/callbacks/wecom/{corpid}?msg_signature=bad&timestamp=1&nonce=2",
        data=b"<xml><Encrypt><![CDATA[AAAA]]></Encrypt></xml>",
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req)
    assert exc.value.code == 403
