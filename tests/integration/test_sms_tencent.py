"""The sms_tencent adapter against its twin over real HTTP (signed SendSms), plus receipts.

One test per error class and per rule; the sandbox ledger says what numbers actually got.
Receipts: the twin pushes Tencent's status reports to the receipts router (mounted on a real
API server), which must turn the matching deliveries (seeded directly in the container's
database with the SerialNo the adapter returned) into sent/failed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from qunfa.api.app import create_app
from qunfa.api.routers.callbacks_receipts import router
from qunfa.api.server import ServerThread
from qunfa.bootstrap import Container
from qunfa.channels.base import OutboundBatch
from qunfa.channels.http import HttpClient
from qunfa.channels.sms_tencent import SmsTencent
from qunfa.crypto import tc3
from qunfa.domain.outcomes import BatchOutcome, ErrorClass
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from qunfa.storage.models import Account, Campaign, Contact, Delivery, Identity

TPL = {"1001": "双十一全场{1}折，详情见 {2}，回T退订", "2002": "您的验证码是{1}"}
CONTENT = {
    "template_id": "1001",
    "params": ["5", "qf.example/s"],
    "text": "双十一全场5折，详情见 qf.example/s，回T退订",
    "category": "marketing",
}


def phones(n: int, start: int = 0) -> list[str]:
    return [f"+86138{start + i:08d}" for i in range(n)]


def new_app_id() -> str:
    return str(1400000000 + secrets.randbelow(10**8))


def make_account(
    admin: SandboxAdmin,
    c: Container,
    sandbox: EmbeddedSandbox,
    *,
    secret_key: str | None = None,
    settings: dict[str, Any] | None = None,
    app: str | None = None,
    callback_token: str = "",
    **twin: Any,
) -> str:
    app = app or new_app_id()
    sid, key = f"AKID{secrets.token_hex(8)}", secrets.token_hex(16)
    spec = {"sdk_app_id": app, "secret_id": sid, "secret_key": key, "sign_name": "腾讯云",
            "templates": TPL, "receipt_delay_seconds": 60.0, **twin}  # fmt: skip
    admin.create_account("sms_tencent", **spec)
    c.accounts.add(
        channel="sms_tencent",
        app_id=app,
        credentials={
            "secret_id": sid,
            "secret_key": secret_key or key,
            "sdk_app_id": app,
            "sign_name": "腾讯云",
            "callback_token": callback_token,
        },
        base_url=f"{sandbox.url}/sms_tencent",
        settings=settings,
    )
    return app


def send(c: Container, app: str, recipients: list[str], **kw: Any) -> BatchOutcome:
    batch = OutboundBatch(
        "camp", 0, kw.pop("key", f"qf-{secrets.token_hex(6)}"), "list",
        kw.pop("content", CONTENT), recipients,
    )  # fmt: skip

    async def main() -> BatchOutcome:
        async with HttpClient(5.0) as http:
            acc = next(a for a in c.accounts.all() if a.app_id == app)
            adapter = c.accounts.adapter(acc, http)
            assert isinstance(adapter, SmsTencent)
            return await adapter.send_batch(batch)

    return asyncio.run(main())


@pytest.fixture
def app_id(admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox) -> str:
    return make_account(admin, container, sandbox)


# -- sending -------------------------------------------------------------------------------------
def test_send_is_accepted_per_number_and_delivered(
    container: Container, app_id: str, admin: SandboxAdmin
) -> None:
    given = ["+8613800000001", "0086 138 0000 0002", "138-0000-0003"]
    out = send(container, app_id, given, key="qf-key-1")
    assert out.accepted and out.done and not out.recipient_failures
    assert set(out.recipient_msg_ids) == set(given)  # keyed by the ids the engine sent
    assert all(":" in sid for sid in out.recipient_msg_ids.values())
    ledger = admin.ledger("sms_tencent", app_id)
    assert ledger["messages"] == 3 and ledger["max_per_recipient"] == 1
    msgs = admin.get(f"/_sandbox/sms_tencent/messages?account={app_id}")["messages"]
    assert {m["session_context"] for m in msgs} == {"qf-key-1"}  # the batch key travels along
    assert {m["fee"] for m in msgs} == {1}


def test_batch_size_comes_from_the_rules() -> None:
    from qunfa.rules import load

    assert SmsTencent.batch_size(load("sms_tencent"), "list") == 200
    assert (
        SmsTencent.idempotent is False and SmsTencent.resend_window(load("sms_tencent"), 9e9) == 0
    )


def test_per_number_daily_cap_fails_that_recipient_only(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    app = make_account(admin, container, sandbox, per_number_daily=2)
    capped, fresh = "+8613900000009", "+8613900000010"
    for _ in range(2):
        assert send(container, app, [capped]).recipient_msg_ids
    out = send(container, app, [capped, fresh])
    assert out.accepted and set(out.recipient_msg_ids) == {fresh}
    err = out.recipient_failures[capped]
    assert err.code == "LimitExceeded.PhoneNumberDailyLimit" and err.klass is ErrorClass.RECIPIENT
    assert admin.ledger("sms_tencent", app)["max_per_recipient"] == 2
    admin.advance_clock(86400)  # a new day (Asia/Shanghai) lifts the cap
    assert send(container, app, [capped]).recipient_msg_ids


def test_invalid_and_repeated_numbers_fail_locally(
    container: Container, app_id: str, admin: SandboxAdmin
) -> None:
    out = send(container, app_id, ["12345", "+14155550100", "+8613800000004", "13800000004"])
    assert out.accepted and set(out.recipient_msg_ids) == {"+8613800000004"}
    assert {r: e.code for r, e in out.recipient_failures.items()} == {
        "12345": "invalid_phone",
        "+14155550100": "invalid_phone",
        "13800000004": "duplicate_phone",  # the same person is not texted twice
    }
    assert all(e.klass is ErrorClass.RECIPIENT for e in out.recipient_failures.values())
    assert "+86" in out.recipient_failures["+14155550100"].message
    assert admin.ledger("sms_tencent", app_id)["messages"] == 1


def test_wrong_secret_key_is_an_account_error(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    app = make_account(admin, container, sandbox, secret_key="not-the-key")
    out = send(container, app, phones(2))
    assert not out.accepted and out.error is not None
    assert out.error.code == "AuthFailure.SignatureFailure"
    assert out.error.klass is ErrorClass.ACCOUNT
    assert admin.ledger("sms_tencent", app)["messages"] == 0


def test_clock_skew_over_five_minutes_is_signature_expire(
    sandbox: EmbeddedSandbox, admin: SandboxAdmin
) -> None:
    admin.create_account("sms_tencent", sdk_app_id="1400123457", secret_id="AKIDtwo",
                         secret_key="k", sign_name="腾讯云", templates=TPL)  # fmt: skip
    raw = b'{"SmsSdkAppId": "1400123457"}'
    for skew, code in ((-250, "MissingParameter.EmptyPhoneNumberSet"),
                       (-301, "AuthFailure.SignatureExpire"),
                       (301, "AuthFailure.SignatureExpire")):  # fmt: skip
        headers = tc3.sign_headers(secret_id="AKIDtwo", secret_key="k", service="sms",
                                   host=sandbox.url.removeprefix("http://"), action="SendSms",
                                   version="2021-01-11", region="ap-guangzhou", payload=raw,
                                   timestamp=int(time.time()) + skew)  # fmt: skip
        req = urllib.request.Request(f"{sandbox.url}/sms_tencent/", data=raw, headers=headers)
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.loads(resp.read())["Response"]["Error"]["Code"] == code
    assert SmsTencent.errors.get("AuthFailure.SignatureExpire") is None  # by prefix:
    assert SmsTencent.classify_code("AuthFailure.SignatureExpire").klass is ErrorClass.ACCOUNT


def test_twin_rejects_a_one_byte_change_to_a_signed_request(
    sandbox: EmbeddedSandbox, admin: SandboxAdmin
) -> None:
    admin.create_account("sms_tencent", sdk_app_id="1400123456", secret_id="AKIDone",
                         secret_key="k", sign_name="腾讯云", templates=TPL)  # fmt: skip
    body = {"PhoneNumberSet": ["+8613800000001"], "SmsSdkAppId": "1400123456",
            "SignName": "腾讯云", "TemplateId": "2002", "TemplateParamSet": ["1234"]}  # fmt: skip
    raw = json.dumps(body, ensure_ascii=False).encode()
    host = sandbox.url.removeprefix("http://")
    headers = tc3.sign_headers(secret_id="AKIDone", secret_key="k", service="sms", host=host,
                               action="SendSms", version="2021-01-11", region="ap-guangzhou",
                               payload=raw, timestamp=int(time.time()))  # fmt: skip

    def post(data: bytes) -> dict[str, Any]:
        req = urllib.request.Request(f"{sandbox.url}/sms_tencent/", data=data, headers=headers)
        with urllib.request.urlopen(req, timeout=5) as resp:
            result: dict[str, Any] = json.loads(resp.read())["Response"]
            return result

    assert post(raw)["SendStatusSet"][0]["Code"] == "Ok"
    changed = post(raw.replace(b"1234", b"1235"))
    assert changed["Error"]["Code"] == "AuthFailure.SignatureFailure"
    assert admin.ledger("sms_tencent", "1400123456")["messages"] == 1


def test_unknown_template_and_wrong_sign_are_batch_errors(
    container: Container, app_id: str
) -> None:
    out = send(container, app_id, phones(2), content={**CONTENT, "template_id": "9999"})
    assert (
        out.error is not None and out.error.code == "FailedOperation.TemplateIncorrectOrUnapproved"
    )
    assert out.error.klass is ErrorClass.BATCH
    out = send(container, app_id, phones(2), content={**CONTENT, "params": ["5"]})
    assert out.error is not None
    assert out.error.code == "FailedOperation.TemplateParamSetNotMatchApprovedTemplate"


def test_more_than_200_numbers_is_refused(container: Container, app_id: str) -> None:
    out = send(container, app_id, phones(201))
    assert out.error is not None and out.error.code == "LimitExceeded.PhoneNumberCountLimit"
    assert out.error.klass is ErrorClass.BATCH


def test_request_rate_limit_is_retryable(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    app = make_account(admin, container, sandbox, rules={"requests_per_second": 1})
    assert send(container, app, phones(1)).accepted
    out = send(container, app, phones(1, 5))
    assert out.error is not None and out.error.code == "RequestLimitExceeded"
    assert out.error.klass is ErrorClass.RETRYABLE and out.error.retry_after == 1.0


@pytest.mark.parametrize(
    ("errcode", "klass"),
    [
        ("InternalError.Timeout", ErrorClass.RETRYABLE),
        ("LimitExceeded.AppDailyLimit", ErrorClass.QUOTA),
        ("FailedOperation.InsufficientBalanceInSmsPackage", ErrorClass.ACCOUNT),
        ("UnauthorizedOperation.SmsSdkAppIdVerifyFail", ErrorClass.ACCOUNT),
    ],
)
def test_injected_request_errors_are_classified(
    container: Container, app_id: str, admin: SandboxAdmin, errcode: str, klass: ErrorClass
) -> None:
    admin.faults(platform="sms_tencent", error_rate=1.0, errcode=errcode, errmsg="injected")
    out = send(container, app_id, phones(1))
    assert out.error is not None and out.error.code == errcode and out.error.klass is klass
    if klass is ErrorClass.QUOTA:
        assert out.error.retry_after is not None and 0 < out.error.retry_after <= 86400 + 5


def test_gateway_error_is_in_doubt_and_the_channel_never_resends(
    container: Container, app_id: str, admin: SandboxAdmin
) -> None:
    admin.faults(platform="sms_tencent", error_rate=1.0, http_status=502)
    out = send(container, app_id, phones(1))
    assert out.in_doubt and out.error is not None and out.error.klass is ErrorClass.RETRYABLE


def test_marketing_without_opt_out_is_refused_before_sending(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    app = make_account(admin, container, sandbox, settings={"opt_out_phrase": "退订请回N"})
    plain = {**CONTENT, "text": "双十一全场5折"}
    out = send(container, app, phones(1), content=plain)
    assert out.error is not None and out.error.klass is ErrorClass.BATCH
    assert "回T退订" in out.error.message
    assert admin.ledger("sms_tencent", app)["messages"] == 0
    ok = send(container, app, phones(1), content={**plain, "text": "双十一全场5折 退订请回N"})
    assert ok.accepted  # the account's own phrase counts


# -- receipts ------------------------------------------------------------------------------------
@pytest.fixture
def api(container: Container) -> Iterator[ServerThread]:
    app = create_app(container)
    app.include_router(router)
    server = ServerThread(app).start()
    yield server
    server.stop()


def seed_deliveries(
    c: Container, channel: str, app_id: str, msg_ids: dict[str, str]
) -> dict[str, int]:
    """Campaign + one contact/identity/delivery per recipient, 'sent' with its message id."""
    now = time.time()
    with c.sessions() as s:
        acc = next(a for a in s.query(Account).all() if a.app_id == app_id and a.channel == channel)
        camp = Campaign(uid=secrets.token_hex(8), name="t", channel=channel, account_id=acc.id,
                        audience="all", mode="list", state="sending", created_at=now)  # fmt: skip
        s.add(camp)
        s.flush()
        ids = {}
        for rid, mid in msg_ids.items():
            contact = Contact(created_at=now, updated_at=now)
            s.add(contact)
            s.flush()
            ident = Identity(contact_id=contact.id, account_id=acc.id, kind="phone",
                             value_enc=c.keyring.encrypt(rid), value_bi=c.keyring.blind(rid),
                             updated_at=now)  # fmt: skip
            s.add(ident)
            s.flush()
            d = Delivery(campaign_id=camp.id, batch_no=0, identity_id=ident.id,
                         contact_id=contact.id, status="sent", platform_msg_id=mid,
                         updated_at=now)  # fmt: skip
            s.add(d)
            s.flush()
            ids[rid] = d.id
        s.commit()
        return ids


def statuses(c: Container, ids: dict[str, int]) -> dict[str, tuple[str, str | None]]:
    with c.sessions() as s:
        rows = {d.id: (d.status, d.reason) for d in s.query(Delivery).all()}
    return {rid: rows[did] for rid, did in ids.items()}


def wait_for(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def pushes_done(admin: SandboxAdmin, twin: str) -> bool:
    items = admin.get(f"/_sandbox/pushes?twin={twin}")["pushes"]
    return bool(items) and all(p["status"] == "delivered" for p in items)


def test_pushed_receipts_update_the_deliveries(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox, api: ServerThread
) -> None:
    app = new_app_id()
    url = f"{api.url}/callbacks/sms_tencent/{app}?token=tok"
    make_account(admin, container, sandbox, app=app, fail_rate=0.5, callback_url=url,
                 callback_token="tok")  # fmt: skip
    # 40 numbers: each receipt fails with p = 0.5 (random message ids), so "both outcomes"
    # misses with p = 2^-39 (with 12 it missed 1 run in ~2,000).
    out = send(container, app, phones(40))
    ids = seed_deliveries(container, "sms_tencent", app, out.recipient_msg_ids)
    admin.advance_clock(61)  # past receipt_delay_seconds
    wait_for(lambda: pushes_done(admin, "sms_tencent"))
    msgs = admin.get(f"/_sandbox/sms_tencent/messages?account={app}")["messages"]
    twin = {m["sid"]: m["status"] for m in msgs}
    got = statuses(container, ids)
    for rid, sid in out.recipient_msg_ids.items():
        assert got[rid][0] == ("failed" if twin[sid] == "failed" else "sent")
    failed = [s for s in got.values() if s[0] == "failed"]
    assert 0 < len(failed) < 40  # both outcomes occurred
    assert all(reason and "MK:0005" in reason for _, reason in failed)
    assert admin.ledger("sms_tencent", app)["messages"] == 40 - len(failed)


def test_receipts_with_a_wrong_token_are_refused(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox, api: ServerThread
) -> None:
    app = make_account(admin, container, sandbox, callback_token="right")
    report = [{"sid": "x", "report_status": "FAIL", "mobile": "13800000000"}]
    req = urllib.request.Request(
        f"{api.url}/callbacks/sms_tencent/{app}?token=wrong",
        data=json.dumps(report).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 403
