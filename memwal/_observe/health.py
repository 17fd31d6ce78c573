"""health(): a frozen snapshot of a live collector, its status, and alerts on status transitions."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.abc
import msgspec

from .._core.config import Config
from .._journal.journal import Journal, JournalCounts
from .._journal.schema import RANK_SHIFT, SEQ_MASK
from .._sinks.call import own_cancellation
from .stats import Counters, HistogramWindow

if TYPE_CHECKING:
    from .._policy.breaker import CircuitBreaker
    from .._reads.cache import CacheStatistics

__all__ = [
    "Alert", "Health", "HealthInputs", "HealthMonitor", "Percentiles", "SinkHealth", "evaluate", "read_journal",
]

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

    Example:
        >>> h = collector.health()
        >>> h.status, h.reasons
        ('ok', ())
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
    #: Seconds since the journal's gauges (depth, oldest age, sizes) were read, off the loop.
    journal_age: float = 0.0
    #: Faults the collector kept to itself, by place and exception type ("sink:KeyError").
    faults: dict[str, int] = msgspec.field(default_factory=dict)
    #: Failed batches split in halves to isolate the operations at fault.
    bisections: int = 0
    sink_concurrency: dict[str, dict[str, float]] = {}  # see CollectorStats.sink_concurrency
    #: The journal's last write failed for lack of disk space and none has committed since.
    disk_full: bool = False


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

    Failing: the disk is full (writes fail for lack of space), the journal is full, or
    every sink's breaker is open. Degraded: the oldest
    pending operation is older than ``max_pending_age``, the depth is above
    ``max_depth_ratio`` of ``max_queue_size``, a sink's error rate is above
    ``max_failure_rate``, some breaker is open, or dead letters appeared in the window.
    """
    hc = config.health
    failing: list[str] = []
    degraded: list[str] = []
    if h.disk_full:
        failing.append("disk full: the journal cannot write until space is freed")
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
    counts: JournalCounts
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
    by_rank = journal.read(f"SELECT {sql}", params)[0]
    return _JournalView(
        counts=counts,
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


# -- the monitor -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HealthInputs:
    """What a HealthMonitor reads, each named and typed (no collector internals).

    The callables read live values: ``configure()`` replaces the config, the
    consumer (and so its breaker and batch size) exists only once started.
    """

    journal: Journal
    counters: Counters
    config: Callable[[], Config]
    breakers: Callable[[], Sequence[CircuitBreaker]]
    batch_size: Callable[[], int]
    cache: Callable[[], CacheStatistics | None] = lambda: None
    sink_concurrency: Callable[[], dict[str, dict[str, float]]] = dict  # a remote sink's adaptive limit


class HealthMonitor:
    """Builds health() snapshots of one collector and fires alerts on status transitions.

    ``run()`` reads the journal's gauges on a worker thread every ``refresh_interval``
    (never on the loop) and keeps them with their age in ``view``; ``health()`` and
    ``stats()`` read that view. Each refresh also remembers the counters, so rates,
    error rates and latency percentiles cover the last ``health.window_seconds`` on
    its ``clock``. Taking a snapshot changes nothing; ``check()`` (every
    ``performance.health_check_interval``) fires the alerts.

    Example:
        >>> monitor = HealthMonitor(HealthInputs(journal=j, counters=c, config=lambda: cfg,
        ...                         breakers=lambda: [b], batch_size=lambda: 100), clock=ManualClock())
        >>> monitor.add_callback(lambda alert: print(alert.status, alert.reasons))
        >>> await monitor.check()
    """

    def __init__(self, inputs: HealthInputs, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.inputs = inputs
        self.clock = clock
        self.status: Status = "ok"
        self.alerts = 0
        self.checks = 0
        self.callback_errors = 0
        self.view: _JournalView | None = None  # the last gauges read off the loop
        self._view_at = 0.0
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

    def view_age(self) -> float:
        """Seconds since ``view`` was read (0 when there is none yet)."""
        return 0.0 if self.view is None else max(0.0, self.clock() - self._view_at)

    def journal_counts(self) -> tuple[JournalCounts, float]:
        """The journal's counts and their age: the kept view, else (not started) read now."""
        if self.view is None:
            return self.inputs.journal.counts(), 0.0
        return self.view.counts, self.view_age()

    async def refresh(self) -> None:
        """Read the journal's gauges on a worker thread, keep them, and remember the counters."""
        view = await anyio.to_thread.run_sync(read_journal, self.inputs.journal)
        self.view, self._view_at = view, self.clock()
        self.record()

    def _marks(self) -> dict[str, float]:
        c = self.inputs.counters
        marks: dict[str, float] = {
            "collected": c.collected, "delivered": c.delivered, "retried": c.retried,
            "dead": c.dead, "dropped": sum(c.drops.values()),
            "collect_n": c.collect_us.count, "delivery_n": c.delivery_s.count, "batch_n": c.batch_sizes.count,
        }
        for b in self.inputs.breakers():
            marks[f"calls:{b.name}"], marks[f"failures:{b.name}"] = b.calls, b.failures
        return marks

    def record(self) -> None:
        """Remember the counters now: the window's rates are measured against these marks."""
        now, marks = self.clock(), self._marks()
        window = self.inputs.config().health.window_seconds
        h = self._history
        while len(h) > 1 and h[1][0] <= now - window:  # the newest mark at or before the cutoff stays
            h.popleft()
        if len(h) > 1 and now - h[-2][0] < window / 100:
            h[-1] = (now, marks)  # marks closer than window/100 apart: keep the newest
        else:
            h.append((now, marks))

    def _baseline(self, cutoff: float) -> tuple[float, dict[str, float]]:
        # The newest mark at or before the cutoff (or the oldest kept); nothing is dropped here.
        best = self._history[0]
        for mark in self._history:
            if mark[0] > cutoff:
                break
            best = mark
        return best

    def snapshot(self, view: _JournalView | None = None) -> tuple[Health, int]:
        """A Health snapshot (its status from ``evaluate``) and the dead letters in the window.

        Reads ``view`` (default: the kept one, else the journal now); changes nothing.
        """
        inp = self.inputs
        config = inp.config()
        view = view if view is not None else self.view if self.view is not None else read_journal(inp.journal)
        age = self.view_age() if view is self.view else 0.0
        now, marks = self.clock(), self._marks()
        base_t, base = self._baseline(now - config.health.window_seconds)
        span = max(now - base_t, 1e-9)
        delta = {k: v - base.get(k, 0) for k, v in marks.items()}
        c = inp.counters
        sinks = tuple(
            SinkHealth(
                name=b.name, state=b.state.value, calls=b.calls, failures=b.failures, opened=b.opened,
                error_rate=_ratio(delta[f"failures:{b.name}"], delta[f"calls:{b.name}"]),
            )
            for b in inp.breakers()
        )
        metrics = c.metrics
        cache = inp.cache()
        health = Health(
            status="ok", reasons=(), checked_at=view.now,
            depth=view.depth, depth_by_priority=view.by_priority,
            max_queue_size=config.async_collection.max_queue_size,
            oldest_pending_age=None if view.oldest is None else max(0.0, view.now + age - view.oldest),
            collected=c.collected, delivered=c.delivered, retried=c.retried, dead=c.dead,
            dropped=sum(c.drops.values()), drops_by_reason=dict(c.drops),
            rates={k: delta[k] / span for k in ("collected", "delivered", "retried", "dead", "dropped")},
            collect_latency=_percentiles(c.collect_us.since(int(base.get("collect_n", 0))), 1e-6),
            delivery_latency=_percentiles(c.delivery_s.since(int(base.get("delivery_n", 0)))),
            collect_histogram=_histogram(c.collect_us, 1e6) if metrics else None,
            delivery_histogram=_histogram(c.delivery_s) if metrics else None,
            batch_size=inp.batch_size(),
            adaptive_batching=config.async_collection.adaptive_batching,
            batches=c.batches,
            batch_sizes=_percentiles(c.batch_sizes.since(int(base.get("batch_n", 0)))),
            sinks=sinks, cache_hit_rate=None if cache is None else cache.hit_rate,
            journal_bytes=view.journal_bytes, wal_bytes=view.wal_bytes, memory_bytes=memory_bytes(),
            journal_age=age, faults=dict(c.faults), bisections=c.bisections, sink_concurrency=inp.sink_concurrency(),
            disk_full=inp.journal.disk_full,
        )
        dead_in_window = int(delta["dead"])
        status, reasons = evaluate(health, config, dead_in_window=dead_in_window)
        return msgspec.structs.replace(health, status=status, reasons=reasons), dead_in_window

    async def check(self, view: _JournalView | None = None) -> Health:
        """Take a snapshot and remember the counters; on a status transition log it and call every callback once."""
        health, _ = self.snapshot(view)
        self.record()
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
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # one broken callback must not silence the others, nor stop us
                if isinstance(exc, anyio.get_cancelled_exc_class()) and own_cancellation():
                    raise
                self.callback_errors += 1
                self.inputs.counters.fault("alert_callback", exc)
                log.error("health alert callback %r failed: %r", cb, exc, exc_info=exc)

    def refresh_interval(self) -> float:
        """How often ``run()`` re-reads the journal's gauges: often enough for stats(), cheap."""
        config = self.inputs.config()
        return min(config.performance.health_check_interval, max(0.1, min(1.0, config.journal.poll_interval * 20)))

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Refresh the gauges every ``refresh_interval()``, check every ``health_check_interval``, until ``stop()``."""
        with anyio.CancelScope() as self._scope:
            task_status.started()
            next_check = anyio.current_time() + self.inputs.config().performance.health_check_interval
            failures = 0
            while not self._stopped:
                await anyio.sleep(self.refresh_interval() * (1 << min(failures, 6)))
                try:
                    await self.refresh()
                    if anyio.current_time() >= next_check:
                        next_check = anyio.current_time() + self.inputs.config().performance.health_check_interval
                        await self.check(self.view)
                    failures = 0
                except Exception as exc:  # noqa: BLE001  (a failed check must not stop the collector)
                    failures += 1
                    self.inputs.counters.fault("health", exc)
                    log.warning("health check failed: %r", exc)

    def stop(self) -> None:
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()
