"""FallbackSink: order, a breaker per sink, reconciliation to the primary (memwal/_sinks/fallback.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import FAST, fast_config, wait_for

from memwal import AsyncMemoryCollector, CircuitOpen, FallbackSink, SinkRejected
from memwal._core.records import MemoryOperation
from memwal._journal.journal import Journal
from memwal.testing import FlakySink, MemorySink

pytestmark = pytest.mark.anyio


BASE = {
    **FAST,
    "journal": {"poll_interval": 0.01, "shutdown_timeout": 1.0},
    "circuit_breaker": {"failure_threshold": 2, "recovery_timeout": 0.05},
}


def cfg(**sections: Any) -> Any:
    return fast_config(BASE, **sections)


def ops(n: int) -> list[MemoryOperation]:
    return [MemoryOperation(id=f"id{i}", category="bug", content=f"c{i}") for i in range(n)]


class TestDirect:
    async def test_a_healthy_primary_takes_everything(self) -> None:
        primary, local = MemorySink(), MemorySink()
        report = await FallbackSink(primary, local).deliver(ops(3))
        assert not report.failed and not report.held
        assert len(primary.memories) == 3 and not local.memories

    async def test_a_down_primary_falls_back_and_reports_the_holder(self) -> None:
        primary, local = FlakySink(fail_next=1), MemorySink()
        report = await FallbackSink(primary, local).deliver(ops(2))
        assert report.held == {"id0": "MemorySink", "id1": "MemorySink"}
        assert set(local.memories) == {"id0", "id1"}

    async def test_only_the_failed_ids_go_to_the_fallback(self) -> None:
        primary, local = FlakySink(fail_ids={"id1"}), MemorySink()
        report = await FallbackSink(primary, local).deliver(ops(3))
        assert set(primary.memories) == {"id0", "id2"} and set(local.memories) == {"id1"}
        assert report.held == {"id1": "MemorySink"}

    async def test_a_rejection_is_final_not_sent_to_the_fallback(self) -> None:
        local = MemorySink()
        report = await FallbackSink(FlakySink(fail_next=1, permanent=True), local).deliver(ops(1))
        assert isinstance(report.failed["id0"], SinkRejected) and not local.memories

    async def test_each_sink_has_its_own_breaker(self) -> None:
        primary, local = FlakySink(fail_next=10**6), MemorySink()
        sink = FallbackSink(primary, local)
        sink.bind(cfg(), anyio.current_time)
        for _ in range(4):
            await sink.deliver(ops(1))
        assert primary.failures == 2  # open after 2 failures: not called again
        assert [b.state.value for b in sink.breakers()] == ["open", "closed"]

    async def test_all_breakers_open_raises_circuit_open(self) -> None:
        sink = FallbackSink(FlakySink(fail_next=10**6), FlakySink(fail_next=10**6))
        sink.bind(cfg(circuit_breaker={"recovery_timeout": 3600}), anyio.current_time)
        for _ in range(2):
            await sink.deliver(ops(1))
        with pytest.raises(CircuitOpen, match="every sink's circuit breaker is open"):
            await sink.deliver(ops(1))

    async def test_reads_come_from_the_first_sink_with_a_closed_breaker(self) -> None:
        primary, local = FlakySink(fail_next=10**6), MemorySink()
        sink = FallbackSink(primary, local)
        sink.bind(cfg(circuit_breaker={"recovery_timeout": 3600}), anyio.current_time)
        for _ in range(2):
            await sink.deliver(ops(1))
        assert (await sink.get("id0")) is not None  # from the fallback: the primary's breaker is open

    def test_needs_a_fallback(self) -> None:
        with pytest.raises(ValueError, match="at least one fallback"):
            FallbackSink(MemorySink())


class TestReconciliation:
    async def test_held_operations_reach_the_primary_exactly_once_after_it_recovers(self, journal_path: Path) -> None:
        primary, local = FlakySink(fail_next=10**6), MemorySink()
        async with AsyncMemoryCollector(journal_path, FallbackSink(primary, local), config=cfg()) as c:
            ids = [c.collect("bug", f"b{i}") for i in range(50)]
            await c.flush_queue(timeout=10)
            assert set(local.memories) == set(ids)
            assert c.stats().fallback_delivered == 50 and c.stats().held == 50
            primary.fail_next = 0  # mem0 is back
            await wait_for(lambda: c.stats().held == 0)
            assert c.stats().reconciled == 50
        assert set(primary.memories) == set(ids)
        assert all(primary.deliveries[i] == 1 for i in ids)

    async def test_reconciliation_survives_a_restart(self, journal_path: Path) -> None:
        primary, local = FlakySink(fail_next=10**6), MemorySink()
        async with AsyncMemoryCollector(journal_path, FallbackSink(primary, local), config=cfg()) as c:
            ids = [c.collect("qa", f"q{i}") for i in range(10)]
            await c.flush_queue(timeout=10)
        j = Journal(journal_path)
        j.open()
        assert j.counts().held == 10
        j.close()
        healthy = MemorySink()
        async with AsyncMemoryCollector(journal_path, FallbackSink(healthy, MemorySink()), config=cfg()) as c:
            await wait_for(lambda: c.stats().held == 0)
        assert set(healthy.memories) == set(ids)

    async def test_an_ambiguous_primary_failure_does_not_duplicate_in_the_primary(self, journal_path: Path) -> None:
        primary, local = FlakySink(write_then_fail=1), MemorySink()
        async with AsyncMemoryCollector(journal_path, FallbackSink(primary, local), config=cfg()) as c:
            op_id = c.collect("bug", "stored then the connection dropped")
            await c.flush_queue(timeout=10)
            await wait_for(lambda: c.stats().held == 0)
        assert list(primary.memories) == [op_id]  # idempotent on the id: one memory

    async def test_reconciliation_can_be_turned_off(self, journal_path: Path) -> None:
        primary, local = FlakySink(fail_next=10**6), MemorySink()
        config = cfg(fallback={"reconcile": False})
        async with AsyncMemoryCollector(journal_path, FallbackSink(primary, local), config=config) as c:
            c.collect("bug", "x")
            await c.flush_queue(timeout=10)
            primary.fail_next = 0
            s = c.stats()
            assert (s.held, s.fallback_delivered, s.pending) == (0, 1, 0)
        assert not primary.memories and len(local.memories) == 1
