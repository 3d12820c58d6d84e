"""The sms_aliyun adapter against its twin over real HTTP (RPC-signed SendBatchSms), plus
SmsReport receipts pushed to the receipts router."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.parse
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
from qunfa.channels.sms_aliyun import SmsAliyun
from qunfa.crypto import aliyun_rpc
from qunfa.domain.outcomes import BatchOutcome, ErrorClass
from qunfa.rules import load
from qunfa.sandbox.admin_client import SandboxAdmin
from qunfa.sandbox.server import EmbeddedSandbox
from tests.integration.test_sms_tencent import (
    phones,
    pushes_done,
    seed_deliveries,
    statuses,
    wait_for,
)

TPL = {"SMS_100001": "双十一全场${discount}折，回T退订", "SMS_200002": "您的验证码是${code}"}
CONTENT = {
    "template_id": "SMS_100001",
    "params": {"discount": "5"},
    "text": "双十一全场5折，回T退订",
    "category": "marketing",
}


def make_account(
    admin: SandboxAdmin,
    c: Container,
    sandbox: EmbeddedSandbox,
    *,
    secret: str | None = None,
    akid: str | None = None,
    **twin: Any,
) -> str:
    akid, real = akid or f"LTAI{secrets.token_hex(8)}", secrets.token_hex(15)
    admin.create_account("sms_aliyun", access_key_id=akid, access_key_secret=real,
                         sign_name="阿里云短信测试", templates=TPL, receipt_delay_seconds=60.0,
                         **twin)  # fmt: skip
    c.accounts.add(
        channel="sms_aliyun",
        app_id=akid,
        credentials={
            "access_key_id": akid,
            "access_key_secret": secret or real,
            "sign_name": "阿里云短信测试",
        },
        base_url=f"{sandbox.url}/sms_aliyun",
    )
    return akid


def send(c: Container, akid: str, recipients: list[str], **kw: Any) -> BatchOutcome:
    batch = OutboundBatch("camp", 0, kw.pop("key", f"qf-{secrets.token_hex(6)}"), "list",
                          kw.pop("content", CONTENT), recipients)  # fmt: skip

    async def main() -> BatchOutcome:
        async with HttpClient(5.0) as http:
            acc = next(a for a in c.accounts.all() if a.app_id == akid)
            adapter = c.accounts.adapter(acc, http)
            assert isinstance(adapter, SmsAliyun)
            return await adapter.send_batch(batch)

    return asyncio.run(main())


@pytest.fixture
def akid(admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox) -> str:
    return make_account(admin, container, sandbox)


def test_send_batch_is_accepted_with_per_number_ids(
    container: Container, akid: str, admin: SandboxAdmin
) -> None:
    given = ["13800000001", "+86 138 0000 0002", "0086-138-0000-0003"]
    out = send(container, akid, given)
    assert out.accepted and out.done and out.platform_msg_id
    assert out.recipient_msg_ids == {
        "13800000001": f"{out.platform_msg_id}:+8613800000001",
        "+86 138 0000 0002": f"{out.platform_msg_id}:+8613800000002",
        "0086-138-0000-0003": f"{out.platform_msg_id}:+8613800000003",
    }
    ledger = admin.ledger("sms_aliyun", akid)
    assert ledger["messages"] == 3 and ledger["max_per_recipient"] == 1


def test_rules_give_100_per_call_and_no_resend() -> None:
    rules = load("sms_aliyun")
    assert SmsAliyun.batch_size(rules, "list") == 100
    assert SmsAliyun.resend_window(rules, 9e9) == 0.0


def test_more_than_100_numbers_is_a_batch_error(container: Container, akid: str) -> None:
    out = send(container, akid, phones(101))
    assert out.error is not None and out.error.code == "isv.MOBILE_COUNT_OVER_LIMIT"
    assert out.error.klass is ErrorClass.BATCH


def test_wrong_secret_is_signature_does_not_match(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    akid = make_account(admin, container, sandbox, secret="wrong")
    out = send(container, akid, phones(2))
    assert out.error is not None and out.error.code == "SignatureDoesNotMatch"
    assert out.error.klass is ErrorClass.ACCOUNT
    assert admin.ledger("sms_aliyun", akid)["messages"] == 0


def test_unknown_access_key_is_an_account_error(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    container.accounts.add(
        channel="sms_aliyun", app_id="LTAIghost",
        credentials={"access_key_id": "LTAIghost", "access_key_secret": "x", "sign_name": "s"},
        base_url=f"{sandbox.url}/sms_aliyun",
    )  # fmt: skip
    out = send(container, "LTAIghost", phones(1))
    assert out.error is not None and out.error.code == "InvalidAccessKeyId.NotFound"
    assert out.error.klass is ErrorClass.ACCOUNT


def _get(url: str, params: dict[str, str]) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{url}?{urllib.parse.urlencode(params)}", timeout=5) as r:
            body: dict[str, Any] = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
    return body


def test_twin_checks_get_signatures_nonces_and_one_byte_changes(
    sandbox: EmbeddedSandbox, admin: SandboxAdmin
) -> None:
    admin.create_account("sms_aliyun", access_key_id="LTAIone", access_key_secret="s3",
                         sign_name="阿里云短信测试", templates=TPL)  # fmt: skip
    action = {"Action": "SendBatchSms", "PhoneNumberJson": '["13800000001"]',
              "SignNameJson": '["阿里云短信测试"]', "TemplateCode": "SMS_200002",
              "TemplateParamJson": '[{"code": "1234"}]'}  # fmt: skip
    url = f"{sandbox.url}/sms_aliyun/"

    def signed(nonce: str, skew: float = 0.0) -> dict[str, str]:
        return aliyun_rpc.signed_params("GET", action, access_key_id="LTAIone", secret="s3",
                                        version="2017-05-25", now=time.time() + skew,
                                        nonce=nonce)  # fmt: skip

    params = signed("n-1")
    assert _get(url, params)["Code"] == "OK"
    assert _get(url, params)["Code"] == "SignatureNonceUsed"  # a replay
    tampered = {**signed("n-2"), "TemplateParamJson": '[{"code": "1235"}]'}
    assert _get(url, tampered)["Code"] == "SignatureDoesNotMatch"
    old = signed("n-3", -901)
    assert _get(url, old)["Code"] == "InvalidTimeStamp.Expired"
    assert admin.ledger("sms_aliyun", "LTAIone")["messages"] == 1


@pytest.mark.parametrize(
    ("content", "code"),
    [
        ({**CONTENT, "template_id": "SMS_999"}, "isv.SMS_TEMPLATE_ILLEGAL"),
        ({**CONTENT, "params": {}}, "isv.TEMPLATE_MISSING_PARAMETERS"),
    ],
)
def test_template_problems_are_batch_errors(
    container: Container, akid: str, content: dict[str, Any], code: str
) -> None:
    out = send(container, akid, phones(2), content=content)
    assert out.error is not None and out.error.code == code
    assert out.error.klass is ErrorClass.BATCH


@pytest.mark.parametrize(
    ("errcode", "errmsg", "klass", "wait"),
    [
        ("isv.BUSINESS_LIMIT_CONTROL", "触发天级流控Permits:10", ErrorClass.QUOTA, None),
        ("isv.BUSINESS_LIMIT_CONTROL", "触发小时级流控Permits:5", ErrorClass.RETRYABLE, 3600.0),
        ("isv.BUSINESS_LIMIT_CONTROL", "触发分钟级流控Permits:1", ErrorClass.RETRYABLE, 60.0),
        ("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号", ErrorClass.BATCH, None),
        ("isv.AMOUNT_NOT_ENOUGH", "账户余额不足", ErrorClass.ACCOUNT, None),
        ("Throttling.User", "flow control", ErrorClass.RETRYABLE, 1.0),
        ("isp.SYSTEM_ERROR", "system error", ErrorClass.RETRYABLE, 5.0),
    ],
)
def test_injected_codes_are_classified_by_meaning(
    container: Container, akid: str, admin: SandboxAdmin,
    errcode: str, errmsg: str, klass: ErrorClass, wait: float | None,
) -> None:  # fmt: skip
    admin.faults(platform="sms_aliyun", error_rate=1.0, errcode=errcode, errmsg=errmsg)
    out = send(container, akid, phones(1))
    assert out.error is not None and out.error.code == errcode and out.error.klass is klass
    if klass is ErrorClass.QUOTA:
        assert out.error.retry_after is not None and out.error.retry_after > 0
    else:
        assert out.error.retry_after == wait


def test_throttling_by_the_twin_is_retryable(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox
) -> None:
    akid = make_account(admin, container, sandbox, rules={"requests_per_second": 1})
    assert send(container, akid, phones(1)).accepted
    out = send(container, akid, phones(1, 7))
    assert out.error is not None and out.error.code == "Throttling.User"
    assert out.error.klass is ErrorClass.RETRYABLE


def test_marketing_text_without_opt_out_is_refused(container: Container, akid: str) -> None:
    out = send(container, akid, phones(1), content={**CONTENT, "text": "双十一全场5折"})
    assert out.error is not None and out.error.klass is ErrorClass.BATCH
    assert "回T退订" in out.error.message


@pytest.fixture
def api(container: Container) -> Iterator[ServerThread]:
    app = create_app(container)
    app.include_router(router)
    server = ServerThread(app).start()
    yield server
    server.stop()


def test_sms_reports_update_deliveries_and_daily_cap_is_reported(
    admin: SandboxAdmin, container: Container, sandbox: EmbeddedSandbox, api: ServerThread
) -> None:
    akid = f"LTAI{secrets.token_hex(8)}"
    url = f"{api.url}/callbacks/sms_aliyun/{akid}"
    make_account(admin, container, sandbox, akid=akid, per_number_daily=1, fail_rate=0.4,
                 callback_url=url)  # fmt: skip
    # 30 numbers: with fail_rate 0.4 on random message ids, "some failed, some not" misses
    # with p = 0.6^30 + 0.4^30 (with 10 it missed 1 run in ~165).
    first = send(container, akid, phones(30))
    # The same two numbers again, spelled nationally: over today's cap of one each.
    again = send(container, akid, ["13800000000", "13800000001"])
    assert first.accepted and again.accepted
    ids = seed_deliveries(container, "sms_aliyun", akid, first.recipient_msg_ids)
    capped = seed_deliveries(container, "sms_aliyun", akid, again.recipient_msg_ids)
    admin.advance_clock(61)
    wait_for(lambda: pushes_done(admin, "sms_aliyun"))
    got, got_capped = statuses(container, ids), statuses(container, capped)
    assert all(
        s == "failed" and r and "BUSINESS_LIMIT_CONTROL" in r for s, r in got_capped.values()
    )
    failed = sum(1 for s, _ in got.values() if s == "failed")
    assert 0 < failed < 30
    assert admin.ledger("sms_aliyun", akid)["messages"] == 30 - failed
    assert admin.ledger("sms_aliyun", akid)["max_per_recipient"] == 1
