"""In-process counters and the frozen CollectorStats snapshot that stats() returns."""

from __future__ import annotations

import logging
from array import array
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from ._breaker import BreakerState
    from ._journal import JournalCounts, LeasedOp, Settlement

__all__ = ["CollectorStats", "Counters", "LatencyWindow"]

log = logging.getLogger("memwal")


class LatencyWindow:
    """The last ``size`` samples in a ring buffer (cheap enough for collect's hot path)."""

    def __init__(self, size: int = 8192) -> None:
        self._buf = array("d", bytes(8 * size))
        self._size = size
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        self._buf[self.count % self._size] = value
        self.count += 1
        self.total += value

    def samples(self) -> list[float]:
        n = min(self.count, self._size)
        return sorted(self._buf[:n])

    def percentiles(self, *qs: float) -> tuple[float, ...]:
        data = self.samples()
        if not data:
            return tuple(0.0 for _ in qs)
        return tuple(data[min(len(data) - 1, int(q * len(data)))] for q in qs)


class Counters:
    """Mutable counters owned by one collector (single event loop plus collect threads)."""

    def __init__(self) -> None:
        self.collected = 0
        self.delivered = 0
        self.retried = 0
        self.dead = 0
        self.batches = 0
        self.fallback = 0
        self.reconciled = 0
        self.released = 0
        self.drops: Counter[str] = Counter()
        self.breaker_transitions: Counter[str] = Counter()
        self.collect_us = LatencyWindow()
        self.delivery_s = LatencyWindow()
        self.batch_sizes = LatencyWindow(1024)
        self.sink_seconds_per_op = LatencyWindow(256)

    def breaker_changed(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self.breaker_transitions[f"{name}:{new.value}"] += 1

    def sink_call(self, n: int, seconds: float) -> None:
        self.sink_seconds_per_op.add(seconds / max(n, 1))

    def settled(self, leased: Sequence[LeasedOp], s: Settlement, now: float) -> None:
        self.batches += 1
        self.batch_sizes.add(len(leased))
        done = set(s.acked) | {k for k, _ in s.held}
        by_key = {g.key: g for g in leased}
        for key in done:
            g = by_key[key]
            self.delivery_s.add(max(0.0, now - g.op.created_at))
            log.debug("operation %s delivered", g.op.id)
        for key, holder in s.held:
            log.info("operation %s held by fallback %s until the primary recovers", by_key[key].op.id, holder)
        for key, err, when in s.retry:
            log.info("operation %s will be retried (attempt %d): %s", by_key[key].op.id, by_key[key].attempts + 2, err)
        for key, reason in s.dead:
            log.warning("operation %s dead-lettered: %s", by_key[key].op.id, reason)
        self.delivered += len(done)
        self.fallback += len(s.held)
        self.retried += len(s.retry)
        self.dead += len(s.dead)
        self.released += len(s.release)


class CollectorStats(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of a collector: this process's counters and the journal's depth.

    ``pending`` and ``leased`` are read from the journal, so they include every
    process that shares it; the other counts are this collector's since it started.
    """

    collected: int
    delivered: int
    retried: int
    dead: int
    dropped: int
    drops_by_reason: dict[str, int]
    pending: int
    leased: int
    dead_in_journal: int
    held: int
    batches: int
    fallback_delivered: int
    reconciled: int
    collect_p50_us: float
    collect_p99_us: float
    breaker_transitions: dict[str, int]


def snapshot(c: Counters, journal: JournalCounts) -> CollectorStats:
    p50, p99 = c.collect_us.percentiles(0.5, 0.99)
    return CollectorStats(
        collected=c.collected,
        delivered=c.delivered,
        retried=c.retried,
        dead=c.dead,
        dropped=sum(c.drops.values()),
        drops_by_reason=dict(c.drops),
        pending=journal.pending,
        leased=journal.leased,
        dead_in_journal=journal.dead,
        held=journal.held,
        batches=c.batches,
        fallback_delivered=c.fallback,
        reconciled=c.reconciled,
        collect_p50_us=p50,
        collect_p99_us=p99,
        breaker_transitions=dict(c.breaker_transitions),
    )
