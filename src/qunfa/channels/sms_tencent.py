"""``sms_tencent``: Tencent Cloud SMS ``SendSms`` (API 3.0, version 2021-01-11), reference §6.1.

One batch is one signed POST of ≤200 numbers (``send_max_per_call``) with one approved
template and its parameters. The answer is final and per number: ``SendStatusSet`` items with
``Code: "Ok"`` carry a ``SerialNo`` (kept as the recipient's message id, so delivery receipts
pushed later match it); other codes are per-number failures. A request-level
``Response.Error`` stops the batch and is classified. Tencent has no dedupe key, so the channel
is not idempotent: an in-doubt batch becomes *unknown*, never re-sent. ``SessionContext``
carries the batch key (echoed back) so an operator can match the platform's records.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

from qunfa.channels.base import Channel, ContentError, OutboundBatch
from qunfa.channels.http import TransportError
from qunfa.channels.sms_common import (
    account_opt_out,
    seconds_to_china_midnight,
    split_recipients,
    validate_sms_content,
)
from qunfa.crypto import tc3
from qunfa.domain.outcomes import BatchOutcome, ErrorClass, PlatformError
from qunfa.rules import RuleSet

VERSION = "2021-01-11"
SERVICE = "sms"
DEFAULT_REGION = "ap-guangzhou"

E = ErrorClass
# Exact codes first; then the longest matching prefix in TENCENT_PREFIXES; else BATCH.
TENCENT_ERRORS: Mapping[int | str, ErrorClass] = {
    "RequestLimitExceeded": E.RETRYABLE,  # over the account's requests/s
    "InternalError": E.RETRYABLE,
    "InternalError.Timeout": E.RETRYABLE,
    "ResourceUnavailable": E.RETRYABLE,
    "FailedOperation.TemplateIncorrectOrUnapproved": E.BATCH,
    "FailedOperation.SignatureIncorrectOrUnapproved": E.BATCH,
    "FailedOperation.TemplateParamSetNotMatchApprovedTemplate": E.BATCH,
    "FailedOperation.ContainDomesticAndInternationalPhoneNumber": E.BATCH,
    "FailedOperation.MarketingSendTimeConstraint": E.RETRYABLE,  # marketing only 8:00–22:00
    "FailedOperation.PhoneNumberInBlacklist": E.RECIPIENT,  # the user replied 回T / blocked
    "FailedOperation.InsufficientBalanceInSmsPackage": E.ACCOUNT,  # top up, then resume
    "LimitExceeded.PhoneNumberCountLimit": E.BATCH,  # more than 200 numbers
    "LimitExceeded.AppDailyLimit": E.QUOTA,
    "LimitExceeded.AppGlobalDailyLimit": E.QUOTA,
    "LimitExceeded.AppMainlandChinaDailyLimit": E.QUOTA,
    "LimitExceeded.DailyLimit": E.QUOTA,
    "MissingParameter.EmptyPhoneNumberSet": E.BATCH,
    "InvalidParameterValue.TemplateParameterLengthLimit": E.BATCH,
    "InvalidParameterValue.IncorrectPhoneNumber": E.RECIPIENT,
    "UnsupportedOperation.ContainDomesticAndInternationalPhoneNumber": E.BATCH,
}
TENCENT_PREFIXES: Mapping[str, ErrorClass] = {
    "AuthFailure.": E.ACCOUNT,  # SignatureFailure, SignatureExpire, SecretIdNotFound …
    "UnauthorizedOperation.": E.ACCOUNT,  # SmsSdkAppIdVerifyFail, not activated …
    "InternalError.": E.RETRYABLE,
    "LimitExceeded.PhoneNumber": E.RECIPIENT,  # per-number daily / hourly / 30 s caps
    "InvalidParameterValue.IncorrectPhoneNumber": E.RECIPIENT,
    "FailedOperation.": E.BATCH,
    "InvalidParameter": E.BATCH,
    "MissingParameter": E.BATCH,
}
# Parallel SendSms calls of one personalised batch (each still waits for the rate limiter).
PERSONAL_CONCURRENCY = 8
RETRY_AFTER = {"RequestLimitExceeded": 1.0, "FailedOperation.MarketingSendTimeConstraint": 3600.0}


def classify_tencent(code: str, message: str) -> PlatformError:
    """Class and minimum wait for a Tencent SMS error code (request-level or per number)."""
    klass = TENCENT_ERRORS.get(code)
    if klass is None:
        prefixes = [p for p in TENCENT_PREFIXES if code.startswith(p)]
        klass = TENCENT_PREFIXES[max(prefixes, key=len)] if prefixes else E.BATCH
    retry_after = RETRY_AFTER.get(code)
    if klass is E.QUOTA:
        retry_after = seconds_to_china_midnight()
    return PlatformError(code, message, klass, retry_after=retry_after)


def _params_key(content: Mapping[str, Any]) -> tuple[str, ...]:
    """What makes two recipients' SendSms calls differ: the rendered parameters."""
    return tuple(str(p) for p in content.get("params", []))


class SmsTencent(Channel):
    key: ClassVar[str] = "sms_tencent"
    title: ClassVar[str] = "Tencent Cloud SMS (腾讯云短信 SendSms)"
    rules_name: ClassVar[str] = "sms_tencent"
    recipient_kind: ClassVar[str] = "phone"
    modes: ClassVar[frozenset[str]] = frozenset({"list"})
    errors = TENCENT_ERRORS
    credential_fields: ClassVar[tuple[str, ...]] = (
        "secret_id",
        "secret_key",
        "sdk_app_id",
        "sign_name",
    )
    sandbox_prefix: ClassVar[str] = "sms_tencent"
    idempotent: ClassVar[bool] = False  # no platform dedupe: in doubt → unknown
    personalises: ClassVar[bool] = True  # one SendSms per distinct parameter set

    @classmethod
    def batch_size(cls, rules: RuleSet, mode: str) -> int:
        return rules["send_max_per_call"]

    @classmethod
    def validate_content(cls, content: Mapping[str, Any], rules: RuleSet) -> None:
        """``{"template_id", "params": [str], "text", "category"}``; marketing needs 回T退订."""
        validate_sms_content(content, "template_id")
        params = content.get("params", [])
        if not isinstance(params, list) or not all(isinstance(p, str | int) for p in params):
            raise ContentError("params must be a list of strings, in the template's {1}, {2} order")

    def classify(self, code: int | str, message: str) -> PlatformError:
        return classify_tencent(str(code), message)

    @staticmethod
    def classify_code(code: str, message: str = "") -> PlatformError:
        """:func:`classify_tencent` without an instance (docs, tests, the CLI)."""
        return classify_tencent(code, message)

    def _request(
        self, batch: OutboundBatch, phones: list[str], content: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        creds = self.account.credentials
        content = batch.content if content is None else content
        return {
            "PhoneNumberSet": phones,
            "SmsSdkAppId": creds["sdk_app_id"],
            "SignName": creds["sign_name"],
            "TemplateId": str(content["template_id"]),
            "TemplateParamSet": [str(p) for p in content.get("params", [])],
            "SessionContext": batch.key,
        }

    async def send_batch(self, batch: OutboundBatch) -> BatchOutcome:
        """One SendSms call, or for a personalised batch one call per distinct parameter set.

        SendSms takes ONE ``TemplateParamSet`` for every number of a call, so recipients whose
        rendered parameters are identical share a call (≤200 numbers) and the others get their
        own; calls run up to ``PERSONAL_CONCURRENCY`` at a time under the account's rate limit.
        Results are merged: accepted numbers keep their SerialNo even when another call of the
        batch failed (the batch then reports that call's error; the sent ones stay sent).
        """
        try:  # the account's own opt-out phrase is known here, not at validate time
            validate_sms_content(
                batch.content, "template_id", account_opt_out(self.account.settings)
            )
        except ContentError as exc:
            return BatchOutcome(accepted=False, error=PlatformError("content", str(exc), E.BATCH))
        # Bad or repeated numbers are never sent: those recipients fail, the rest go.
        sent_as, failures = split_recipients(
            batch.recipients, lambda code, msg: PlatformError(code, msg, E.RECIPIENT)
        )
        if not sent_as:
            return BatchOutcome(accepted=True, done=True, recipient_failures=failures)
        phone_of = {rid: e164 for e164, rid in sent_as.items()}
        calls: list[tuple[Mapping[str, Any], list[str]]] = []
        for content, rids in batch.groups(_params_key):
            phones = [phone_of[r] for r in rids if r in phone_of]
            if phones:
                calls.append((content, phones))
        gate = asyncio.Semaphore(PERSONAL_CONCURRENCY)

        async def one(content: Mapping[str, Any], phones: list[str]) -> Any:
            async with gate:
                return await self._send_call(batch, phones, content)

        answers = await asyncio.gather(*(one(c, p) for c, p in calls))
        msg_ids: dict[str, str] = {}
        errors: list[PlatformError] = []
        in_doubt = False
        request_ids: list[str] = []
        for answer in answers:
            if isinstance(answer, TransportError):
                errors.append(PlatformError("transport", str(answer), E.RETRYABLE))
                in_doubt = in_doubt or answer.in_doubt
                continue
            part = self._outcome(answer, sent_as, failures)
            if part.error is not None:
                errors.append(part.error)
                continue
            msg_ids.update(part.recipient_msg_ids)
            if part.platform_msg_id:
                request_ids.append(part.platform_msg_id)
        if errors:
            return BatchOutcome(
                accepted=False,
                error=errors[0],
                in_doubt=in_doubt,
                recipient_msg_ids=msg_ids,
                recipient_failures=failures,
            )
        return BatchOutcome(
            accepted=True,
            done=True,
            platform_msg_id=request_ids[0] if request_ids else None,
            recipient_msg_ids=msg_ids,
            recipient_failures=failures,
        )

    async def _send_call(
        self, batch: OutboundBatch, phones: list[str], content: Mapping[str, Any]
    ) -> Any:
        """One signed SendSms: the decoded answer, or the TransportError (returned, not raised,
        so one call's failure does not hide the others' results)."""
        creds = self.account.credentials
        url = self.account.base_url.rstrip("/") + "/"
        body = self._request(batch, phones, content)
        # Byte-identical to what request_json sends (same json.dumps call): the signature
        # covers the body's SHA-256.
        payload = json.dumps(body, ensure_ascii=False).encode()
        headers = tc3.sign_headers(
            secret_id=creds["secret_id"],
            secret_key=creds["secret_key"],
            service=SERVICE,
            host=urlsplit(url).netloc,
            action="SendSms",
            version=VERSION,
            region=str(self.account.settings.get("region") or DEFAULT_REGION),
            payload=payload,
            timestamp=int(time.time()),
        )
        try:
            await self.ctx.limiter.acquire(
                f"sms_tencent:{self.account.app_id}", self.rules["requests_per_second"], 1.0
            )
            return await self.ctx.http.request_json("POST", url, body=body, headers=headers)
        except TransportError as exc:
            return exc

    def _outcome(
        self, data: Any, sent_as: dict[str, str], failures: dict[str, PlatformError]
    ) -> BatchOutcome:
        response = data.get("Response", {}) if isinstance(data, dict) else {}
        if "Error" in response:
            err = response["Error"]
            error = self.classify(str(err.get("Code", "")), str(err.get("Message", "")))
            return BatchOutcome(accepted=False, error=error, recipient_failures=failures)
        msg_ids: dict[str, str] = {}
        for item in response.get("SendStatusSet", []):
            rid = sent_as.get(str(item.get("PhoneNumber", "")), str(item.get("PhoneNumber")))
            if item.get("Code") == "Ok":
                msg_ids[rid] = str(item.get("SerialNo", ""))
            else:
                failures[rid] = self.classify(str(item.get("Code")), str(item.get("Message", "")))
        return BatchOutcome(
            accepted=True,
            done=True,
            platform_msg_id=str(response.get("RequestId") or "") or None,
            recipient_msg_ids=msg_ids,
            recipient_failures=failures,
        )
