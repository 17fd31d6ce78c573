"""Exponential backoff with full jitter, as pure functions (the caller owns the clock)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

__all__ = ["backoff_delay", "next_attempt_at"]


def backoff_delay(
    attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random
) -> float:
    """Full jitter: uniform in ``[0, min(cap, base * 2**attempt))``; attempt 0 is the first retry.

    Example:
        >>> backoff_delay(3, 1.0, 300.0, rng=lambda: 0.5)
        4.0
    """
    ceiling = cap if attempt >= 63 else min(cap, base * (1 << attempt))
    return rng() * ceiling


def next_attempt_at(
    now: float,
    attempt: int,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """When to try again: the jittered backoff, or a server's longer ``Retry-After``.

    A ``retry_after`` that is not a finite number is ignored: it would park the
    operation forever without ever dead-lettering it.
    """
    delay = backoff_delay(attempt, base, cap, rng)
    if retry_after is not None and math.isfinite(retry_after) and retry_after > delay:
        delay = retry_after
    return now + delay
