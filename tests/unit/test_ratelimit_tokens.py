"""The in-process rate limiter and the shared token service, with fakes (no HTTP)."""

from __future__ import annotations

import asyncio

from qunfa.channels.ratelimit import LocalRateLimiter
from qunfa.channels.tokens import CachedToken, TokenService


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window() -> None:
    clock = FakeClock()
    rl = LocalRateLimiter(clock)
    assert [rl.try_acquire("k", 3, 60) for _ in range(3)] == [0, 0, 0]
    wait = rl.try_acquire("k", 3, 60)
    assert 59 < wait <= 60
    assert rl.try_acquire("other", 3, 60) == 0  # keys are independent
    clock.now += 60.01
    assert rl.try_acquire("k", 3, 60) == 0


class MemoryStore:
    def __init__(self) -> None:
        self.row: CachedToken | None = None

    def load(self, account_id: int) -> CachedToken | None:
        return self.row

    def swap(
        self, account_id: int, token: str, expires_at: float, expected_generation: int
    ) -> CachedToken:
        expected = expected_generation
        current = self.row.generation if self.row else 0
        if current == expected:
            self.row = CachedToken(token, expires_at, expected + 1)
        assert self.row is not None
        return self.row


def test_concurrent_callers_share_one_fetch() -> None:
    store, clock = MemoryStore(), FakeClock()
    svc = TokenService(store, clock)
    calls = 0

    async def fetch() -> tuple[str, float]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return f"tok{calls}", 7200.0

    async def main() -> list[str]:
        return await asyncio.gather(*(svc.get(1, fetch) for _ in range(20)))

    tokens = asyncio.run(main())
    assert set(tokens) == {"tok1"} and calls == 1


def test_refresh_only_when_the_stale_token_is_current() -> None:
    store, clock = MemoryStore(), FakeClock()
    svc = TokenService(store, clock)
    n = 0

    async def fetch() -> tuple[str, float]:
        nonlocal n
        n += 1
        return f"t{n}", 7200.0

    async def main() -> tuple[str, str, str]:
        first = await svc.get(1, fetch)
        second = await svc.refresh(1, first, fetch)  # platform said 40001: fetch anew
        third = await svc.refresh(1, first, fetch)  # someone already replaced it: reuse
        return first, second, third

    assert asyncio.run(main()) == ("t1", "t2", "t2")
    assert store.row is not None and store.row.generation == 2


def test_token_refreshed_before_expiry() -> None:
    store, clock = MemoryStore(), FakeClock()
    svc = TokenService(store, clock)
    n = 0

    async def fetch() -> tuple[str, float]:
        nonlocal n
        n += 1
        return f"t{n}", 7200.0

    assert asyncio.run(svc.get(1, fetch)) == "t1"
    clock.now += 7200 - 299  # inside the early-refresh margin
    assert asyncio.run(svc.get(1, fetch)) == "t2"
