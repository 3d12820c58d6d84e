"""The outbound HTTP seam (aiohttp): JSON calls with a timeout and honest failure modes.

A transport failure says whether the request may have reached the platform (``in_doubt``):
a refused connection did not; a timeout or a dropped connection after sending may have. The
engine uses that to decide between a plain retry and a settlement.
"""

from __future__ import annotations

import json
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

    def __init__(self, timeout: float = 30.0, connections: int = 64) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._connections),
                json_serialize=lambda o: json.dumps(o, ensure_ascii=False),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        session = self._get_session()
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        hdrs = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        try:
            async with session.request(method, url, params=params, data=data, headers=hdrs) as resp:
                raw = await resp.read()
                if resp.status >= 500 or resp.status == 429:
                    raise TransportError(
                        f"HTTP {resp.status} from {url}",
                        in_doubt=resp.status in _IN_DOUBT_STATUS,
                        status=resp.status,
                    )
                try:
                    return json.loads(raw)
                except ValueError as exc:
                    raise TransportError(
                        f"HTTP {resp.status} from {url}: body is not JSON",
                        in_doubt=False,
                        status=resp.status,
                    ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(f"cannot connect to {url}: {exc}", in_doubt=False) from exc
        except TimeoutError as exc:
            raise TransportError(f"timed out waiting for {url}", in_doubt=True) from exc
        except aiohttp.ClientError as exc:
            raise TransportError(f"connection to {url} failed: {exc}", in_doubt=True) from exc
