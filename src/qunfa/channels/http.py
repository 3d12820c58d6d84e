"""The outbound HTTP seam (aiohttp): JSON calls with a timeout and honest failure modes.

A transport failure says whether the request may have reached the platform (``in_doubt``):
a refused connection did not; a timeout or a dropped connection after sending may have. The
engine uses that to decide between a plain retry and a settlement.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp


class TransportError(Exception):
    def __init__(self, message: str, *, in_doubt: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.in_doubt = in_doubt
        self.status = status


# Gateway errors may hide a processed request; 503/429 say "not now" before processing.
_IN_DOUBT_STATUS = frozenset({500, 502, 504})


class HttpClient:
    """One aiohttp session per event loop; reuse it for every call of a batch."""

    def __init__(self, timeout: float | Callable[[], float] = 30.0, connections: int = 64) -> None:
        # A callable is read per request, so a long-lived client follows the settings.
        self._timeout = timeout if callable(timeout) else (lambda: float(timeout))
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                json_serialize=lambda o: json.dumps(o, ensure_ascii=False),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request_raw(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        allow_redirects: bool = True,
    ) -> RawResponse:
        """Send ``data`` as given (bytes, or a dict as a form) and return status, headers, body.

        The one place transport failures are mapped to :class:`TransportError`; signed bodies
        (webhook, SMS) go through here so the signed bytes are exactly what is sent.
        """
        session = self._get_session()
        timeout = aiohttp.ClientTimeout(total=self._timeout())
        try:
            async with session.request(
                method, url, params=params, data=data, headers=headers, timeout=timeout,
                allow_redirects=allow_redirects,
            ) as resp:  # fmt: skip
                return RawResponse(resp.status, dict(resp.headers), await resp.read())
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(f"cannot connect to {url}: {exc}", in_doubt=False) from exc
        except TimeoutError as exc:  # asyncio.TimeoutError is TimeoutError on 3.11+
            raise TransportError(f"timed out waiting for {url}", in_doubt=True) from exc
        except aiohttp.ClientError as exc:
            raise TransportError(f"connection to {url} failed: {exc}", in_doubt=True) from exc

    async def request_json(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Send ``body`` as JSON (if given) and return the decoded JSON response."""
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        hdrs = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        resp = await self.request_raw(method, url, params=params, data=data, headers=hdrs)
        return decode_json(resp, url)


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def decode_json(resp: RawResponse, url: str) -> Any:
    """The JSON of a platform answer; 5xx/429 and non-JSON bodies become TransportError."""
    if resp.status >= 500 or resp.status == 429:
        raise TransportError(
            f"HTTP {resp.status} from {url}",
            in_doubt=resp.status in _IN_DOUBT_STATUS,
            status=resp.status,
        )
    try:
        return json.loads(resp.body)
    except ValueError as exc:
        raise TransportError(
            f"HTTP {resp.status} from {url}: body is not JSON", in_doubt=False, status=resp.status
        ) from exc
