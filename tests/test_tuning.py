"""Profiles, configure() on a live collector, and adaptive batching against a known optimum."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import pytest
from helpers import wait_for

from memwal import AsyncMemoryCollector, ConfigError, MemoryCollector, load_config
from memwal._core.config import PROFILES, AsyncCollectionConfig, Config, JournalConfig
from memwal._core.records import MemoryOperation
from memwal._policy.adaptive import AdaptiveBatcher, apply_changes
from memwal._sinks.base import DeliveryReport
from memwal.testing import ManualClock, MemorySink

# -- profiles -------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_each_profile_applies_its_preset(profile: str) -> None:
    cfg = load_config(profile=profile, env={})
    for section, values in PROFILES[profile].items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value, f"{profile}: {section}.{key}"
    assert cfg != Config()


def test_memwal_profile_env_picks_a_preset_and_an_explicit_profile_wins() -> None:
    assert load_config(env={"MEMWAL_PROFILE": "production"}).journal.durability == "full"
    cfg = load_config(profile="low-resource", env={"MEMWAL_PROFILE": "production"})
    assert cfg.journal.durability == "normal" and cfg.async_collection.batch_size == 20


def test_file_values_override_the_preset_and_env_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "memwal.yaml"
    path.write_text("async_collection:\n  batch_size: 300\njournal:\n  durability: normal\n")
    cfg = load_config(path, profile="high-throughput", env={})
    assert cfg.async_collection.batch_size == 300  # the file beats the preset's 500
    assert cfg.async_collection.max_batch_size == 2000  # the preset fills what the file leaves out
    assert cfg.journal.durability == "normal"
    env = {"MEMWAL_PROFILE": "production", "MEMWAL_JOURNAL__DURABILITY": "full"}
    cfg = load_config(path, env=env)
    assert cfg.journal.durability == "full" and cfg.journal.lease_seconds == 120.0


def test_unknown_profile_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown profile 'turbo'") as info:
        load_config(profile="turbo", env={})
    assert info.value.path == "profile"
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config(env={"MEMWAL_PROFILE": "Production"})


# -- apply_changes --------------------------------------------------------------


def test_apply_changes_takes_short_and_dotted_keys() -> None:
    cfg, paths = apply_changes(Config(), {"batch_size": 10, "health.max_pending_age": 2.5, "rate_limit": 50})
    assert (cfg.async_collection.batch_size, cfg.health.max_pending_age, cfg.async_collection.rate_limit) == (
        10, 2.5, 50.0)
    assert paths == ["async_collection.batch_size", "async_collection.rate_limit", "health.max_pending_age"]


@pytest.mark.parametrize(
    ("changes", "path", "reason"),
    [
        ({"max_queue_size": 5}, "max_queue_size", "cannot change on a live collector"),
        ({"journal.durability": "full"}, "journal.durability", "cannot change on a live collector"),
        ({"bach_size": 5}, "bach_size", "unknown key"),
        ({"batch_size": 0}, "async_collection.batch_size", ">= 1"),
        ({"batch_size": 5000}, "async_collection.batch_size", "outside min_batch_size"),
        ({"max_failure_rate": 1.5}, "health.max_failure_rate", "<= 1"),
        ({"batch_timeout": "soon"}, "async_collection.batch_timeout", "Expected `float`"),
    ],
)
def test_apply_changes_rejects_with_the_key(changes: dict[str, object], path: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        apply_changes(Config(), {"health_check_interval": 0.2, **changes})
    assert info.value.path == path


# -- configure on a live collector ------------------------------------------------


class _GateSink(MemorySink):
    """Holds deliveries until ``gate`` is set; ``entered`` is set by the first one."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = anyio.Event()
        self.entered = anyio.Event()

    async def deliver(self, ops: Sequence[MemoryOperation]) -> DeliveryReport | None:
        self.entered.set()
        await self.gate.wait()
        return await super().deliver(ops)


@pytest.mark.anyio
async def test_configure_changes_the_batches_the_sink_receives(journal_path: Path) -> None:
    sink = _GateSink()
    cfg = load_config({"async_collection": {"batch_size": 10}, "performance": {"max_inflight_batches": 1}}, env={})
    async with AsyncMemoryCollector(journal_path, sink, config=cfg) as c:
        c.collect("bug", "warm-up")
        await sink.entered.wait()  # one batch in flight: the consumer leases nothing more
        for i in range(12):
            c.collect("bug", f"after {i}")
        new = c.configure(batch_size=4, max_concurrent_ops=3, rate_limit=1e6, **{"health.max_pending_age": 5})
        assert c.config is new and new.health.max_pending_age == 5.0
        assert c._consumer is not None
        assert (c._consumer.limiter.total_tokens, c._consumer.bucket.rate) == (3, 1e6)
        sink.gate.set()
        await c.flush_queue(timeout=10)
        assert c.health().batch_size == 4
        with pytest.raises(ConfigError) as info:
            c.configure(batch_size=4, lease_seconds=1.0)
        assert info.value.path == "lease_seconds" and c.config is new  # nothing applied
    assert [len(b) for b in sink.batches] == [1, 4, 4, 4]  # under the old size they would be 10 and 2


@pytest.mark.anyio
async def test_lowering_batch_linger_on_a_live_collector_releases_the_rows_it_holds(journal_path: Path) -> None:
    cfg = load_config({"async_collection": {"batch_size": 5, "batch_linger": 30.0}}, env={})
    sink = MemorySink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg) as c:
        c.collect("bug", "first")
        await wait_for(lambda: len(sink.batches) == 1)
        second = c.collect("bug", "second")  # lingers: the last lease is a moment old
        c.configure(batch_linger=0)  # wakes the loop, which leases it without a flush
        await wait_for(lambda: len(sink.batches) == 2)
    assert sink.batches[1] == [second]


def test_sync_configure_and_rejection(journal_path: Path) -> None:
    with MemoryCollector(journal_path, MemorySink()) as c:
        assert c.configure(**{"async_collection.batch_timeout": 0.5}).async_collection.batch_timeout == 0.5
        assert c.config.async_collection.batch_timeout == 0.5
        with pytest.raises(ConfigError, match="cannot change"):
            c.configure(on_full="reject")


# -- adaptive batching ----------------------------------------------------------

Cost = Callable[[int], float]


def model(fixed: float, per_op: float, knee: int, penalty: float) -> Cost:
    """Seconds per call: a fixed overhead, a per-op cost, and a steep penalty past ``knee``."""
    return lambda n: fixed + per_op * n + penalty * max(0, n - knee) ** 2


def best(cost: Cost, lo: int, hi: int) -> tuple[int, float]:
    n = min(range(lo, hi + 1), key=lambda k: cost(k) / k)
    return n, cost(n) / n


def drive(b: AdaptiveBatcher, cost: Cost, calls: int) -> list[int]:
    sizes = []
    for _ in range(calls):
        b.observe(b.size, cost(b.size))
        sizes.append(b.size)
    return sizes


@pytest.mark.parametrize(("start", "knee"), [(8, 200), (900, 200), (10, 40), (300, 5)])
def test_adaptive_batcher_converges_near_the_optimum(start: int, knee: int) -> None:
    cost = model(0.05, 0.001, knee, 0.002)
    n_opt, c_opt = best(cost, 1, 1000)
    b = AdaptiveBatcher(start, 1, 1000)
    sizes = drive(b, cost, 60)
    assert b.settled and sizes[-10:] == [b.size] * 10
    assert cost(b.size) / b.size <= c_opt * 1.05  # within 5% of the best cost per op
    assert abs(b.size - n_opt) <= 0.2 * n_opt


def test_adaptive_batcher_stays_within_bounds() -> None:
    cheap = model(0.05, 0.001, 10_000, 0.0)  # bigger is always better
    b = AdaptiveBatcher(10, 2, 64)
    assert max(drive(b, cheap, 40)) <= 64 and b.size == 64
    costly = model(0.0, 0.001, 1, 1.0)  # every op past the first is expensive
    b = AdaptiveBatcher(50, 16, 64)
    assert min(drive(b, costly, 40)) >= 16 and b.size == 16


def test_adaptive_batcher_shrinks_on_errors_and_ignores_partial_batches() -> None:
    b = AdaptiveBatcher(100, 10, 1000)
    assert b.observe(40, 1.0) == 100  # a partial batch tells nothing about 100
    assert b.observe(100, 0, error=True) == 50
    assert b.observe(50, 0, error=True) == 25
    assert b.observe(25, 0, error=True) == 12
    assert b.observe(12, 0, error=True) == 10
    assert b.errors == 4


def test_adaptive_batcher_searches_again_when_the_sink_changes() -> None:
    b = AdaptiveBatcher(8, 1, 1000)
    drive(b, model(0.05, 0.001, 200, 0.002), 60)
    first = b.size
    slower = model(0.05, 0.001, 40, 0.002)  # the backend now chokes past 40
    drive(b, slower, 60)
    n_opt, _c_opt = best(slower, 1, 1000)
    assert first > 150 and b.settled and abs(b.size - n_opt) <= 0.2 * n_opt


class CostSink(MemorySink):
    """Each call moves the collector's manual clock by ``cost(len(ops))``."""

    def __init__(self, clock: ManualClock, cost: Cost) -> None:
        super().__init__()
        self.clock, self.cost = clock, cost

    async def deliver(self, ops: Sequence[MemoryOperation]) -> DeliveryReport | None:
        self.clock.advance(self.cost(len(ops)))
        return await super().deliver(ops)


@pytest.mark.anyio
async def test_live_adaptive_batching_settles_and_health_reports_it(journal_path: Path) -> None:
    clock = ManualClock()
    cost = model(0.05, 0.001, 100, 0.002)
    n_opt, _ = best(cost, 1, 400)
    sink = CostSink(clock, cost)
    cfg = Config(
        async_collection=AsyncCollectionConfig(adaptive_batching=True, batch_size=8, max_batch_size=400),
        journal=JournalConfig(shutdown_timeout=5.0),
    )
    async with AsyncMemoryCollector(journal_path, sink, config=cfg, clock=clock) as c:
        assert c._consumer is not None
        c._consumer.max_inflight = 1  # one batch at a time, so each measured call is one sink call
        for i in range(4000):
            c.collect("performance", f"op {i}")
        await c.flush_queue(timeout=30)
        h = c.health()
    sizes = [len(b) for b in sink.batches]
    assert sizes[0] == 8 and max(sizes) <= 400
    assert h.adaptive_batching and abs(h.batch_size - n_opt) <= 0.2 * n_opt
    assert sizes[-4:-1] == [h.batch_size] * 3  # the last (partial) batch aside
