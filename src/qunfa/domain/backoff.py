"""Retry timing: exponential backoff with full jitter, bounded, honouring platform minimums."""

from __future__ import annotations

import random


def backoff_delay(
    attempt: int,
    *,
    base: float = 2.0,
    cap: float = 300.0,
    minimum: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1).

    Full jitter spreads retries from many workers; ``minimum`` is what the platform asked for
    (e.g. 60 s after 45066), which jitter never undercuts.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    ceiling = min(cap, base * (2 ** (attempt - 1)))
    delay = (rng or random).uniform(ceiling / 2, ceiling)
    return max(delay, minimum or 0.0)
