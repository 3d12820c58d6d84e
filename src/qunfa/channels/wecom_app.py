"""``wecom_app``: WeCom app messages (应用消息) to members, ``message/send``.

Reference §3.2. One call takes ≤ 1,000 userids joined by ``|``; the answer is synchronous and
final: ``invaliduser`` (lower-cased) and ``unlicenseduser`` are refused recipients, the rest are
sent (all invalid → 81013). Idempotency comes from the platform's duplicate check:
``enable_duplicate_check=1`` makes an identical request JSON within
``duplicate_check_interval`` seconds a no-op. The body is built deterministically from the
batch (content + its recipients), so a retry of the same batch is byte-identical and dedupes,
while two batches differ by ``touser``. The platform also drops, silently, messages beyond
30/min or 1,000/h to one member from one app: the answer cannot show those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from qunfa.channels.base import AccountConfig, Channel, ChannelContext, ContentError, OutboundBatch
from qunfa.channels.http import TransportError
from qunfa.channels.wecom_common import (
    WECOM_ERRORS,
    WecomApi,
    WecomApiError,
    seconds_to_china_midnight,
    utf8_len,
)
from qunfa.domain.outcomes import BatchOutcome, ErrorClass, PlatformError
from qunfa.rules import RuleSet

E = ErrorClass
APP_ERRORS: Mapping[int | str, ErrorClass] = {
    **WECOM_ERRORS,
    81013: E.BATCH,  # every user, party and tag invalid or out of the app's visible range
    # message/send answers 45009 when the app's daily person-times (seats × 200) are spent; the
    # per-API minute limit is kept by qunfa's limiter, so treat it as a quota until midnight.
    45009: E.QUOTA,
}
MSGTYPES = ("text", "markdown", "textcard", "news")
QUOTA_RECHECK = 3600.0  # re-try a 45009 at least hourly in case it was a minute limit after all


class WecomApp(Channel):
    key: ClassVar[str] = "wecom_app"
    title: ClassVar[str] = "WeCom app message (企业微信应用消息)"
    rules_name: ClassVar[str] = "wecom"
    recipient_kind: ClassVar[str] = "userid"
    modes: ClassVar[frozenset[str]] = frozenset({"users"})
    errors = APP_ERRORS
    # app_id is "<corpid>:<agentid>"; the secret is the app's own.
    credential_fields: ClassVar[tuple[str, ...]] = ("corpid", "agentid", "secret")
    sandbox_prefix: ClassVar[str] = "wecom"
    idempotent: ClassVar[bool] = True
    personalises: ClassVar[bool] = True  # one message/send per distinct rendered content
    dedupe_window_rule: ClassVar[str | None] = "duplicate_check_interval_seconds"

    def __init__(self, account: AccountConfig, ctx: ChannelContext) -> None:
        super().__init__(account, ctx)
        self.api = WecomApi(account, ctx, self.errors)
        creds = account.credentials
        self.agentid = int(creds.get("agentid") or account.app_id.split(":", 1)[1])

    @classmethod
    def batch_size(cls, rules: RuleSet, mode: str) -> int:
        return rules["app_max_users_per_call"]

    @classmethod
    def validate_content(cls, content: Mapping[str, Any], rules: RuleSet) -> None:
        msgtype = content.get("msgtype")
        if msgtype not in MSGTYPES:
            raise ContentError(f"msgtype {msgtype!r}: use one of {', '.join(MSGTYPES)}")
        body = content.get(msgtype)
        if not isinstance(body, Mapping) or not body:
            raise ContentError(f"content needs a {msgtype!r} object")
        if msgtype in ("text", "markdown"):
            text = str(body.get("content", ""))
            if not text.strip():
                raise ContentError(f"{msgtype} content is empty")
            if utf8_len(text) > rules["app_text_max_bytes"]:
                raise ContentError(
                    f"{msgtype} content is {utf8_len(text)} bytes; at most "
                    f"{rules['app_text_max_bytes']} (UTF-8, a Chinese character is 3)"
                )
        elif msgtype == "textcard":
            for name in ("title", "description", "url"):
                if not body.get(name):
                    raise ContentError(f"a textcard needs {name}")
            for name, rule in (("title", "textcard_title_max_bytes"),
                               ("description", "textcard_description_max_bytes")):  # fmt: skip
                if utf8_len(body[name]) > rules[rule]:
                    raise ContentError(f"textcard {name} is over {rules[rule]} bytes")
            if len(str(body.get("btntxt", ""))) > rules["textcard_btntxt_max_chars"]:
                raise ContentError(
                    f"textcard btntxt takes at most {rules['textcard_btntxt_max_chars']} characters"
                )
        else:
            articles = body.get("articles")
            if (
                not isinstance(articles, list)
                or not 1 <= len(articles) <= rules["news_articles_max"]
            ):
                raise ContentError(f"news needs 1–{rules['news_articles_max']} articles")
            if not all(isinstance(a, Mapping) and a.get("title") for a in articles):
                raise ContentError("every news article needs a title")

    def classify(self, code: int | str, message: str) -> PlatformError:
        error = self.api.classify(int(code), message)
        if error.klass is E.QUOTA:
            wait = min(QUOTA_RECHECK, seconds_to_china_midnight())
            return PlatformError(error.code, error.message, error.klass, retry_after=wait)
        return error

    def request_body(
        self,
        batch: OutboundBatch,
        content: Mapping[str, Any] | None = None,
        recipients: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """The message/send JSON: a pure function of the batch, so a retry is identical
        (``content``/``recipients``: one group of a personalised batch)."""
        content = batch.content if content is None else content
        msgtype = str(content["msgtype"])
        body: dict[str, Any] = {
            "touser": "|".join(batch.recipients if recipients is None else recipients),
            "msgtype": msgtype,
            "agentid": self.agentid,
            msgtype: dict(content[msgtype]),
            "enable_duplicate_check": 1,
            "duplicate_check_interval": self.rules["duplicate_check_interval_seconds"],
        }
        for flag in ("safe", "enable_id_trans"):
            if content.get(flag):
                body[flag] = int(content[flag])
        return body

    async def send_batch(self, batch: OutboundBatch) -> BatchOutcome:
        """One message/send; a personalised batch sends one per distinct rendered content
        (``touser`` = that group's members), one after the other. A failing call stops the
        batch there: the groups already accepted stay sent (their msgid per recipient)."""
        groups = batch.groups()
        msg_ids: dict[str, str] = {}
        failures: dict[str, PlatformError] = {}
        first_msgid: str | None = None
        for content, members in groups:
            part = await self._send_one(batch, content, members)
            if not part.accepted:
                return BatchOutcome(
                    accepted=False,
                    error=part.error,
                    in_doubt=part.in_doubt,
                    recipient_msg_ids=msg_ids,
                    recipient_failures=failures,
                )
            failures.update(part.recipient_failures)
            first_msgid = first_msgid or part.platform_msg_id
            if batch.personal is not None and part.platform_msg_id:
                msg_ids.update(
                    (m, part.platform_msg_id) for m in members if m not in part.recipient_failures
                )
        return BatchOutcome(
            accepted=True,
            done=True,
            platform_msg_id=first_msgid,
            recipient_msg_ids=msg_ids,
            recipient_failures=failures,
        )

    async def _send_one(
        self, batch: OutboundBatch, content: Mapping[str, Any], members: Sequence[str]
    ) -> BatchOutcome:
        try:
            await self.api.api_limit("message/send")
            body = self.request_body(batch, content, members)
            data = await self.api.call("POST", "message/send", body)
        except TransportError as exc:
            error = PlatformError("transport", str(exc), ErrorClass.RETRYABLE)
            return BatchOutcome(accepted=False, error=error, in_doubt=exc.in_doubt)
        except WecomApiError as exc:
            return BatchOutcome(accepted=False, error=exc.error)
        code = int(data.get("errcode", 0))
        if code != 0:
            return BatchOutcome(
                accepted=False, error=self.classify(code, str(data.get("errmsg", "")))
            )
        # invaliduser is lower-cased by the platform: map it back to the ids we sent.
        by_lower = {r.lower(): r for r in members}
        failures: dict[str, PlatformError] = {}
        for field, why in (("invaliduser", "not a member or outside the app's visible range"),
                           ("unlicenseduser", "member has no basic API licence")):  # fmt: skip
            for uid in filter(None, str(data.get(field) or "").split("|")):
                failures[by_lower.get(uid.lower(), uid)] = PlatformError(field, why, E.RECIPIENT)
        return BatchOutcome(
            accepted=True,
            done=True,
            platform_msg_id=str(data.get("msgid") or "") or None,
            recipient_failures=failures,
        )

    async def recall(self, msgid: str) -> None:
        """Withdraw a message (only within 24 h of sending, WeCom client only)."""
        await self.api.call_ok("POST", "message/recall", {"msgid": msgid})
