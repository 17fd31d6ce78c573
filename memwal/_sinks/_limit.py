"""AdaptiveLimit: how many requests a remote sink keeps in flight, found from the server's latency.

A TCP Vegas style loop (as in Netflix's concurrency-limits and Vector's Adaptive
Request Concurrency): once per window of about ``limit`` answers (one round trip),
the queue the server builds is estimated as ``limit * (1 - min_rtt / rtt)``, with
``rtt`` the window's median latency and ``min_rtt`` the lowest seen (the server's
latency without a queue). Below ``alpha`` queued requests the limit grows by one
(only if the window actually used the whole limit: an idle client learns nothing);
above ``beta`` it shrinks by one; an overload answer (429, 502, 503, 504) or a
timeout halves it. The limit stays within ``minimum..maximum``.

Callers wait for a slot here, in arrival order, not in the HTTP connection pool:
the pool is at least ``maximum`` connections, so a request that got a slot is sent
at once and its timeout counts from then.
"""

from __future__ import annotations

import collections
import statistics

import anyio

__all__ = ["AdaptiveLimit"]

ALPHA = 2.0  # queued requests below which the limit grows
BETA = 4.0  # ... above which it shrinks
PROBE_WINDOWS = 100  # windows after which min_rtt is measured afresh (the server may have changed)


class AdaptiveLimit:
    """A FIFO concurrency limit that adapts to latency; ``adaptive=False`` keeps it at ``maximum``.

    Example:
        >>> limit = AdaptiveLimit(128)
        >>> await limit.acquire()
        >>> ...  # send the request, time it
        >>> limit.release(0.031)          # or release(None, overload=True) on a 503 or timeout
    """

    def __init__(self, maximum: int, *, adaptive: bool = True, initial: int = 2, minimum: int = 1) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {minimum}, {maximum}")
        self.maximum, self.minimum, self.adaptive = maximum, minimum, adaptive
        self.limit = float(min(max(initial, minimum), maximum) if adaptive else maximum)
        self.in_flight = 0
        self.min_rtt = float("inf")
        self.last_rtt = 0.0
        self.high_rtt = 0.0  # the slowest answer of the last window
        self.increases = self.decreases = self.backoffs = 0
        self._waiters: collections.deque[anyio.Event] = collections.deque()
        self._window: list[float] = []
        self._answers = 0
        self._overload = False
        self._full = False  # the window reached the limit: growth is worth trying
        self._windows = 0

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiters)

    def set_maximum(self, maximum: int) -> None:
        """A new bound (``performance.max_concurrent_ops`` changed); the limit is clamped to it."""
        self.maximum = max(maximum, self.minimum)
        self.limit = min(self.limit, self.maximum) if self.adaptive else float(self.maximum)
        self._wake()

    def snapshot(self) -> dict[str, float | int]:
        """The numbers ``stats()``, ``health()`` and the metrics show."""
        return {"limit": int(self.limit), "in_flight": self.in_flight, "queued": self.queued,
                "min_rtt": 0.0 if self.min_rtt == float("inf") else self.min_rtt, "last_rtt": self.last_rtt,
                "backoffs": self.backoffs}

    async def acquire(self) -> None:
        """Wait for a slot (in arrival order)."""
        if not self._waiters and self.in_flight < int(self.limit):
            self._take()
            return
        self._full = True
        ev = anyio.Event()
        self._waiters.append(ev)
        try:
            await ev.wait()
        except BaseException:
            if ev.is_set():  # the slot was handed over as we were cancelled: give it back
                self.in_flight -= 1
                self._wake()
            else:
                self._waiters.remove(ev)
            raise

    def release(self, rtt: float | None, *, overload: bool = False) -> None:
        """Give a slot back with what the request showed: its latency, or an overload (None: no sample)."""
        self.in_flight -= 1
        if self.adaptive and (overload or rtt is not None):
            self._sample(rtt, overload)
        self._wake()

    def _take(self) -> None:
        self.in_flight += 1
        if self.in_flight >= int(self.limit):
            self._full = True

    def _wake(self) -> None:
        while self._waiters and self.in_flight < int(self.limit):
            self._take()
            self._waiters.popleft().set()

    def _sample(self, rtt: float | None, overload: bool) -> None:
        if overload:
            self._overload = True
        elif rtt is not None:
            self.last_rtt = rtt
            self._window.append(rtt)
            self.min_rtt = min(self.min_rtt, rtt)
        self._answers += 1
        if self._answers < max(4, int(self.limit)):
            return
        window, overloaded, full = self._window, self._overload, self._full
        if window:
            self.high_rtt = max(window)
        self._window, self._answers, self._overload, self._full = [], 0, False, False
        self._decide(window, overloaded, full)

    def _decide(self, window: list[float], overloaded: bool, full: bool) -> None:
        if overloaded:
            self.limit = max(float(self.minimum), self.limit / 2)
            self.backoffs += 1
            return
        if not window:
            return
        queue = self.limit * (1 - self.min_rtt / statistics.median(window))
        if queue < ALPHA and full and self.limit < self.maximum:
            self.limit += 1
            self.increases += 1
        elif queue > BETA and self.limit > self.minimum:
            self.limit -= 1
            self.decreases += 1
        self._windows += 1
        if self._windows >= PROBE_WINDOWS:
            self._windows = 0
            self.min_rtt = min(window)
