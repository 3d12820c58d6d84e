"""``wechat_oa``: Official Account mass send (群发) — to everyone, to one tag, or to an openid list.

Endpoints (reference §1): ``message/mass/sendall`` (tag or all), ``message/mass/send`` (2–10,000
openids), ``preview``, ``get``, ``delete``; the user and tag APIs used by account sync. Limits
come from ``rules/wechat_oa.toml``. Idempotency: ``clientmsgid`` is the batch key, so a retry
of an accepted batch gets 45065 with the original ``msg_id`` — counted as success, never sent
twice. The send is asynchronous: the result arrives as MASSSENDJOBFINISH or via ``mass/get``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from qunfa.channels.base import (
    AccountConfig,
    Channel,
    ChannelContext,
    ContentError,
    OutboundBatch,
    Settlement,
)
from qunfa.channels.errcode_api import ApiCallError, ErrcodeApi
from qunfa.channels.http import TransportError
from qunfa.domain.outcomes import BatchOutcome, ErrorClass, PlatformError
from qunfa.rules import RuleSet

CHINA = ZoneInfo("Asia/Shanghai")

E = ErrorClass
# Every errcode the mass and user APIs can return, and what the engine should do about it.
WECHAT_ERRORS: Mapping[int | str, ErrorClass] = {
    -1: E.RETRYABLE,  # system busy
    45009: E.RETRYABLE,  # api freq out of limit (60/min on mass endpoints)
    45011: E.RETRYABLE,  # minute quota
    45066: E.RETRYABLE,  # same clientmsgid retried too fast: wait a minute
    45028: E.QUOTA,  # has no masssend quota (公众号 1/day, 服务号 to-all 4/month)
    40001: E.ACCOUNT,  # bad secret / token still rejected after a re-fetch
    40014: E.ACCOUNT,
    42001: E.ACCOUNT,
    41001: E.ACCOUNT,
    40002: E.ACCOUNT,
    40013: E.ACCOUNT,  # bad appid
    40125: E.ACCOUNT,  # bad appsecret
    40164: E.ACCOUNT,  # IP not whitelisted
    40243: E.ACCOUNT,  # secret frozen
    48001: E.ACCOUNT,  # api unauthorized (unverified account)
    48008: E.ACCOUNT,  # no permission for this msgtype
    89501: E.ACCOUNT,
    89503: E.ACCOUNT,
    89506: E.ACCOUNT,
    89507: E.ACCOUNT,
    40003: E.BATCH,  # no openid in the list is a follower of this account
    40007: E.BATCH,  # bad media_id
    40008: E.BATCH,  # bad msgtype
    40031: E.BATCH,
    40032: E.BATCH,  # list too long
    40130: E.BATCH,  # fewer than 2 openids
    45067: E.BATCH,  # clientmsgid too long
    40059: E.BATCH,  # invalid msg id
    43004: E.RECIPIENT,  # not subscribed
    43101: E.RECIPIENT,  # user refused
    50005: E.RECIPIENT,  # user unfollowed
}
RETRY_AFTER = {45009: 60.0, 45011: 60.0, 45066: 60.0}


class WechatApiError(ApiCallError):
    """An Official Account call answered an errcode the caller did not handle."""


def seconds_until(when: datetime, now: datetime) -> float:
    return max(1.0, (when - now).total_seconds())


def next_china_midnight(now: datetime) -> datetime:
    local = now.astimezone(CHINA)
    return (local + timedelta(days=1)).replace(hour=0, minute=0, second=5, microsecond=0)


def next_china_month(now: datetime) -> datetime:
    local = now.astimezone(CHINA)
    first = local.replace(day=1, hour=0, minute=0, second=5, microsecond=0)
    return (first + timedelta(days=32)).replace(day=1)


class WechatApi(ErrcodeApi):
    """Official Account HTTP API with token handling; shared by wechat_oa and wechat_template."""

    api_error = WechatApiError

    def classify(self, code: int, message: str) -> PlatformError:
        klass = self.errors.get(code, ErrorClass.BATCH)
        if code == 45028:
            now = datetime.now(CHINA)
            # 公众号: one mass send a day; 服务号: to-all sends are counted per month.
            until = (
                next_china_month(now)
                if self.account.kind == "service"
                else next_china_midnight(now)
            )
            return PlatformError(code, message, klass, retry_after=seconds_until(until, now))
        return PlatformError(code, message, klass, retry_after=RETRY_AFTER.get(code))

    async def _fetch_token(self) -> tuple[str, float]:
        body = {
            "grant_type": "client_credential",
            "appid": self.account.app_id,
            "secret": self.account.credentials["secret"],
            "force_refresh": False,
        }
        data = await self.ctx.http.request_json("POST", f"{self.root}/stable_token", body=body)
        if "access_token" not in data:
            raise WechatApiError(
                self.classify(int(data.get("errcode", -1)), data.get("errmsg", ""))
            )
        return str(data["access_token"]), float(data.get("expires_in", 7200))

    async def mass_limit(self) -> None:
        limit = self.account.rules["mass_calls_per_minute"]
        await self.ctx.limiter.acquire(f"wechat:{self.account.app_id}:mass", limit, 60.0)


class WechatOA(Channel):
    key: ClassVar[str] = "wechat_oa"
    title: ClassVar[str] = "WeChat Official Account mass send (公众号群发)"
    rules_name: ClassVar[str] = "wechat_oa"
    recipient_kind: ClassVar[str] = "openid"
    modes: ClassVar[frozenset[str]] = frozenset({"to_all", "tag", "list"})
    errors = WECHAT_ERRORS
    sandbox_prefix: ClassVar[str] = "wechat"
    dedupe_window_rule: ClassVar[str | None] = "clientmsgid_window_seconds"
    msgtypes: ClassVar[tuple[str, ...]] = ("text", "mpnews", "image", "voice", "mpvideo", "wxcard")

    @classmethod
    def validate_content(cls, content: Mapping[str, Any], rules: RuleSet) -> None:
        msgtype = content.get("msgtype")
        if msgtype not in cls.msgtypes:
            raise ContentError(
                f"msgtype {msgtype!r} cannot be mass-sent; use one of {', '.join(cls.msgtypes)}"
            )
        body = content.get(msgtype)
        if not isinstance(body, dict) or not body:
            raise ContentError(f"content needs a {msgtype!r} object, e.g. {{'content': '…'}}")
        if msgtype == "text" and not str(body.get("content", "")).strip():
            raise ContentError("text content is empty: pass --text '…'")

    def __init__(self, account: AccountConfig, ctx: ChannelContext) -> None:
        super().__init__(account, ctx)
        self.api = WechatApi(account, ctx, self.errors)

    @classmethod
    def batch_size(cls, rules: RuleSet, mode: str) -> int:
        # sendall covers a whole tag or everyone in one call; openid lists go 10,000 at a time.
        return rules["mass_max_per_call"] if mode == "list" else 0

    def classify(self, code: int | str, message: str) -> PlatformError:
        return self.api.classify(int(code), message)

    @staticmethod
    def message_body(content: Mapping[str, Any]) -> dict[str, Any]:
        msgtype = str(content.get("msgtype", "text"))
        return {"msgtype": msgtype, msgtype: dict(content[msgtype])}

    async def send_batch(self, batch: OutboundBatch) -> BatchOutcome:
        body = self.message_body(batch.content)
        body["clientmsgid"] = batch.key
        body["send_ignore_reprint"] = int(batch.content.get("send_ignore_reprint", 0))
        if batch.mode == "list":
            body["touser"] = list(batch.recipients)
            path = "message/mass/send"
        else:
            is_all = batch.mode == "to_all"
            body["filter"] = {"is_to_all": is_all, **({} if is_all else {"tag_id": batch.tag_id})}
            path = "message/mass/sendall"
        try:
            await self.api.mass_limit()
            data = await self.api.call("POST", path, body)
        except TransportError as exc:
            error = PlatformError("transport", str(exc), ErrorClass.RETRYABLE)
            return BatchOutcome(accepted=False, error=error, in_doubt=exc.in_doubt)
        except WechatApiError as exc:
            return BatchOutcome(accepted=False, error=exc.error)
        code = int(data.get("errcode", 0))
        if code == 0:
            return BatchOutcome(accepted=True, platform_msg_id=str(data["msg_id"]))
        if code == 45065 and "msg_id" in data:
            # The platform already has this clientmsgid: an earlier attempt went through.
            return BatchOutcome(
                accepted=True, platform_msg_id=str(data["msg_id"]), deduplicated=True
            )
        return BatchOutcome(accepted=False, error=self.classify(code, str(data.get("errmsg", ""))))

    async def settle(self, platform_msg_id: str) -> Settlement | None:
        data = await self.api.call_ok("POST", "message/mass/get", {"msg_id": int(platform_msg_id)})
        status = str(data.get("msg_status", ""))
        return Settlement(
            final=status != "SENDING", ok=status in ("SEND_SUCCESS", "DELETE"), status=status
        )

    # -- operator calls ---------------------------------------------------------------------------
    async def preview(
        self, content: Mapping[str, Any], *, openid: str | None = None, wxname: str | None = None
    ) -> str:
        body = self.message_body(content)
        if wxname:
            body["towxname"] = wxname
        elif openid:
            body["touser"] = openid
        else:
            raise ValueError("preview needs an openid or a WeChat ID (towxname)")
        await self.api.mass_limit()
        data = await self.api.call_ok("POST", "message/mass/preview", body)
        return str(data.get("msg_id", ""))

    async def delete(self, platform_msg_id: str, article_idx: int = 0) -> None:
        body = {"msg_id": int(platform_msg_id), "article_idx": article_idx}
        await self.api.call_ok("POST", "message/mass/delete", body)

    # -- account sync -----------------------------------------------------------------------------
    async def follower_pages(self, next_openid: str = "") -> AsyncIterator[tuple[list[str], str]]:
        """Pages of follower openids (``user/get``, 10,000 a page) from ``next_openid`` on, each
        with the cursor that continues after it (what a resumable sync persists)."""
        while True:
            data = await self.api.call_ok("GET", "user/get", params={"next_openid": next_openid})
            openids = (data.get("data") or {}).get("openid") or []
            if not openids or not data.get("count"):
                return
            next_openid = str(data.get("next_openid") or "")
            yield list(openids), next_openid
            if not next_openid:
                return

    async def followers(self) -> AsyncIterator[list[str]]:
        """Pages of follower openids until the list ends."""
        async for page, _ in self.follower_pages():
            yield page

    async def user_info(self, openids: list[str]) -> list[dict[str, Any]]:
        """Profiles of ≤ ``batchget_max_per_call`` openids (``user/info/batchget``): subscribe,
        unionid, subscribe_time, tagid_list …; unfollowed users carry only openid/unionid."""
        limit = self.rules["batchget_max_per_call"]
        if len(openids) > limit:
            raise ValueError(
                f"user/info/batchget takes ≤ {limit} openids (rule batchget_max_per_call)"
            )
        body = {"user_list": [{"openid": o, "lang": "zh_CN"} for o in openids]}
        data = await self.api.call_ok("POST", "user/info/batchget", body)
        return list(data.get("user_info_list") or [])

    async def tags(self) -> list[dict[str, Any]]:
        data = await self.api.call_ok("GET", "tags/get")
        return list(data.get("tags", []))

    async def tag_member_pages(
        self, tag_id: int, next_openid: str = ""
    ) -> AsyncIterator[tuple[list[str], str]]:
        """Pages of a tag's member openids (``user/tag/get``) from ``next_openid`` on, each with
        the cursor that continues after it (what a resumable sync persists)."""
        while True:
            body = {"tagid": tag_id, "next_openid": next_openid}
            data = await self.api.call_ok("POST", "user/tag/get", body)
            openids = (data.get("data") or {}).get("openid") or []
            if not openids or not data.get("count"):
                return
            next_openid = str(data.get("next_openid") or "")
            yield list(openids), next_openid
            if not next_openid:
                return

    async def tag_members(self, tag_id: int) -> AsyncIterator[list[str]]:
        """Pages of a tag's member openids until the list ends."""
        async for page, _ in self.tag_member_pages(tag_id):
            yield page

    # -- tag management (§1.7) ---------------------------------------------------------------------
    async def create_tag(self, name: str) -> int:
        """``tags/create``; the platform's id of the new tag."""
        data = await self.api.call_ok("POST", "tags/create", {"tag": {"name": name}})
        return int(data["tag"]["id"])

    async def rename_tag(self, tag_id: int, name: str) -> None:
        await self.api.call_ok("POST", "tags/update", {"tag": {"id": tag_id, "name": name}})

    async def delete_tag(self, tag_id: int) -> None:
        await self.api.call_ok("POST", "tags/delete", {"tag": {"id": tag_id}})

    async def tag_users(self, tag_id: int, openids: list[str], *, add: bool = True) -> None:
        """``tags/members/batchtagging`` (or ``batchuntagging``) of ≤ 50 openids."""
        limit = self.rules["batchtagging_max_per_call"]
        if not 0 < len(openids) <= limit:
            raise ValueError(
                f"batch(un)tagging takes 1..{limit} openids (rule batchtagging_max_per_call)"
            )
        path = "tags/members/batchtagging" if add else "tags/members/batchuntagging"
        await self.api.call_ok("POST", path, {"openid_list": openids, "tagid": tag_id})
