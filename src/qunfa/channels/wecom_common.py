"""The WeCom (企业微信) HTTP API shared by ``wecom_customer`` and ``wecom_app``.

Reference §3.1: every secret (the 客户联系 secret, each app's own secret) has its own access
token from ``GET /cgi-bin/gettoken?corpid=&corpsecret=``. A qunfa account holds exactly one
secret, so the shared :class:`~qunfa.channels.tokens.TokenService` keyed by the account id is one
token per (corpid, secret), shared by every worker. Tokens can die early: a call answered
40014/42001/40001 re-fetches the token once and is retried. Error bodies are
``{"errcode": N, "errmsg": "... more info at ...?e=N"}`` with HTTP 200; only the errcode counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from qunfa.channels.base import AccountConfig, ChannelContext
from qunfa.channels.errcode_api import ApiCallError, ErrcodeApi
from qunfa.domain.outcomes import ErrorClass, PlatformError

CHINA = ZoneInfo("Asia/Shanghai")

E = ErrorClass
# The errcodes every WeCom API can answer, and what the engine should do about them. Channel
# modules extend this with their own (fail_list codes, 81013, 41048 …).
WECOM_ERRORS: Mapping[int | str, ErrorClass] = {
    -1: E.RETRYABLE,  # system busy
    45009: E.RETRYABLE,  # api freq out of limit
    45033: E.RETRYABLE,  # too many concurrent calls
    40001: E.ACCOUNT,  # invalid secret (or a token still rejected after a re-fetch)
    40091: E.ACCOUNT,  # secret is invalid (older code)
    40013: E.ACCOUNT,  # invalid corpid
    40014: E.ACCOUNT,  # invalid access_token (after one re-fetch)
    42001: E.ACCOUNT,  # access_token expired (after one re-fetch)
    41001: E.ACCOUNT,  # access_token missing
    48002: E.ACCOUNT,  # api forbidden: this secret may not call the API
    60011: E.ACCOUNT,  # no privilege to access/modify
    60020: E.ACCOUNT,  # IP not allowed
    40056: E.ACCOUNT,  # invalid agentid
    301002: E.ACCOUNT,  # the token's app may not act for this agentid
    40058: E.BATCH,  # invalid parameter
    40008: E.BATCH,  # invalid msgtype
    44004: E.BATCH,  # empty content
    45002: E.BATCH,  # content too long
    47001: E.BATCH,  # malformed JSON
    40063: E.BATCH,  # missing content
}
RETRY_AFTER: Mapping[int, float] = {45009: 60.0, 45033: 1.0}


class WecomApiError(ApiCallError):
    """A WeCom call answered a non-zero errcode the caller did not handle itself."""


def seconds_to_china_midnight(now: datetime | None = None) -> float:
    """Seconds until 00:00:05 Asia/Shanghai: WeCom counts days in China time."""
    local = (now or datetime.now(CHINA)).astimezone(CHINA)
    nxt = (local + timedelta(days=1)).replace(hour=0, minute=0, second=5, microsecond=0)
    return max(1.0, (nxt - local).total_seconds())


class WecomApi(ErrcodeApi):
    """One WeCom secret's API: token handling, calls, error classification."""

    api_error = WecomApiError

    def __init__(
        self,
        account: AccountConfig,
        ctx: ChannelContext,
        errors: Mapping[int | str, ErrorClass],
    ) -> None:
        super().__init__(account, ctx, errors)
        creds = account.credentials
        # The corpid is a credential field; a wecom_customer account's app_id is the corpid too.
        self.corpid = str(creds.get("corpid") or account.app_id.split(":", 1)[0])
        self.secret = str(creds.get("secret", ""))

    def classify(self, code: int, message: str) -> PlatformError:
        klass = self.errors.get(code, ErrorClass.BATCH)
        return PlatformError(code, message, klass, retry_after=RETRY_AFTER.get(code))

    async def _fetch_token(self) -> tuple[str, float]:
        params = {"corpid": self.corpid, "corpsecret": self.secret}
        data = await self.ctx.http.request_json("GET", f"{self.root}/gettoken", params=params)
        if int(data.get("errcode", 0)) != 0 or "access_token" not in data:
            code = int(data.get("errcode", -1))
            # A refused secret is an account problem even though 40001 also means "bad token".
            error = self.classify(code, str(data.get("errmsg", "")))
            if error.klass is ErrorClass.RETRYABLE:
                raise WecomApiError(error)
            raise WecomApiError(PlatformError(code, error.message, ErrorClass.ACCOUNT))
        return str(data["access_token"]), float(data.get("expires_in", 7200))

    async def api_limit(self, api: str) -> None:
        """Stay under the platform's per-corp per-API call rate (45009 otherwise)."""
        limit = self.account.rules["api_calls_per_minute"]
        await self.ctx.limiter.acquire(f"wecom:{self.corpid}:{api}", limit, 60.0)


def utf8_len(value: Any) -> int:
    return len(str(value).encode("utf-8"))
