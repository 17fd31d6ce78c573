"""health(): snapshots, status transitions with a manual clock, one alert per transition."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from helpers import wait_for

import memwal
from memwal import AsyncMemoryCollector, MemoryCollector, Priority
from memwal._core.config import (
    AsyncCollectionConfig,
    CircuitBreakerConfig,
    Config,
    HealthConfig,
    JournalConfig,
    PerformanceConfig,
)
from memwal._journal.journal import Journal, Settlement
from memwal._observe.health import Alert, HealthInputs, HealthMonitor
from memwal._observe.stats import Counters
from memwal._policy.breaker import CircuitBreaker
from memwal.testing import FlakySink, ManualClock, MemorySink


class Rig:
    """Just what HealthMonitor reads from a collector, with every clock manual."""

    def __init__(self, path: Path, *, max_queue_size: int = 100, **health: Any) -> None:
        self.clock = ManualClock(0.0)
        self.wall = ManualClock(time.time())
        self.config = Config(
            async_collection=AsyncCollectionConfig(max_queue_size=max_queue_size),
            health=HealthConfig(**{"window_seconds": 30.0, **health}),
        )
        self.counters = Counters()
        self.journal = Journal(path, self.config.journal, clock=self.wall)
        self.journal.open()
        self.sink = MemorySink()
        self.breaker = CircuitBreaker("primary", CircuitBreakerConfig(failure_threshold=2), clock=self.clock)
        self.monitor = HealthMonitor(HealthInputs(
            journal=self.journal, counters=self.counters, config=lambda: self.config,
            breakers=lambda: [self.breaker], batch_size=lambda: 7,
        ), clock=self.clock)
        self.alerts: list[Alert] = []
        self.async_alerts: list[Alert] = []
        self.monitor.add_callback(self.alerts.append)
        self.monitor.add_callback(self._async_cb)

    async def _async_cb(self, alert: Alert) -> None:
        await anyio.lowlevel.checkpoint()
        self.async_alerts.append(alert)

    def add(self, n: int = 1, priority: Priority = Priority.MEDIUM) -> list[str]:
        limit = self.config.async_collection.max_queue_size
        ops = [self.journal.append("bug", f"op {i}", {}, priority, (), None, limit=limit)[0] for i in range(n)]
        return [op.id for op in ops]

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.wall.advance(seconds)

    def transitions(self) -> list[tuple[str, str]]:
        return [(a.previous, a.status) for a in self.alerts]


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    r = Rig(tmp_path / "h.journal", max_pending_age=10.0)
    yield r
    r.journal.close()


@pytest.mark.anyio
async def test_status_moves_with_age_breaker_and_error_rate_one_alert_per_transition(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="memwal")
    assert (await rig.monitor.check()).status == "ok"
    rig.add()
    rig.advance(5)
    assert (await rig.monitor.check()).status == "ok"
    rig.advance(6)  # the op is now ~11 s old, above max_pending_age 10
    for _ in range(3):
        h = await rig.monitor.check()
        assert h.status == "degraded" and "oldest pending" in h.reasons[0]
    assert rig.transitions() == [("ok", "degraded")]

    rig.breaker.record_failure()
    rig.breaker.record_failure()  # trips: the only sink is open -> failing
    for _ in range(3):
        h = await rig.monitor.check()
        assert h.status == "failing"
        assert any("circuit open: primary" in r for r in h.reasons)
    assert rig.transitions() == [("ok", "degraded"), ("degraded", "failing")]

    rig.breaker.reset()  # closed, but 2 of 2 calls failed in the window and the op is still old
    h = await rig.monitor.check()
    assert h.status == "degraded"
    assert any("error rate 100%" in r for r in h.reasons)

    leased, _ = rig.journal.lease(10)
    rig.journal.settle(Settlement(acked=[g.key for g in leased]))
    rig.advance(31)  # the failures leave the 30 s window
    for _ in range(2):
        assert (await rig.monitor.check()).status == "ok"
    assert rig.transitions() == [("ok", "degraded"), ("degraded", "failing"), ("failing", "degraded"),
                                 ("degraded", "ok")]
    assert [(a.previous, a.status) for a in rig.async_alerts] == rig.transitions()
    records = [r for r in caplog.records if r.getMessage().startswith("health ")]
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING, logging.INFO, logging.INFO]
    assert "oldest pending" in records[0].getMessage()


@pytest.mark.anyio
async def test_depth_thresholds_degrade_then_fail_when_full(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "d.journal", max_queue_size=4, max_depth_ratio=0.5)
    try:
        rig.add(2)
        assert (await rig.monitor.check()).status == "ok"  # 2 is not above 0.5 * 4
        rig.add(1)
        h = await rig.monitor.check()
        assert h.status == "degraded" and "depth 3 above 0.5" in h.reasons[0]
        rig.add(1)
        h = await rig.monitor.check()
        assert h.status == "failing" and "journal full" in h.reasons[0]
        assert rig.transitions() == [("ok", "degraded"), ("degraded", "failing")]
    finally:
        rig.journal.close()


@pytest.mark.anyio
async def test_dead_letters_degrade_for_one_window_and_the_flag_turns_it_off(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "x.journal")
    try:
        await rig.monitor.check()
        rig.counters.dead += 2
        h = await rig.monitor.check()
        assert h.status == "degraded" and "2 operations dead-lettered" in h.reasons[0]
        rig.advance(31)
        await rig.monitor.check()
        rig.advance(1)
        assert (await rig.monitor.check()).status == "ok"
        rig.config = msgspec.structs.replace(rig.config, health=HealthConfig(alert_on_dead=False))
        rig.counters.dead += 1
        assert (await rig.monitor.check()).status == "ok"
        assert rig.transitions() == [("ok", "degraded"), ("degraded", "ok")]
    finally:
        rig.journal.close()


@pytest.mark.anyio
async def test_failing_callback_does_not_stop_the_others(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    def broken(alert: Alert) -> None:
        raise RuntimeError("pager down")

    rig.monitor.remove_callback(rig.alerts.append)
    rig.monitor.add_callback(broken)
    rig.monitor.add_callback(rig.alerts.append)
    rig.add()
    rig.advance(11)
    await rig.monitor.check()
    assert rig.transitions() == [("ok", "degraded")]
    assert any("pager down" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_depth_by_priority_age_rates_and_window(rig: Rig) -> None:
    rig.add(2, Priority.CRITICAL)
    rig.add(3, Priority.LOW)
    for _ in range(4):
        rig.counters.delivery_s.add(0.5)
    rig.counters.delivered += 4
    rig.advance(2)
    h, _ = rig.monitor.snapshot()
    rig.monitor.record()  # what the background refresh does: the window's next mark
    assert h.depth["pending"] == 5
    assert h.depth_by_priority == {"critical": 2, "high": 0, "medium": 0, "low": 3}
    assert h.oldest_pending_age is not None and 1.5 < h.oldest_pending_age < 10
    assert h.rates["delivered"] == pytest.approx(2.0)  # 4 over the 2 s since the monitor started
    assert h.delivery_latency is not None and h.delivery_latency.samples == 4
    assert h.batch_size == 7
    rig.advance(31)
    rig.counters.delivery_s.add(2.0)
    h, _ = rig.monitor.snapshot()  # the 0.5 s samples are older than the window
    assert h.delivery_latency is not None
    assert (h.delivery_latency.samples, h.delivery_latency.p50) == (1, 2.0)
    with pytest.raises(AttributeError):
        h.status = "failing"  # type: ignore[misc]


def _check_full_snapshot(h: memwal.Health, n: int) -> None:
    assert h.status == "ok" and h.reasons == ()
    assert (h.collected, h.delivered, h.dead, h.dropped) == (n, n, 0, 0)
    assert h.depth["pending"] == 0 and sum(h.depth_by_priority.values()) == 0
    assert h.collect_latency is not None and h.collect_latency.samples == n
    assert h.delivery_latency is not None and h.delivery_latency.samples == n
    assert 0 < h.collect_latency.p50 <= h.collect_latency.p95 <= h.collect_latency.p99
    assert h.collect_histogram is not None and h.collect_histogram.count == n
    assert h.sinks[0].state == "closed" and h.sinks[0].error_rate == 0.0
    assert h.journal_bytes > 0 and h.memory_bytes is not None and h.memory_bytes > 1 << 20
    assert h.cache_hit_rate is not None and 0.0 <= h.cache_hit_rate <= 1.0


@pytest.mark.anyio
async def test_async_collector_health_reports_deliveries(journal_path: Path) -> None:
    async with AsyncMemoryCollector(journal_path, MemorySink()) as c:
        for i in range(25):
            c.collect("bug", f"op {i}")
        await c.flush_queue(timeout=10)
        op_id = c.collect("bug", "read back twice")
        await c.flush_queue(timeout=10)
        for _ in range(2):
            assert (await c.get(op_id)) is not None
        h = c.health()
        assert c.cache is not None and h.cache_hit_rate == c.cache.statistics().hit_rate
    _check_full_snapshot(h, 26)
    assert h.batch_size == c.config.async_collection.batch_size and not h.adaptive_batching


def test_sync_collector_health_reports_deliveries(journal_path: Path) -> None:
    with MemoryCollector(journal_path, MemorySink()) as c:
        for i in range(10):
            c.collect("feedback", f"op {i}")
        c.flush(timeout=10)
        h = c.health()
    _check_full_snapshot(h, 10)


def test_metrics_off_reports_no_latency(journal_path: Path) -> None:
    cfg = Config(health=HealthConfig(metrics=False))
    with MemoryCollector(journal_path, MemorySink(), config=cfg) as c:
        c.collect("bug", "x")
        c.flush(timeout=10)
        h = c.health()
    assert h.delivered == 1
    assert (h.collect_latency, h.delivery_latency, h.collect_histogram) == (None, None, None)


@pytest.mark.anyio
async def test_periodic_check_in_the_task_group_alerts_when_the_breaker_opens(journal_path: Path) -> None:
    cfg = Config(
        performance=PerformanceConfig(health_check_interval=0.05),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=1, recovery_timeout=600.0),
        async_collection=AsyncCollectionConfig(retry_delay=0.0),
        journal=JournalConfig(shutdown_timeout=0.2),
    )
    got = anyio.Event()
    alerts: list[Alert] = []

    async def on_alert(alert: Alert) -> None:
        alerts.append(alert)
        got.set()

    async with AsyncMemoryCollector(journal_path, FlakySink(fail_next=1000), config=cfg) as c:
        c.add_alert_callback(on_alert)
        c.collect("bug", "never delivered while the sink is down")
        with anyio.fail_after(10):
            await got.wait()
        assert alerts[0].status == "failing"
        assert any("circuit open" in r for r in alerts[0].reasons)
        assert c.health().sinks[0].state == "open"
        c.remove_alert_callback(on_alert)


def test_reading_health_changes_nothing(rig: Rig) -> None:
    rig.add(3)
    rig.counters.delivered += 4
    rig.advance(2)
    rig.monitor.snapshot()
    history = list(rig.monitor._history)
    rig.advance(40)  # past the window: a snapshot that recorded marks would move the baseline
    for _ in range(3):
        rig.monitor.snapshot()
    assert list(rig.monitor._history) == history
    h, _ = rig.monitor.snapshot()
    assert h.rates["delivered"] == pytest.approx(4 / 42)  # still measured from the start: nothing moved


@pytest.mark.anyio
async def test_health_and_stats_read_a_view_kept_off_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = memwal.load_config({"journal": {"poll_interval": 0.01}}, env={})
    loop_thread = threading.get_ident()
    reads: list[int] = []
    real_counts = Journal.counts

    def counting(self: Journal) -> Any:
        reads.append(threading.get_ident())
        return real_counts(self)

    monkeypatch.setattr(Journal, "counts", counting)
    async with memwal.AsyncMemoryCollector(tmp_path / "v.journal", MemorySink(), config=config) as c:
        c.collect("bug", "x")
        await c.flush_queue(timeout=10)
        await wait_for(lambda: c.monitor.view is not None)
        reads.clear()
        for _ in range(5):
            h, s = c.health(), c.stats()
        assert reads == []  # health() and stats() ran no journal query
        assert h.depth["pending"] == 0 and s.pending == 0 and s.journal_age >= 0 and h.journal_age >= 0
        await wait_for(lambda: len(reads) >= 2)  # the view is refreshed in the background ...
    assert loop_thread not in reads  # ... on worker threads only
