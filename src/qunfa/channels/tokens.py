"""One access token per app, shared by every worker and process.

The token lives in the database (encrypted) so processes share it instead of each fetching
its own; WeChat's ``stable_token`` hands every caller the same token, and a refresh is a
compare-and-swap on a generation counter, so no process invalidates another's token. Within a
process a lock makes concurrent callers wait for one fetch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

# Refresh this long before the platform's expiry, so a token never dies mid-batch.
EARLY_REFRESH = 300.0


@dataclass(frozen=True)
class CachedToken:
    token: str
    expires_at: float
    generation: int


class TokenStore(Protocol):
    def load(self, account_id: int) -> CachedToken | None: ...

    def swap(
        self, account_id: int, token: str, expires_at: float, expected_generation: int
    ) -> CachedToken:
        """Store ``token`` if the stored generation is still ``expected_generation``.

        Returns the token that is stored afterwards: ours, or the one another process won with.
        """
        ...


Fetch = Callable[[], Awaitable[tuple[str, float]]]  # → (token, expires_in seconds)
T = TypeVar("T")


class TokenService:
    def __init__(self, store: TokenStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._memory: dict[int, CachedToken] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()
        self.fetches = 0  # observable in tests: how many times we went to the platform

    def _lock(self, account_id: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(account_id, threading.Lock())

    def _fresh(self, cached: CachedToken | None) -> bool:
        return cached is not None and cached.expires_at - EARLY_REFRESH > self._clock()

    async def get(self, account_id: int, fetch: Fetch) -> str:
        cached = self._memory.get(account_id)
        if cached is not None and self._fresh(cached):
            return cached.token
        return await self._refresh(account_id, fetch, stale=None)

    async def call_with_token(
        self,
        account_id: int,
        fetch: Fetch,
        request: Callable[[str], Awaitable[T]],
        stale: Callable[[T], bool],
    ) -> T:
        """Run ``request(token)`` with the shared token; if the platform says the token is
        stale (``stale(answer)``: 40001/42001, Feishu 99991663 …), refresh it once and retry.

        Every channel's API client goes through here, so "re-fetch once on a token error" is
        one mechanism, not one loop per platform.
        """
        token = await self.get(account_id, fetch)
        answer = await request(token)
        if stale(answer):
            token = await self.refresh(account_id, token, fetch)
            answer = await request(token)
        return answer

    async def refresh(self, account_id: int, stale: str, fetch: Fetch) -> str:
        """The platform rejected ``stale``; get a new one unless someone already did."""
        return await self._refresh(account_id, fetch, stale=stale)

    async def _refresh(self, account_id: int, fetch: Fetch, stale: str | None) -> str:
        lock = self._lock(account_id)
        while not lock.acquire(blocking=False):  # don't block the event loop
            await asyncio.sleep(0.01)
        try:
            stored = self._store.load(account_id)
            usable = self._fresh(stored) and (stale is None or stored.token != stale)  # type: ignore[union-attr]
            if stored is not None and usable:
                self._memory[account_id] = stored
                return stored.token
            token, expires_in = await fetch()
            self.fetches += 1
            generation = stored.generation if stored is not None else 0
            winner = self._store.swap(
                account_id, token, self._clock() + expires_in, expected_generation=generation
            )
            self._memory[account_id] = winner
            return winner.token
        finally:
            lock.release()
