"""In-process counters and the frozen CollectorStats snapshot that stats() returns."""

from __future__ import annotations

import logging
import threading
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from .._journal.journal import JournalCounts, LeasedOp, Settlement
    from .._policy.breaker import BreakerState
    from .._reads.cache import CacheStatistics

__all__ = ["CollectorStats", "Counters", "HistogramWindow", "LatencyWindow", "OffWindow"]

log = logging.getLogger("memwal")


class LatencyWindow:
    """The last ``size`` samples in a ring buffer (cheap enough for collect's hot path)."""

    def __init__(self, size: int = 8192) -> None:
        self._buf = array("d", bytes(8 * size))
        self._size = size
        self.count = 0
        self._sum = 0.0

    def add(self, value: float) -> None:
        self._buf[self.count % self._size] = value
        self.count += 1
        self._sum += value

    @property
    def total(self) -> float:
        """The sum of every sample added since start."""
        return self._sum

    def samples(self) -> list[float]:
        n = min(self.count, self._size)
        return sorted(self._buf[:n])

    def percentiles(self, *qs: float) -> tuple[float, ...]:
        data = self.samples()
        if not data:
            return tuple(0.0 for _ in qs)
        return tuple(data[min(len(data) - 1, int(q * len(data)))] for q in qs)

    def since(self, count: int) -> list[float]:
        """The samples added after the window had seen ``count`` (at most ``size``), sorted.

        health() remembers ``count`` at each check, so this turns the last-N ring into a
        time-based window without storing a timestamp per sample.
        """
        n = min(self.count - count, self._size, self.count)
        if n <= 0:
            return []
        end = self.count % self._size
        start = end - n
        data = list(self._buf[start:end]) if start >= 0 else list(self._buf[start:]) + list(self._buf[:end])
        data.sort()
        return data


class HistogramWindow(LatencyWindow):
    """A LatencyWindow that also keeps cumulative Prometheus bucket counts since start.

    ``bounds`` are the buckets' upper limits (``le``), ascending; the last slot of
    ``buckets`` counts values above every bound (the ``+Inf`` bucket's own share).
    ``add`` only writes the ring; every ``FOLD`` samples (and whenever ``buckets`` is
    read) the samples not yet counted are sorted once and folded into the buckets, so
    the hot path pays no per-sample bisect.
    """

    FOLD = 256  # add() folds when count is a multiple (0xFF below); divides the ring size

    def __init__(self, bounds: Sequence[float], size: int = 8192) -> None:
        super().__init__(size)
        if size < self.FOLD or size & (size - 1):
            raise ValueError(f"window size {size} must be a power of two, at least {self.FOLD}")
        self._mask = size - 1
        self.bounds = tuple(bounds)
        self._buckets = [0] * (len(self.bounds) + 1)
        self._folded = 0
        self._fold_lock = threading.Lock()

    def add(self, value: float) -> None:
        # collect()'s hot path: the ring only; the fold keeps the sum and the buckets.
        n = self.count
        self._buf[n & self._mask] = value
        self.count = n = n + 1
        if not n & 0xFF:
            self._fold()

    @property
    def buckets(self) -> list[int]:
        """Counts per bucket of every sample added since start."""
        return self.folded()[0]

    @property
    def total(self) -> float:
        """The sum of every sample added since start."""
        return self.folded()[1]

    def folded(self) -> tuple[list[int], float]:
        """``buckets`` and ``total`` over the same samples (one fold)."""
        with self._fold_lock:
            self._fold_locked()
            return list(self._buckets), self._sum

    def _fold(self) -> None:
        with self._fold_lock:
            self._fold_locked()

    def _fold_locked(self) -> None:  # the caller holds _fold_lock
        end, start = self.count, max(self._folded, self.count - self._size)
        if end <= start:
            return
        lo, hi = start % self._size, end % self._size or self._size
        chunk = sorted(self._buf[lo:hi] if lo < hi else self._buf[lo:] + self._buf[:hi])
        self._sum += sum(chunk)
        below = 0
        for i, bound in enumerate(self.bounds):
            upto = bisect_right(chunk, bound)
            self._buckets[i] += upto - below
            below = upto
        self._buckets[-1] += len(chunk) - below
        self._folded = end


class OffWindow(HistogramWindow):
    """What the latency windows become with ``health.metrics: false``: adding costs a call."""

    def add(self, value: float) -> None:
        pass


# Bucket bounds: collect latency in microseconds (the window's unit), delivery in seconds.
COLLECT_BOUNDS_US = (10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1e3, 2.5e3, 5e3, 1e4, 2.5e4, 1e5, 1e6)
DELIVERY_BOUNDS_S = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
                     3600.0)


class Counters:
    """Mutable counters owned by one collector (single event loop plus collect threads).

    ``metrics=False`` (``health.metrics: false``) turns the latency windows and their
    histograms off, so the hot path does no bookkeeping beyond the counts.
    """

    def __init__(self, *, metrics: bool = True) -> None:
        self.collected = 0
        self.delivered = 0
        self.retried = 0
        self.dead = 0
        self.batches = 0
        self.fallback = 0
        self.reconciled = 0
        self.released = 0
        self.bisections = 0  # failed batches split in halves to isolate a poison operation
        # Faults kept inside the collector, by where and what: "sink:KeyError",
        # "reconciler:JournalError", "health:..." (logged with context where they happen).
        self.faults: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.breaker_transitions: Counter[str] = Counter()
        window = HistogramWindow if metrics else OffWindow
        self.metrics = metrics
        self.collect_us: HistogramWindow = window(COLLECT_BOUNDS_US)
        self.delivery_s: HistogramWindow = window(DELIVERY_BOUNDS_S)
        self.batch_sizes = LatencyWindow(1024)
        self.sink_seconds_per_op = LatencyWindow(256)

    def breaker_changed(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self.breaker_transitions[f"{name}:{new.value}"] += 1

    def fault(self, where: str, exc: BaseException) -> None:
        """Count a fault the collector kept to itself (it was logged where it happened)."""
        self.faults[f"{where}:{type(exc).__name__}"] += 1

    def sink_call(self, n: int, seconds: float) -> None:
        self.sink_seconds_per_op.add(seconds / max(n, 1))

    def settled(self, leased: Sequence[LeasedOp], s: Settlement, now: float) -> None:
        self.batches += 1
        self.batch_sizes.add(len(leased))
        done = set(s.acked)
        done.update(k for k, _ in s.held)
        by_key = {g.key: g for g in leased}
        add = self.delivery_s.add
        debug = log.isEnabledFor(logging.DEBUG)  # checked once per batch, not per operation
        for g in leased:
            if g.key in done:
                add(max(0.0, now - g.op.created_at))
                if debug:
                    log.debug("operation %s delivered", g.op.id)
        for key, holder in s.held:
            log.info("operation %s held by fallback %s until the primary recovers", by_key[key].op.id, holder)
        for key, err, _when in s.retry:
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

    Example:
        >>> s = collector.stats()
        >>> s.collected, s.delivered, s.pending
        (120, 118, 2)
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
    cache_hits: int = 0
    cache_misses: int = 0
    cache_evictions: int = 0
    cache_size: int = 0
    cache_hit_rate: float = 0.0
    #: Failed batches split in halves to isolate the operations at fault.
    bisections: int = 0
    #: Faults kept inside the collector, by where and exception type ("sink:KeyError").
    faults: dict[str, int] = msgspec.field(default_factory=dict)
    #: Seconds since the journal counts (pending, leased, dead, held) were read, off the loop.
    journal_age: float = 0.0
    #: A remote sink's adaptive concurrency, by sink name: limit, in_flight, queued, min_rtt, ...
    sink_concurrency: dict[str, dict[str, float]] = {}


def sink_concurrency(sink: Any) -> dict[str, dict[str, float]]:
    """The adaptive concurrency of ``sink`` and of a FallbackSink's sinks (those that have one), by name."""
    out: dict[str, dict[str, float]] = {}
    for s in (sink, *getattr(sink, "sinks", ())):
        get = getattr(s, "concurrency", None)
        if callable(get):
            out[s.name] = {k: float(v) for k, v in get().items()}
    return out


def snapshot(
    c: Counters, journal: JournalCounts, cache: CacheStatistics | None = None, *, journal_age: float = 0.0,
    sink: Any = None,
) -> CollectorStats:
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
        cache_hits=cache.hits if cache else 0,
        cache_misses=cache.misses if cache else 0,
        cache_evictions=cache.evictions if cache else 0,
        cache_size=cache.size if cache else 0,
        cache_hit_rate=cache.hit_rate if cache else 0.0,
        bisections=c.bisections,
        faults=dict(c.faults),
        journal_age=journal_age,
        sink_concurrency=sink_concurrency(sink),
    )
