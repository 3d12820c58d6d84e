"""Rate limits per (account, API), shared by everything in this process.

The embedded mode runs one worker process, so an in-process sliding window is exact there;
scale-out swaps in a Redis implementation behind the same :class:`RateLimiter` protocol.
Platform limit errors (45009 …) are still honoured with backoff: this only avoids causing them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol


class RateLimiter(Protocol):
    async def acquire(self, key: str, limit: int, per: float) -> None:
        """Wait until one more call under ``key`` fits in ``limit`` calls per ``per`` seconds."""


class LocalRateLimiter:
    """Sliding-window limiter, thread-safe across the worker's event loops."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, deque[float]] = {}
        self._clock = clock

    def try_acquire(self, key: str, limit: int, per: float) -> float:
        """Take a slot and return 0, or return the seconds to wait before one frees up."""
        with self._lock:
            now = self._clock()
            window = self._windows.setdefault(key, deque())
            while window and window[0] <= now - per:
                window.popleft()
            if len(window) < limit:
                window.append(now)
                return 0.0
            return window[0] + per - now

    async def acquire(self, key: str, limit: int, per: float) -> None:
        while (wait := self.try_acquire(key, limit, per)) > 0:
            await asyncio.sleep(wait)
