"""``dingtalk``: DingTalk work notifications (工作通知) through ``asyncsend_v2`` (reference §4).

One batch is one ``topapi/message/corpconversation/asyncsend_v2`` call with up to
``userids_per_call`` userids as a comma string; the answer is a ``task_id`` (the batch's
platform id) and nothing more: delivery is asynchronous. ``settle`` polls ``getsendprogress``
until status 2, then ``getsendresult`` maps the invalid / forbidden / failed lists to failed
recipients and the read / unread lists to sent ones.

Over-limit sends are silent on DingTalk: past 500 notifications per employee per day, or the same
content to the same employee twice in a day, the call still succeeds and the recipient only shows
up in ``forbidden_user_id_list``. There is no dedupe key, so the channel is not idempotent (an
in-doubt batch becomes unknown). The same-content rule does protect a retry within the same
day from reaching anyone twice, but qunfa does not rely on it: it cannot tell a dropped retry from
a first delivery.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from qunfa import rules as rulebook
from qunfa.channels.base import (
    AccountConfig,
    Channel,
    ChannelContext,
    ContentError,
    OutboundBatch,
    RecipientOutcome,
    Settlement,
)
from qunfa.channels.http import TransportError
from qunfa.domain.outcomes import BatchOutcome, ErrorClass, PlatformError
from qunfa.rules import RuleSet

E = ErrorClass
# errcode 88 ("鉴权异常") carries the real reason in sub_code; we classify by the sub_code.
DINGTALK_ERRORS: Mapping[int | str, ErrorClass] = {
    -1: E.RETRYABLE,  # 系统繁忙
    143103: E.RETRYABLE,  # single app: recipients per minute exceeded
    143104: E.RETRYABLE,  # corp: recipients per minute exceeded
    88: E.ACCOUNT,  # 鉴权异常 without a sub_code we know
    40014: E.ACCOUNT,  # 不合法的access_token — still rejected after one re-fetch
    42001: E.ACCOUNT,  # access_token 超时 — still rejected after one re-fetch
    40089: E.ACCOUNT,  # 不合法的 appkey 或 appsecret
    40056: E.ACCOUNT,  # 不合法的 agentid
    60011: E.ACCOUNT,  # 没有调用该接口的权限
    60020: E.ACCOUNT,  # 访问 ip 不在白名单之中
    40035: E.BATCH,  # 不合法的参数 (list too long, bad msg …)
    400002: E.BATCH,  # TOP: invalid parameter
}
TOKEN_ERRORS = frozenset({40014, 42001})
THROTTLES = frozenset({143103, 143104})
MSG_FIELDS: Mapping[str, tuple[str, ...]] = {  # required fields of each msgtype's object
    "text": ("content",),
    "markdown": ("title", "text"),
    "link": ("messageUrl", "picUrl", "title", "text"),
    "oa": ("message_url", "body"),
    "action_card": ("title", "markdown"),
    "image": ("media_id",),
    "voice": ("media_id", "duration"),
    "file": ("media_id",),
}
# Reasons DingTalk gives in getsendresult.forbidden_list (UNCONFIRMED codes, see docs).
FORBIDDEN_REASONS = {
    143105: "over the per-employee daily limit (silently dropped by DingTalk)",
    143106: "same content already sent today (silently dropped by DingTalk)",
}


class DingTalkApiError(Exception):
    def __init__(self, error: PlatformError) -> None:
        super().__init__(error.describe())
        self.error = error


def error_code(data: Mapping[str, Any]) -> int:
    """The errcode to act on: errcode 88 names the real reason in ``sub_code``."""
    code = int(data.get("errcode", 0))
    sub = str(data.get("sub_code") or "")
    return int(sub) if code == 88 and sub.lstrip("-").isdigit() else code


class DingTalk(Channel):
    key: ClassVar[str] = "dingtalk"
    title: ClassVar[str] = "DingTalk work notification (钉钉工作通知)"
    rules_name: ClassVar[str] = "dingtalk"
    recipient_kind: ClassVar[str] = "dingtalk_userid"
    modes: ClassVar[frozenset[str]] = frozenset({"list"})
    errors = DINGTALK_ERRORS
    credential_fields: ClassVar[tuple[str, ...]] = ("appkey", "appsecret", "agent_id")
    sandbox_prefix: ClassVar[str] = "dingtalk"
    idempotent: ClassVar[bool] = False  # no dedupe key: an in-doubt task becomes unknown
    poll_interval: ClassVar[float | None] = float(
        rulebook.load("dingtalk")["poll_interval_seconds"]
    )

    def __init__(self, account: AccountConfig, ctx: ChannelContext) -> None:
        super().__init__(account, ctx)
        self.root = account.base_url.rstrip("/")
        creds = account.credentials
        self.appkey = creds["appkey"]
        self.agent_id = int(creds["agent_id"])

    @classmethod
    def batch_size(cls, rules: RuleSet, mode: str) -> int:
        return rules["userids_per_call"]

    @classmethod
    def validate_content(cls, content: Mapping[str, Any], rules: RuleSet) -> None:
        msgtype = str(content.get("msgtype"))
        if msgtype not in MSG_FIELDS:
            raise ContentError(
                f"msgtype {msgtype!r} is not a DingTalk work notification; "
                f"use one of {', '.join(MSG_FIELDS)}"
            )
        body = content.get(msgtype)
        if not isinstance(body, dict):
            raise ContentError(f"content needs a {msgtype!r} object")
        missing = [f for f in MSG_FIELDS[msgtype] if not body.get(f)]
        if msgtype == "action_card" and not (body.get("single_url") or body.get("btn_json_list")):
            missing.append("single_url or btn_json_list")
        if missing:
            raise ContentError(f"{msgtype} message needs {', '.join(missing)}")
        size = len(json.dumps(cls.message(content), ensure_ascii=False).encode())
        if size > rules["msg_max_bytes"]:
            raise ContentError(
                f"the message is {size} bytes; DingTalk takes at most {rules['msg_max_bytes']}"
            )

    @staticmethod
    def message(content: Mapping[str, Any]) -> dict[str, Any]:
        msgtype = str(content.get("msgtype", "text"))
        return {"msgtype": msgtype, msgtype: dict(content[msgtype])}

    # -- HTTP -------------------------------------------------------------------------------------
    def classify(self, code: int | str, message: str) -> PlatformError:
        klass = self.errors.get(code, E.BATCH)
        wait = self.rules["throttle_retry_seconds"] if code in THROTTLES else None
        return PlatformError(code, message, klass, retry_after=wait)

    async def _fetch_token(self) -> tuple[str, float]:
        params = {"appkey": self.appkey, "appsecret": self.account.credentials["appsecret"]}
        data = await self.ctx.http.request_json("GET", f"{self.root}/gettoken", params=params)
        if not data.get("access_token"):
            code = error_code(data)
            # Anything but "busy" while fetching a token is a credentials problem.
            klass = E.RETRYABLE if code == -1 else E.ACCOUNT
            raise DingTalkApiError(PlatformError(code, str(data.get("errmsg", "")), klass))
        return str(data["access_token"]), float(data.get("expires_in", 7200))

    async def call(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``path`` with the shared token, re-fetched once on 40014/42001 (also as 88).

        Returns the body when errcode is 0; raises :class:`DingTalkApiError` (classified) for
        any other errcode and ``TransportError`` for transport failures.
        """
        url = f"{self.root}/{path}"

        async def request(token: str) -> dict[str, Any]:
            data: dict[str, Any] = await self.ctx.http.request_json(
                "POST", url, params={"access_token": token}, body=body
            )
            return data

        data = await self.ctx.tokens.call_with_token(
            self.account.id,
            self._fetch_token,
            request,
            lambda answer: error_code(answer) in TOKEN_ERRORS,
        )
        code = error_code(data)
        if code != 0:
            raise DingTalkApiError(self.classify(code, str(data.get("errmsg", ""))))
        return data

    async def _throttle(self, recipients: int) -> None:
        """Stay under recipients/minute: one limiter slot per recipient of the call."""
        key = f"dingtalk:{self.appkey}:recipients"
        limit = self.rules["recipients_per_minute"]
        for _ in range(min(recipients, limit)):
            await self.ctx.limiter.acquire(key, limit, 60.0)

    # -- contract ---------------------------------------------------------------------------------
    async def send_batch(self, batch: OutboundBatch) -> BatchOutcome:
        body = {
            "agent_id": self.agent_id,
            "userid_list": ",".join(batch.recipients),
            "msg": self.message(batch.content),
        }
        try:
            await self._throttle(len(batch.recipients))
            data = await self.call("topapi/message/corpconversation/asyncsend_v2", body)
        except TransportError as exc:
            error = PlatformError("transport", str(exc), E.RETRYABLE)
            return BatchOutcome(accepted=False, error=error, in_doubt=exc.in_doubt)
        except DingTalkApiError as exc:
            return BatchOutcome(accepted=False, error=exc.error)
        return BatchOutcome(accepted=True, platform_msg_id=str(data["task_id"]))

    async def settle(self, platform_msg_id: str) -> Settlement | None:
        """Progress first (status 2 = done), then the per-recipient lists of getsendresult."""
        query = {"agent_id": self.agent_id, "task_id": int(platform_msg_id)}
        base = "topapi/message/corpconversation"
        progress = (await self.call(f"{base}/getsendprogress", query)).get("progress") or {}
        if int(progress.get("status", 0)) != 2:
            pct = int(progress.get("progress_in_percent", 0))
            return Settlement(final=False, ok=False, status=f"processing {pct}%")
        result = (await self.call(f"{base}/getsendresult", query)).get("send_result") or {}
        return self.settlement(result)

    @staticmethod
    def settlement(result: Mapping[str, Any]) -> Settlement:
        """Map getsendresult's lists to per-recipient outcomes."""
        out: dict[str, RecipientOutcome] = {}
        for uid in result.get("read_user_id_list") or []:
            out[str(uid)] = RecipientOutcome("sent", "read")
        for uid in result.get("unread_user_id_list") or []:
            out[str(uid)] = RecipientOutcome("sent")
        why = {
            str(f.get("userid")): FORBIDDEN_REASONS.get(int(f.get("code", 0)), "throttled")
            for f in result.get("forbidden_list") or []
        }
        for uid in result.get("forbidden_user_id_list") or []:
            reason = why.get(str(uid), "throttled (silently dropped by DingTalk)")
            out[str(uid)] = RecipientOutcome("failed", f"forbidden: {reason}")
        for uid in result.get("invalid_user_id_list") or []:
            out[str(uid)] = RecipientOutcome("failed", "invalid userid")
        for uid in result.get("failed_user_id_list") or []:
            out[str(uid)] = RecipientOutcome("failed", "delivery failed")
        sent = sum(1 for o in out.values() if o.status == "sent")
        counts = {"total": len(out), "sent": sent, "error": len(out) - sent}
        return Settlement(
            final=True,
            ok=sent > 0 or not out,
            status=f"done: {sent} of {len(out)} delivered",
            recipients=out,
            counts=counts,
        )
