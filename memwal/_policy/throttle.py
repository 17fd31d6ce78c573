"""A token bucket for delivery rate limits; the rate can change on a live collector."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` operations per second with a burst of one second's worth.

    ``delay(n)`` takes n tokens and returns how long to wait before using them; the
    caller sleeps, so tests drive it with a manual clock.

    Example:
        >>> b = TokenBucket(10.0, clock=lambda: 0.0)
        >>> b.delay(10), b.delay(5)
        (0.0, 0.5)
    """

    def __init__(self, rate: float | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.rate = rate
        self._tokens = rate or 0.0
        self._at = clock()

    def set_rate(self, rate: float | None) -> None:
        self.rate = rate
        self._tokens = min(self._tokens, rate or 0.0)

    def delay(self, n: int) -> float:
        if self.rate is None:
            return 0.0
        now = self.clock()
        self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
