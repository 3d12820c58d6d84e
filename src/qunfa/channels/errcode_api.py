"""The API style WeChat Official Accounts and WeCom share.

``access_token`` in the query string, ``{"errcode": N, "errmsg": "..."}`` in the body with
HTTP 200, and a token that may be refused mid-life (40001/40014/42001), which is re-fetched
once through the shared :class:`~qunfa.channels.tokens.TokenService`. Each platform's client
subclasses :class:`ErrcodeApi` with its own token fetch, error table and error type.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from qunfa.channels.base import AccountConfig, ChannelContext
from qunfa.domain.outcomes import ErrorClass, PlatformError

TOKEN_ERRORS = frozenset({40001, 40014, 42001})  # re-fetch the token once, then retry


class ApiCallError(Exception):
    """A call answered a non-zero errcode the caller did not handle itself."""

    def __init__(self, error: PlatformError) -> None:
        super().__init__(error.describe())
        self.error = error


class ErrcodeApi(ABC):
    api_error: ClassVar[type[ApiCallError]] = ApiCallError

    def __init__(
        self, account: AccountConfig, ctx: ChannelContext, errors: Mapping[int | str, ErrorClass]
    ) -> None:
        self.account = account
        self.ctx = ctx
        self.errors = errors
        self.root = account.base_url.rstrip("/") + "/cgi-bin"

    @abstractmethod
    def classify(self, code: int, message: str) -> PlatformError:
        """The platform error for ``code``, with its class and any wait the platform asks."""

    @abstractmethod
    async def _fetch_token(self) -> tuple[str, float]:
        """A new access token and its lifetime in seconds."""

    async def call(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Call ``path`` with the shared token; re-fetch it once on 40001/40014/42001.

        Returns the decoded body (errcode 0, or a code the caller handles itself such as
        45065); raises ``TransportError`` for transport failures.
        """
        url = f"{self.root}/{path}"

        async def request(token: str) -> dict[str, Any]:
            query = {"access_token": token, **(params or {})}
            data: dict[str, Any] = await self.ctx.http.request_json(
                method, url, params=query, body=body
            )
            return data

        return await self.ctx.tokens.call_with_token(
            self.account.id,
            self._fetch_token,
            request,
            lambda data: int(data.get("errcode", 0)) in TOKEN_ERRORS,
        )

    async def call_ok(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """:meth:`call`, raising this platform's :attr:`api_error` for any non-zero errcode."""
        data = await self.call(method, path, body, params)
        code = int(data.get("errcode", 0))
        if code != 0:
            raise self.api_error(self.classify(code, str(data.get("errmsg", ""))))
        return data
