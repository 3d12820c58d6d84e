"""``wechat_template``: Official Account template messages (模板消息), one openid per call.

A batch is a chunk of recipients sent concurrently inside one task. ``client_msg_id`` is the
batch key: the platform sends the same openid + client_msg_id once within 10 minutes, so a
retry inside that window cannot double-send; the per-recipient ledger (written around the
calls) covers the rest. The synchronous answer is final per recipient; TEMPLATESENDJOBFINISH
later reports users who blocked the message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, ClassVar

from qunfa.channels.base import (
    AccountConfig,
    Channel,
    ChannelContext,
    ContentError,
    OutboundBatch,
)
from qunfa.channels.http import TransportError
from qunfa.channels.wechat_oa import WECHAT_ERRORS, WechatApi, WechatApiError
from qunfa.domain.outcomes import BatchOutcome, ErrorClass, PlatformError, most_severe
from qunfa.rules import RuleSet

E = ErrorClass
TEMPLATE_ERRORS: Mapping[int | str, ErrorClass] = {
    **WECHAT_ERRORS,
    40003: E.RECIPIENT,  # not a follower of this account
    40037: E.BATCH,  # bad template_id
    47003: E.BATCH,  # bad argument (errmsg names the field)
    41030: E.BATCH,  # bad page
    45009: E.QUOTA,  # template messages: the daily quota is spent
}
CONCURRENCY = 32
TEMPLATE_BATCH = 1000


class WechatTemplate(Channel):
    key: ClassVar[str] = "wechat_template"
    title: ClassVar[str] = "WeChat template message (模板消息)"
    rules_name: ClassVar[str] = "wechat_oa"
    recipient_kind: ClassVar[str] = "openid"
    modes: ClassVar[frozenset[str]] = frozenset({"template"})
    errors = TEMPLATE_ERRORS
    account_channel: ClassVar[str | None] = "wechat_oa"
    sandbox_prefix: ClassVar[str] = "wechat"
    dedupe_window_rule: ClassVar[str | None] = "template_client_msg_id_window_seconds"

    @classmethod
    def validate_content(cls, content: Mapping[str, Any], rules: RuleSet) -> None:
        if not content.get("template_id"):
            raise ContentError("a template message needs template_id (--template ID)")
        data = content.get("data")
        if not isinstance(data, dict) or not data:
            raise ContentError("a template message needs data fields (--field key=value …)")
        limit = rules["template_thing_max_chars"]
        for key, value in data.items():
            if key.startswith("thing") and len(str(value)) > limit:
                raise ContentError(
                    f"template field {key} is {len(str(value))} characters; "
                    f"'thing' values take at most {limit}"
                )

    def __init__(self, account: AccountConfig, ctx: ChannelContext) -> None:
        super().__init__(account, ctx)
        self.api = WechatApi(account, ctx, self.errors)

    @classmethod
    def batch_size(cls, rules: RuleSet, mode: str) -> int:
        return TEMPLATE_BATCH

    def classify(self, code: int | str, message: str) -> PlatformError:
        return self.api.classify(int(code), message)

    def _body(self, content: Mapping[str, Any], openid: str, key: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "touser": openid,
            "template_id": content["template_id"],
            "data": {k: {"value": v} for k, v in dict(content.get("data", {})).items()},
            "client_msg_id": key,
        }
        for optional in ("url", "miniprogram"):
            if content.get(optional):
                body[optional] = content[optional]
        return body

    async def send_batch(self, batch: OutboundBatch) -> BatchOutcome:
        sem = asyncio.Semaphore(CONCURRENCY)
        msg_ids: dict[str, str] = {}
        failures: dict[str, PlatformError] = {}
        stop: list[PlatformError] = []  # a batch- or account-level error stops the rest
        doubt = False

        async def one(openid: str) -> None:
            nonlocal doubt
            async with sem:
                if stop:
                    return
                try:
                    data = await self.api.call(
                        "POST",
                        "message/template/send",
                        self._body(batch.content, openid, batch.key),
                    )
                except TransportError as exc:
                    doubt = doubt or exc.in_doubt
                    stop.append(PlatformError("transport", str(exc), E.RETRYABLE))
                    return
                except WechatApiError as exc:
                    stop.append(exc.error)
                    return
                code = int(data.get("errcode", 0))
                if code == 0:
                    msg_ids[openid] = str(data.get("msgid", ""))
                    return
                error = self.classify(code, str(data.get("errmsg", "")))
                if error.klass is E.RECIPIENT:
                    failures[openid] = error
                else:
                    stop.append(error)

        await asyncio.gather(*(one(o) for o in batch.recipients))
        if stop:
            worst = most_severe(stop)
            return BatchOutcome(
                accepted=False,
                error=worst,
                in_doubt=doubt,
                recipient_failures=failures,
                recipient_msg_ids=msg_ids,
            )
        return BatchOutcome(
            accepted=True,
            done=True,
            platform_msg_id=None,
            recipient_failures=failures,
            recipient_msg_ids=msg_ids,
        )
