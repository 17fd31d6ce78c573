"""health(): a frozen snapshot of a live collector, its status, and alerts on status transitions."""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anyio
import anyio.abc
import msgspec

from ._config import Config
from ._journal import Journal
from ._schema import RANK_SHIFT, SEQ_MASK
from ._stats import HistogramWindow, sink_concurrency

__all__ = ["Alert", "Health", "HealthMonitor", "Percentiles", "SinkHealth", "evaluate", "read_journal"]

log = logging.getLogger("memwal")

Status = Literal["ok", "degraded", "failing"]
_RANK = {"ok": 0, "degraded": 1, "failing": 2}
_PRIORITIES = ("critical", "high", "medium", "low")


class Percentiles(msgspec.Struct, frozen=True, kw_only=True):
    """p50/p95/p99 of the samples in the health window, and how many there were."""

    p50: float
    p95: float
    p99: float
    samples: int


class Histogram(msgspec.Struct, frozen=True, kw_only=True):
    """Cumulative bucket counts since start: ``buckets`` pairs ``le`` with a count."""

    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int


class SinkHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One breaker's view of a sink: ``error_rate`` is failures/calls over the window."""

    name: str
    state: str
    error_rate: float
    calls: int
    failures: int
    opened: int


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of a collector, composed from its parts' snapshots.

    Latencies are seconds over the last ``health.window_seconds`` (at most the last
    8192 samples); rates are per second over the same window. ``depth`` counts rows
    by state and ``depth_by_priority`` the undelivered ones, across every process
    sharing the journal. ``cache_hit_rate`` is None without a read cache,
    ``memory_bytes`` None where the platform cannot tell, the latencies None with
    ``health.metrics: false``.
    """

    status: Status
    reasons: tuple[str, ...]
    checked_at: float
    depth: dict[str, int]
    depth_by_priority: dict[str, int]
    max_queue_size: int
    oldest_pending_age: float | None
    collected: int
    delivered: int
    retried: int
    dead: int
    dropped: int
    drops_by_reason: dict[str, int]
    rates: dict[str, float]
    collect_latency: Percentiles | None
    delivery_latency: Percentiles | None
    collect_histogram: Histogram | None
    delivery_histogram: Histogram | None
    batch_size: int
    adaptive_batching: bool
    batches: int
    batch_sizes: Percentiles | None
    sinks: tuple[SinkHealth, ...]
    cache_hit_rate: float | None
    journal_bytes: int
    wal_bytes: int
    memory_bytes: int | None
    sink_concurrency: dict[str, dict[str, float]] = {}  # see CollectorStats.sink_concurrency


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """What alert callbacks receive: a status transition and the snapshot that caused it."""

    previous: Status
    status: Status
    reasons: tuple[str, ...]
    health: Health


AlertCallback = Callable[[Alert], Awaitable[None] | None]


# -- deciding (plain functions) --------------------------------------------------


def evaluate(h: Health, config: Config, *, dead_in_window: int) -> tuple[Status, tuple[str, ...]]:
    """The status and its reasons from a snapshot and the thresholds (no I/O).

    Failing: the journal is full, or every sink's breaker is open. Degraded: the oldest
    pending operation is older than ``max_pending_age``, the depth is above
    ``max_depth_ratio`` of ``max_queue_size``, a sink's error rate is above
    ``max_failure_rate``, some breaker is open, or dead letters appeared in the window.
    """
    hc = config.health
    failing: list[str] = []
    degraded: list[str] = []
    depth = h.depth.get("pending", 0) + h.depth.get("leased", 0)
    if depth >= h.max_queue_size:
        failing.append(f"journal full: {depth} of {h.max_queue_size} operations undelivered")
    elif depth > hc.max_depth_ratio * h.max_queue_size:
        degraded.append(f"depth {depth} above {hc.max_depth_ratio:g} of max_queue_size {h.max_queue_size}")
    if h.oldest_pending_age is not None and h.oldest_pending_age > hc.max_pending_age:
        age = h.oldest_pending_age
        degraded.append(f"oldest pending operation is {age:.1f}s old (max {hc.max_pending_age:g}s)")
    degraded.extend(
        f"sink {s.name} error rate {s.error_rate:.0%} above {hc.max_failure_rate:.0%}"
        for s in h.sinks
        if s.error_rate > hc.max_failure_rate
    )
    opened = [s.name for s in h.sinks if s.state == "open"]
    if hc.alert_on_breaker_open and opened:
        (failing if len(opened) == len(h.sinks) else degraded).append(f"circuit open: {', '.join(opened)}")
    if hc.alert_on_dead and dead_in_window:
        degraded.append(f"{dead_in_window} operations dead-lettered in the last {hc.window_seconds:g}s")
    if failing:
        return "failing", tuple(failing + degraded)
    return ("degraded" if degraded else "ok"), tuple(degraded)


# -- reading (I/O) ---------------------------------------------------------------


class _JournalView(msgspec.Struct, frozen=True):
    depth: dict[str, int]
    by_priority: dict[str, int]
    oldest: float | None
    now: float
    journal_bytes: int
    wal_bytes: int


def read_journal(journal: Journal) -> _JournalView:
    """The journal's gauges: a few reads, safe on a worker thread."""
    counts = journal.counts()
    sql = " , ".join(["(SELECT count(*) FROM ops WHERE k BETWEEN ? AND ?)"] * 4)
    params = [x for r in range(4) for x in (r << RANK_SHIFT, (r << RANK_SHIFT) | SEQ_MASK)]
    by_rank = journal._read(f"SELECT {sql}", params)[0]
    return _JournalView(
        depth=msgspec.structs.asdict(counts),
        by_priority=dict(zip(_PRIORITIES, (int(n) for n in by_rank), strict=True)),
        oldest=journal.oldest_pending(),
        now=journal.clock(),
        journal_bytes=_size(journal.path),
        wal_bytes=_size(journal.path.with_name(journal.path.name + "-wal")),
    )


def _size(path: os.PathLike[str]) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def memory_bytes() -> int | None:
    """Resident set size (VmRSS), or the peak RSS where /proc is missing."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if os.uname().sysname == "Darwin" else int(peak) * 1024


def _percentiles(samples: list[float], scale: float = 1.0) -> Percentiles | None:
    if not samples:
        return None
    n = len(samples)
    p50, p95, p99 = (samples[min(n - 1, int(q * n))] * scale for q in (0.5, 0.95, 0.99))
    return Percentiles(p50=p50, p95=p95, p99=p99, samples=n)


def _histogram(w: HistogramWindow, divisor: float = 1.0) -> Histogram:
    running, out = 0, []
    buckets, total = w.folded()  # one fold: the sum covers exactly the counted samples
    for le, n in zip((*w.bounds, float("inf")), buckets, strict=True):
        running += n
        out.append((le / divisor, running))  # divide: 25 / 1e6 is exactly 2.5e-05, 25 * 1e-6 is not
    # count from the buckets so +Inf == _count even if a racing collect thread lost an update
    return Histogram(buckets=tuple(out), sum=total / divisor, count=running)


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _cache_hit_rate(collector: Any) -> float | None:
    cache = getattr(collector, "cache", None)
    stats = getattr(cache, "statistics", None)
    if stats is None:
        return None
    s = stats()
    rate = getattr(s, "hit_rate", None)
    if rate is not None:
        return float(rate)
    hits, misses = getattr(s, "hits", 0), getattr(s, "misses", 0)
    return hits / (hits + misses) if hits + misses else None


# -- the monitor -----------------------------------------------------------------


class HealthMonitor:
    """Builds health() snapshots of one collector and fires alerts on status transitions.

    It remembers the counters at each snapshot, so rates, error rates and the latency
    percentiles cover the last ``health.window_seconds`` on its ``clock``. ``check()``
    fires the alerts; ``run()`` calls it every ``performance.health_check_interval``.

    Example:
        >>> monitor = HealthMonitor(collector, clock=ManualClock())
        >>> monitor.add_callback(lambda alert: print(alert.status, alert.reasons))
        >>> await monitor.check()
    """

    def __init__(self, collector: Any, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.collector = collector
        self.clock = clock
        self.status: Status = "ok"
        self.alerts = 0
        self.checks = 0
        self._callbacks: list[AlertCallback] = []
        self._history: deque[tuple[float, dict[str, float]]] = deque(maxlen=4096)
        self._history.append((clock(), self._marks()))
        self._scope: anyio.CancelScope | None = None
        self._stopped = False

    def __repr__(self) -> str:
        return f"<HealthMonitor {self.status} checks={self.checks} alerts={self.alerts}>"

    def add_callback(self, callback: AlertCallback) -> None:
        """Call ``callback(alert)`` (a function or a coroutine function) on each transition."""
        self._callbacks.append(callback)

    def remove_callback(self, callback: AlertCallback) -> None:
        """Stop calling ``callback``; ValueError if it was not added."""
        self._callbacks.remove(callback)

    def _breakers(self) -> list[Any]:
        consumer = getattr(self.collector, "_consumer", None)  # None until start()
        if consumer is not None and consumer.breaker is not None:
            return [consumer.breaker]
        return list(self.collector.sink.breakers())

    def _marks(self) -> dict[str, float]:
        c = self.collector.counters
        marks: dict[str, float] = {
            "collected": c.collected, "delivered": c.delivered, "retried": c.retried,
            "dead": c.dead, "dropped": sum(c.drops.values()),
            "collect_n": c.collect_us.count, "delivery_n": c.delivery_s.count, "batch_n": c.batch_sizes.count,
        }
        for b in self._breakers():
            marks[f"calls:{b.name}"], marks[f"failures:{b.name}"] = b.calls, b.failures
        return marks

    def snapshot(self, view: _JournalView | None = None) -> tuple[Health, int]:
        """A Health snapshot (its status from ``evaluate``) and the dead letters in the window."""
        col = self.collector
        config: Config = col.config
        view = view if view is not None else read_journal(col.journal)
        now, marks = self.clock(), self._marks()
        window = config.health.window_seconds
        base_t, base = self._baseline(now - window)
        if len(self._history) > 1 and now - self._history[-2][0] < window / 100:
            self._history[-1] = (now, marks)  # marks closer than window/100 apart: keep the newest
        else:
            self._history.append((now, marks))
        span = max(now - base_t, 1e-9)
        delta = {k: v - base.get(k, 0) for k, v in marks.items()}
        c = col.counters
        consumer = getattr(col, "_consumer", None)
        sinks = tuple(
            SinkHealth(
                name=b.name, state=b.state.value, calls=b.calls, failures=b.failures, opened=b.opened,
                error_rate=_ratio(delta[f"failures:{b.name}"], delta[f"calls:{b.name}"]),
            )
            for b in self._breakers()
        )
        metrics = c.metrics
        health = Health(
            status="ok", reasons=(), checked_at=view.now,
            depth=view.depth, depth_by_priority=view.by_priority,
            max_queue_size=config.async_collection.max_queue_size,
            oldest_pending_age=None if view.oldest is None else max(0.0, view.now - view.oldest),
            collected=c.collected, delivered=c.delivered, retried=c.retried, dead=c.dead,
            dropped=sum(c.drops.values()), drops_by_reason=dict(c.drops),
            rates={k: delta[k] / span for k in ("collected", "delivered", "retried", "dead", "dropped")},
            collect_latency=_percentiles(c.collect_us.since(int(base.get("collect_n", 0))), 1e-6),
            delivery_latency=_percentiles(c.delivery_s.since(int(base.get("delivery_n", 0)))),
            collect_histogram=_histogram(c.collect_us, 1e6) if metrics else None,
            delivery_histogram=_histogram(c.delivery_s) if metrics else None,
            batch_size=consumer.batch_size if consumer is not None else config.async_collection.batch_size,
            adaptive_batching=config.async_collection.adaptive_batching,
            batches=c.batches,
            batch_sizes=_percentiles(c.batch_sizes.since(int(base.get("batch_n", 0)))),
            sinks=sinks, cache_hit_rate=_cache_hit_rate(col),
            journal_bytes=view.journal_bytes, wal_bytes=view.wal_bytes, memory_bytes=memory_bytes(),
            sink_concurrency=sink_concurrency(col.sink),
        )
        dead_in_window = int(delta["dead"])
        status, reasons = evaluate(health, config, dead_in_window=dead_in_window)
        return msgspec.structs.replace(health, status=status, reasons=reasons), dead_in_window

    def _baseline(self, cutoff: float) -> tuple[float, dict[str, float]]:
        # The newest mark at or before the cutoff (or the oldest kept); older ones go.
        h = self._history
        while len(h) > 1 and h[1][0] <= cutoff:
            h.popleft()
        return h[0]

    async def check(self, view: _JournalView | None = None) -> Health:
        """Take a snapshot; on a status transition log it and call every callback once."""
        health, _ = self.snapshot(view)
        self.checks += 1
        if health.status != self.status:
            alert = Alert(previous=self.status, status=health.status, reasons=health.reasons, health=health)
            self.status = health.status
            self.alerts += 1
            worse = _RANK[alert.status] > _RANK[alert.previous]
            log.log(
                logging.WARNING if worse else logging.INFO, "health %s -> %s: %s",
                alert.previous, alert.status, "; ".join(alert.reasons) or "all thresholds met",
            )
            await self._notify(alert)
        return health

    async def _notify(self, alert: Alert) -> None:
        for cb in list(self._callbacks):
            try:
                result = cb(alert)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # one broken callback must not silence the others
                log.error("health alert callback %r failed: %r", cb, exc, exc_info=exc)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Check every ``performance.health_check_interval`` seconds until ``stop()``."""
        with anyio.CancelScope() as self._scope:
            task_status.started()
            while not self._stopped:
                await anyio.sleep(self.collector.config.performance.health_check_interval)
                try:
                    view = await anyio.to_thread.run_sync(read_journal, self.collector.journal)
                    await self.check(view)
                except Exception as exc:  # noqa: BLE001  (a failed check must not stop the collector)
                    log.warning("health check failed: %r", exc)

    def stop(self) -> None:
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()
