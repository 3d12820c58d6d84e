"""``feishu``: Feishu / Lark batch messages through ``message/v4/batch_send`` (reference §5).

One batch is one ``POST /open-apis/message/v4/batch_send/`` with up to ``ids_per_list`` open_ids;
``content`` is an object (not the JSON string im/v1 wants). The answer's ``message_id``
(``bm-…``) is the batch's platform id and ``invalid_open_ids`` are per-recipient failures.
Delivery is asynchronous: ``settle`` polls ``im/v1/batch_messages/:id/get_progress`` until every
valid user succeeded, or — because success can stay below valid for bot-invisible users — until
``progress_final_after_seconds`` after the first scheduled snapshot this process saw.

batch_send has no dedupe key (im/v1's ``uuid`` does not exist here), so the channel is not
idempotent: an in-doubt batch becomes unknown. Token errors: 99991661 (missing) and 99991663
(invalid) make the adapter re-fetch the tenant_access_token once, as the Feishu SDKs do.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

from qunfa import rules as rulebook
from qunfa.channels.base import (
    AccountConfig,
    Channel,
    ChannelContext,
    ContentError,
    OutboundBatch,
    Settlement,
)
from qunfa.channels.http import TransportError
from qunfa.channels.wechat_oa import CHINA, next_china_midnight, seconds_until
from qunfa.domain.outcomes import BatchOutcome, ErrorClass, PlatformError

E = ErrorClass
FEISHU_ERRORS: Mapping[int | str, ErrorClass] = {
    -1: E.RETRYABLE,
    2200: E.RETRYABLE,  # internal error
    10002: E.RETRYABLE,  # send fail (the platform's own failure; nothing was accepted)
    99991400: E.RETRYABLE,  # request trigger frequency limit (50/s, 1000/min)
    11247: E.QUOTA,  # 500,000 messages/day per app reached
    99991661: E.ACCOUNT,  # missing access token — still after one re-fetch
    99991663: E.ACCOUNT,  # invalid access token — still after one re-fetch
    10003: E.BATCH,  # invalid param
    10014: E.ACCOUNT,  # app secret invalid
    11203: E.ACCOUNT,  # no permission to send to users in batch
    11204: E.ACCOUNT,  # no permission to send to departments in batch
    11205: E.ACCOUNT,  # app has no bot ability
    11207: E.ACCOUNT,  # app unusable
    11209: E.ACCOUNT,  # app does not exist
    11210: E.ACCOUNT,  # app not installed in the tenant
    11223: E.ACCOUNT,  # no im write permission
    11101: E.RECIPIENT,  # open_id does not exist (no listed user is valid)
    11227: E.BATCH,  # bad image_key
    11246: E.BATCH,  # content build failed
    11312: E.BATCH,  # content failed audit
    230001: E.BATCH,  # im/v1: invalid param
    230006: E.ACCOUNT,  # im/v1: no bot
    230012: E.BATCH,  # im/v1: not the sender
    230027: E.ACCOUNT,  # im/v1: no permission
    230030: E.BATCH,  # im/v1: bad batch message id
}
TOKEN_ERRORS = frozenset({99991661, 99991663})
MSG_TYPES: Mapping[str, str | None] = {  # msg_type → the field its content object needs
    "text": "text",
    "post": "post",
    "image": "image_key",
    "share_chat": "share_chat_id",
    "interactive": None,  # a card object replaces content
}

# message_id → when this process first saw it scheduled with success < valid (see settle).
_first_short: dict[str, float] = {}


class FeishuApiError(Exception):
    def __init__(self, error: PlatformError) -> None:
        super().__init__(error.describe())
        self.error = error


class Feishu(Channel):
    key: ClassVar[str] = "feishu"
    title: ClassVar[str] = "Feishu / Lark batch message (飞书批量消息)"
    rules_name: ClassVar[str] = "feishu"
    recipient_kind: ClassVar[str] = "feishu_open_id"
    modes: ClassVar[frozenset[str]] = frozenset({"list"})
    errors = FEISHU_ERRORS
    credential_fields: ClassVar[tuple[str, ...]] = ("app_id", "app_secret")
    sandbox_prefix: ClassVar[str] = "feishu"
    idempotent: ClassVar[bool] = False  # batch_send has no dedupe key
    poll_interval: ClassVar[float | None] = float(rulebook.load("feishu")["poll_interval_seconds"])

    def __init__(self, account: AccountConfig, ctx: ChannelContext) -> None:
        super().__init__(account, ctx)
        self.root = account.base_url.rstrip("/") + "/open-apis"
        self.app_id = account.credentials["app_id"]

    @classmethod
    def batch_size(cls, rules: rulebook.RuleSet, mode: str) -> int:
        return rules["ids_per_list"]

    @classmethod
    def validate_content(cls, content: Mapping[str, Any], rules: rulebook.RuleSet) -> None:
        msg_type = str(content.get("msg_type"))
        if msg_type not in MSG_TYPES:
            raise ContentError(
                f"msg_type {msg_type!r} cannot be batch-sent; use one of {', '.join(MSG_TYPES)}"
            )
        if msg_type == "interactive":
            if not isinstance(content.get("card"), dict) or not content["card"]:
                raise ContentError("an interactive message needs a card object")
            return
        body = content.get("content")
        if not isinstance(body, dict):
            raise ContentError("content must be an object, e.g. {'text': '…'} (not a string)")
        field = MSG_TYPES[msg_type]
        if not body.get(field):
            raise ContentError(f"a {msg_type} message needs content.{field}")

    # -- HTTP -------------------------------------------------------------------------------------
    def classify(self, code: int | str, message: str) -> PlatformError:
        klass = self.errors.get(code, E.BATCH)
        wait: float | None = None
        if code == 11247:  # the daily quota resets at midnight, China time
            now = datetime.now(CHINA)
            wait = seconds_until(next_china_midnight(now), now)
        elif code == 99991400:
            wait = float(self.rules["rate_limit_retry_seconds"])
        return PlatformError(code, message, klass, retry_after=wait)

    async def _fetch_token(self) -> tuple[str, float]:
        body = {"app_id": self.app_id, "app_secret": self.account.credentials["app_secret"]}
        url = f"{self.root}/auth/v3/tenant_access_token/internal"
        data = await self.ctx.http.request_json("POST", url, body=body)
        if int(data.get("code", -1)) != 0 or not data.get("tenant_access_token"):
            code = int(data.get("code", -1))
            klass = E.RETRYABLE if self.errors.get(code) is E.RETRYABLE else E.ACCOUNT
            raise FeishuApiError(PlatformError(code, str(data.get("msg", "")), klass))
        return str(data["tenant_access_token"]), float(data.get("expire", 7200))

    async def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """Call ``/open-apis/<path>`` with the shared tenant token (re-fetched once on
        99991661/99991663); returns ``data`` when ``code`` is 0, else raises
        :class:`FeishuApiError`. HTTP 400 answers (im/v1, token errors) carry the same body."""
        url = f"{self.root}/{path}"

        async def request(token: str) -> dict[str, Any]:
            headers = {"Authorization": f"Bearer {token}"}
            data: dict[str, Any] = await self.ctx.http.request_json(
                method, url, body=body, headers=headers
            )
            return data

        data = await self.ctx.tokens.call_with_token(
            self.account.id,
            self._fetch_token,
            request,
            lambda answer: int(answer.get("code", -1)) in TOKEN_ERRORS,
        )
        code = int(data.get("code", -1))
        if code != 0:
            raise FeishuApiError(self.classify(code, str(data.get("msg", ""))))
        return dict(data.get("data") or {})

    async def _limit(self, api: str) -> None:
        """Both windows of the app's per-API limit: requests/s and requests/min."""
        key = f"feishu:{self.app_id}:{api}"
        await self.ctx.limiter.acquire(f"{key}:s", self.rules["requests_per_second"], 1.0)
        await self.ctx.limiter.acquire(f"{key}:m", self.rules["requests_per_minute"], 60.0)

    # -- contract ---------------------------------------------------------------------------------
    async def send_batch(self, batch: OutboundBatch) -> BatchOutcome:
        msg_type = str(batch.content.get("msg_type", "text"))
        body: dict[str, Any] = {"msg_type": msg_type, "open_ids": list(batch.recipients)}
        if msg_type == "interactive":
            body["card"] = dict(batch.content["card"])
        else:
            body["content"] = dict(batch.content.get("content") or {})
        try:
            await self._limit("batch_send")
            data = await self.call("POST", "message/v4/batch_send/", body)
        except TransportError as exc:
            error = PlatformError("transport", str(exc), E.RETRYABLE)
            return BatchOutcome(accepted=False, error=error, in_doubt=exc.in_doubt)
        except FeishuApiError as exc:
            return BatchOutcome(accepted=False, error=exc.error)
        invalid = PlatformError(11101, "open_id not exist", E.RECIPIENT)
        failures = {str(o): invalid for o in data.get("invalid_open_ids") or []}
        return BatchOutcome(
            accepted=True, platform_msg_id=str(data["message_id"]), recipient_failures=failures
        )

    async def settle(self, platform_msg_id: str) -> Settlement | None:
        await self._limit("batch_messages")
        data = await self.call("GET", f"im/v1/batch_messages/{platform_msg_id}/get_progress")
        progress = data.get("batch_message_send_progress") or {}
        valid = int(progress.get("valid_user_ids_count", 0))
        success = int(progress.get("success_user_ids_count", 0))
        read = int(progress.get("read_user_ids_count", 0))
        counts = {"total": valid, "sent": success, "error": max(0, valid - success), "read": read}
        status = f"{success} of {valid} delivered"
        if valid == 0:  # not scheduled yet
            return Settlement(final=False, ok=False, status="scheduling", counts=counts)
        if success >= valid:
            _first_short.pop(platform_msg_id, None)
            return Settlement(final=True, ok=True, status=status, counts=counts)
        first = _first_short.setdefault(platform_msg_id, time.time())
        if time.time() - first < self.rules["progress_final_after_seconds"]:
            return Settlement(final=False, ok=False, status=status, counts=counts)
        _first_short.pop(platform_msg_id, None)  # bot-invisible users never count as success
        return Settlement(final=True, ok=success > 0, status=status, counts=counts)

    async def read_counts(self, platform_msg_id: str) -> dict[str, int]:
        """``read_user``: how many users read the batch (``read_count``, ``total_count``)."""
        await self._limit("batch_messages")
        data = await self.call("GET", f"im/v1/batch_messages/{platform_msg_id}/read_user")
        read_user = data.get("read_user") or {}
        return {k: int(read_user.get(k, 0)) for k in ("read_count", "total_count")}
