"""``sms_aliyun``: Aliyun SMS ``SendBatchSms`` (dysmsapi, version 2017-05-25), reference §6.2.

One batch is one RPC call (signature v1, HMAC-SHA1, POSTed as a form so 100 numbers with their
sign names fit) of ≤100 numbers (``send_max_per_call``), one template, one parameter object per
number. The answer is request-level only: ``{"Code": "OK", "BizId"}`` accepts the whole list
(BizId becomes the batch's platform id; each recipient's id is ``"{BizId}:{+86…}"``, which the
pushed SmsReport receipts are matched by), any other ``Code`` refuses the whole request and is
classified. ``OutId`` carries the batch key. Not idempotent: in doubt → unknown, never re-sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from qunfa.channels.base import Channel, ContentError, OutboundBatch
from qunfa.channels.http import HttpClient, TransportError, decode_json
from qunfa.channels.sms_common import (
    account_opt_out,
    seconds_to_china_midnight,
    split_recipients,
    validate_sms_content,
)
from qunfa.crypto import aliyun_rpc
from qunfa.domain.outcomes import BatchOutcome, ErrorClass, PlatformError
from qunfa.rules import RuleSet

VERSION = "2017-05-25"
E = ErrorClass
ALIYUN_ERRORS: Mapping[int | str, ErrorClass] = {
    # isv.BUSINESS_LIMIT_CONTROL depends on its message: see classify_aliyun.
    "isv.DAY_LIMIT_CONTROL": E.QUOTA,  # the account's daily send limit
    "isv.MOBILE_NUMBER_ILLEGAL": E.BATCH,  # one bad number refuses the whole request
    "isv.MOBILE_COUNT_OVER_LIMIT": E.BATCH,
    "isv.SMS_TEMPLATE_ILLEGAL": E.BATCH,
    "isv.SMS_SIGNATURE_ILLEGAL": E.BATCH,
    "isv.SMS_SIGN_ILLEGAL": E.BATCH,
    "isv.TEMPLATE_MISSING_PARAMETERS": E.BATCH,
    "isv.TEMPLATE_PARAMS_ILLEGAL": E.BATCH,
    "isv.INVALID_JSON_PARAM": E.BATCH,
    "isv.INVALID_PARAMETERS": E.BATCH,
    "isv.PARAM_LENGTH_LIMIT": E.BATCH,
    "isv.SIGN_COUNT_NOT_MATCH": E.BATCH,  # SignNameJson and PhoneNumberJson lengths differ
    "isv.AMOUNT_NOT_ENOUGH": E.ACCOUNT,  # balance: top up, then resume
    "isv.OUT_OF_SERVICE": E.ACCOUNT,
    "isv.ACCOUNT_NOT_EXISTS": E.ACCOUNT,
    "isv.ACCOUNT_ABNORMAL": E.ACCOUNT,
    "isv.PRODUCT_UN_SUBSCRIPT": E.ACCOUNT,
    "isp.RAM_PERMISSION_DENY": E.ACCOUNT,
    "SignatureDoesNotMatch": E.ACCOUNT,  # wrong AccessKeySecret
    "IncompleteSignature": E.ACCOUNT,
    "InvalidAccessKeyId.NotFound": E.ACCOUNT,
    "InvalidAccessKeyId.Inactive": E.ACCOUNT,
    "InvalidTimeStamp.Expired": E.ACCOUNT,  # this machine's clock is off: fix NTP
    "SignatureNonceUsed": E.RETRYABLE,  # a retry signs with a fresh nonce
    "Throttling.User": E.RETRYABLE,
    "Throttling": E.RETRYABLE,
    "isp.SYSTEM_ERROR": E.RETRYABLE,
    "InternalError": E.RETRYABLE,
    "ServiceUnavailable": E.RETRYABLE,
}
RETRY_AFTER = {"Throttling.User": 1.0, "Throttling": 1.0, "isp.SYSTEM_ERROR": 5.0}


def classify_aliyun(code: str, message: str) -> PlatformError:
    """Class and wait for an Aliyun Code; BUSINESS_LIMIT_CONTROL is read by its window."""
    if code == "isv.BUSINESS_LIMIT_CONTROL":
        # 天级流控 (day) is a quota until midnight; 小时级 / 分钟级 pass by themselves.
        if "天级" in message or "day" in message.lower():
            return PlatformError(code, message, E.QUOTA, seconds_to_china_midnight())
        wait = 3600.0 if ("小时" in message or "hour" in message.lower()) else 60.0
        return PlatformError(code, message, E.RETRYABLE, wait)
    klass = ALIYUN_ERRORS.get(code, E.BATCH)
    retry_after = seconds_to_china_midnight() if klass is E.QUOTA else RETRY_AFTER.get(code)
    return PlatformError(code, message, klass, retry_after)


async def post_form(http: HttpClient, url: str, form: Mapping[str, str]) -> Any:
    """POST ``form`` urlencoded and decode the JSON answer, with HttpClient's failure modes.

    ``HttpClient`` only sends JSON bodies, and a GET with 100 numbers and their sign names
    outgrows URL limits; this uses the client's session and raises the same ``TransportError``.
    """
    resp = await http.request_raw("POST", url, data=dict(form))
    return decode_json(resp, url)


class SmsAliyun(Channel):
    key: ClassVar[str] = "sms_aliyun"
    title: ClassVar[str] = "Aliyun SMS (阿里云短信 SendBatchSms)"
    rules_name: ClassVar[str] = "sms_aliyun"
    recipient_kind: ClassVar[str] = "phone"
    modes: ClassVar[frozenset[str]] = frozenset({"list"})
    errors = ALIYUN_ERRORS
    credential_fields: ClassVar[tuple[str, ...]] = (
        "access_key_id",
        "access_key_secret",
        "sign_name",
    )
    sandbox_prefix: ClassVar[str] = "sms_aliyun"
    idempotent: ClassVar[bool] = False  # SendBatchSms does not dedupe: in doubt → unknown
    personalises: ClassVar[bool] = True  # TemplateParamJson carries one object per number

    @classmethod
    def batch_size(cls, rules: RuleSet, mode: str) -> int:
        return rules["send_max_per_call"]

    @classmethod
    def validate_content(cls, content: Mapping[str, Any], rules: RuleSet) -> None:
        """``{"template_id": "SMS_…", "params": {name: value}, "text", "category"}``."""
        validate_sms_content(content, "template_id")
        if not isinstance(content.get("params", {}), dict):
            raise ContentError("params must be an object of the template's ${name} variables")

    def classify(self, code: int | str, message: str) -> PlatformError:
        return classify_aliyun(str(code), message)

    async def send_batch(self, batch: OutboundBatch) -> BatchOutcome:
        try:  # the account's own opt-out phrase is known here, not at validate time
            validate_sms_content(
                batch.content, "template_id", account_opt_out(self.account.settings)
            )
        except ContentError as exc:
            return BatchOutcome(accepted=False, error=PlatformError("content", str(exc), E.BATCH))
        # One illegal number would refuse the whole request: bad and repeated ones stay out.
        phones, failures = split_recipients(
            batch.recipients, lambda code, msg: PlatformError(code, msg, E.RECIPIENT)
        )
        if not phones:
            return BatchOutcome(accepted=True, done=True, recipient_failures=failures)
        creds = self.account.credentials
        # SendBatchSms takes one parameter object PER NUMBER: a personalised batch is still one
        # call, each number with its own rendered parameters.
        per_number = [dict(batch.content_for(rid).get("params") or {}) for rid in phones.values()]
        action = {
            "Action": "SendBatchSms",
            "PhoneNumberJson": json.dumps(list(phones), ensure_ascii=False),
            "SignNameJson": json.dumps([creds["sign_name"]] * len(phones), ensure_ascii=False),
            "TemplateCode": str(batch.content["template_id"]),
            "TemplateParamJson": json.dumps(per_number, ensure_ascii=False),
            "OutId": batch.key,
        }
        form = aliyun_rpc.signed_params(
            "POST",
            action,
            access_key_id=creds["access_key_id"],
            secret=creds["access_key_secret"],
            version=VERSION,
            now=time.time(),
        )
        try:
            await self.ctx.limiter.acquire(
                f"sms_aliyun:{self.account.app_id}", self.rules["requests_per_second"], 1.0
            )
            data = await post_form(self.ctx.http, self.account.base_url.rstrip("/") + "/", form)
        except TransportError as exc:
            error = PlatformError("transport", str(exc), E.RETRYABLE)
            return BatchOutcome(
                accepted=False, error=error, in_doubt=exc.in_doubt, recipient_failures=failures
            )
        code = str(data.get("Code", "")) if isinstance(data, dict) else ""
        if code != "OK":
            error = self.classify(code, str(data.get("Message", "")) if data else "")
            return BatchOutcome(accepted=False, error=error, recipient_failures=failures)
        biz_id = str(data.get("BizId", ""))
        return BatchOutcome(
            accepted=True,
            done=True,
            platform_msg_id=biz_id,
            recipient_msg_ids={rid: f"{biz_id}:{e164}" for e164, rid in phones.items()},
            recipient_failures=failures,
        )
