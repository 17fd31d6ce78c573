"""Faults stay inside the collector; poison operations are isolated (memwal/_sinks/call.py, the consumer).

Each test runs a real collector on a real journal file with memwal.testing doubles
and checks both sides: the caller's code goes on untouched, and every operation
ends delivered or dead-lettered with its reason, none left leased.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import FAST, fast_config, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from memwal import (
    AsyncMemoryCollector,
    CircuitOpen,
    DeliveryReport,
    FallbackSink,
    JournalError,
    Sink,
    SinkRejected,
    SinkUnavailable,
)
from memwal._core.config import CircuitBreakerConfig
from memwal._core.records import MemoryOperation, Priority
from memwal._delivery.plan import journal_unusable
from memwal._journal.journal import Journal
from memwal._policy.breaker import CircuitBreaker
from memwal._sinks.call import SinkFault, call_sink, deliver_isolating, halves, should_bisect
from memwal.testing import FlakySink, MemorySink

pytestmark = pytest.mark.anyio

# A breaker that never opens: these tests count calls, not breaker trips.
BASE = {**FAST, "circuit_breaker": {"failure_threshold": 10**6}}


def cfg(**sections: Any) -> Any:
    return fast_config(BASE, **sections)


def journal_rows(path: Path) -> tuple[int, int, int]:
    """(rows in ops, leased rows, dead rows) read from the file after the collector closed."""
    j = Journal(path)
    j.open()
    try:
        c = j.counts()
        return c.pending + c.leased, c.leased, c.dead
    finally:
        j.close()


def dead_reason(path: Path, op_id: str) -> str | None:
    j = Journal(path)
    j.open()
    try:
        return j.dead_reason(op_id)
    finally:
        j.close()


class OnceThen(MemorySink):
    """Raises ``exc`` on the first ``times`` calls, then stores like MemorySink."""

    def __init__(self, exc: BaseException, times: int = 1) -> None:
        super().__init__()
        self.exc, self.times = exc, times

    async def deliver(self, ops: Sequence[MemoryOperation]) -> DeliveryReport | None:
        if self.times > 0:
            self.times -= 1
            self.calls += 1
            raise self.exc
        return await super().deliver(ops)


class Boom(BaseException):
    """A BaseException subclass that is not cancellation (a sink's bug)."""


# -- 15.2: faults stay inside ---------------------------------------------------------


class WrongType(MemorySink):
    async def deliver(self, ops: Sequence[MemoryOperation]) -> Any:
        await super().deliver(ops)
        return "ok"  # not a DeliveryReport


async def test_a_sink_returning_a_wrong_type_is_retried_then_dead_lettered_and_the_caller_goes_on(
    journal_path: Path,
) -> None:
    sink = WrongType()
    config = cfg(async_collection={"max_retries": 2})
    after_flush = False
    async with AsyncMemoryCollector(journal_path, sink, config=config) as c:
        op_id = c.collect("bug", "x")
        await c.flush_queue(timeout=10)
        after_flush = True
        stats = c.stats()
    assert after_flush
    assert sink.calls == 3  # the first try and max_retries retries, then given up
    assert stats.dead == 1 and stats.faults.get("sink:SinkFault") == 3
    reason = dead_reason(journal_path, op_id) or ""
    assert "gave up after 3 attempts" in reason and "returned str" in reason
    assert journal_rows(journal_path) == (0, 0, 1)


@pytest.mark.parametrize("exc", [KeyError("k"), Boom("sink bug"), asyncio.CancelledError()],
                         ids=["KeyError", "BaseException", "CancelledError"])
async def test_a_sink_raising_anything_once_is_retried_and_delivered(journal_path: Path, exc: BaseException) -> None:
    sink = OnceThen(exc)
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        ids = [c.collect("bug", f"x{i}") for i in range(3)]
        await c.flush_queue(timeout=10)  # a row left leased would time this out
        stats = c.stats()
    assert set(sink.memories) == set(ids)
    assert stats.delivered == 3 and stats.dead == 0
    assert sum(stats.faults.values()) == 1 and sink.calls > 1  # counted, then tried again
    assert journal_rows(journal_path) == (0, 0, 0)


async def test_memwals_own_cancellation_still_cancels_a_hanging_sink(journal_path: Path) -> None:
    # The other side of the CancelledError rule: a timeout is ours, not the sink's fault.
    sink = FlakySink(hang=True)
    config = cfg(performance={"operation_timeout": 0.05}, async_collection={"max_retries": 0})
    async with AsyncMemoryCollector(journal_path, sink, config=config) as c:
        op_id = c.collect("bug", "x")
        await c.flush_queue(timeout=10)
        assert c.stats().faults == {}
    assert "timed out" in (dead_reason(journal_path, op_id) or "")


class SyncDeliver(Sink):
    def deliver(self, ops: Sequence[MemoryOperation]) -> None:  # type: ignore[override]
        raise AssertionError("never called")


def test_a_sink_whose_deliver_is_not_async_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "j.journal"
    with pytest.raises(TypeError, match=r"SyncDeliver\.deliver must be an async function"):
        AsyncMemoryCollector(path, SyncDeliver())
    with pytest.raises(TypeError, match=r"SyncDeliver\.deliver must be an async function"):
        FallbackSink(MemorySink(), SyncDeliver())
    assert list(tmp_path.iterdir()) == []


def test_reconcile_is_a_method_of_every_sink_and_only_fallback_supports_it() -> None:
    assert not MemorySink().reconciles and FallbackSink(MemorySink(), MemorySink()).reconciles
    with pytest.raises(NotImplementedError, match="MemorySink holds no operations"):
        asyncio.run(MemorySink().reconcile([]))


async def test_a_transient_journal_error_in_the_reconciler_is_retried_and_never_reaches_the_caller(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary, local = FlakySink(fail_next=10**6), MemorySink()
    config = cfg(circuit_breaker={"failure_threshold": 2, "recovery_timeout": 0.05})
    async with AsyncMemoryCollector(journal_path, FallbackSink(primary, local), config=config) as c:
        ids = [c.collect("bug", f"b{i}") for i in range(10)]
        await c.flush_queue(timeout=10)
        assert c.stats().held == 10
        real, failures = c.journal.lease_held, [2]

        def flaky_lease_held(n: int) -> Any:
            if failures[0]:
                failures[0] -= 1
                raise JournalError("database is locked", path=str(journal_path))
            return real(n)

        monkeypatch.setattr(c.journal, "lease_held", flaky_lease_held)
        primary.fail_next = 0
        await wait_for(lambda: c.stats().held == 0)
        stats = c.stats()
        body_ran_to_the_end = True
    assert body_ran_to_the_end
    assert stats.faults["reconciler:JournalError"] == 2 and stats.reconciled == 10
    assert set(primary.memories) == set(ids)


async def test_a_failing_lease_is_counted_and_retried(journal_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = MemorySink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        consumer = c._consumer
        assert consumer is not None
        real, failures = consumer._lease, [1]

        async def flaky_lease(n: int) -> Any:
            if failures[0]:
                failures[0] -= 1
                raise RuntimeError("a bug in the lease")
            return await real(n)

        monkeypatch.setattr(consumer, "_lease", flaky_lease)
        op_id = c.collect("bug", "x")
        await c.flush_queue(timeout=10)
        assert c.stats().faults["lease:RuntimeError"] == 1
    assert op_id in sink.memories


async def test_an_alert_callback_raising_a_baseexception_is_contained(journal_path: Path) -> None:
    seen: list[str] = []

    def bad(alert: Any) -> None:
        raise Boom("callback bug")

    config = cfg(circuit_breaker={"failure_threshold": 1, "recovery_timeout": 3600})
    async with AsyncMemoryCollector(journal_path, FlakySink(fail_next=10**6), config=config) as c:
        c.add_alert_callback(bad)
        c.add_alert_callback(lambda a: seen.append(a.status))
        c.collect("bug", "x")
        await wait_for(lambda: c._consumer is not None and c._consumer.breaker is not None
                       and c._consumer.breaker.state.value == "open")
        await c.monitor.check()
        assert seen == ["failing"] and c.monitor.callback_errors == 1


# -- 15.3: poison isolation -------------------------------------------------------------


class Poisoned(MemorySink):
    """Fails a whole batch that holds a poisoned id: SinkRejected, or ``exc`` when given."""

    def __init__(self, poison: set[str], exc: Exception | None = None) -> None:
        super().__init__()
        self.poison, self.exc = poison, exc

    async def deliver(self, ops: Sequence[MemoryOperation]) -> DeliveryReport | None:
        bad = [op.id for op in ops if op.id in self.poison]
        if bad:
            self.calls += 1
            raise self.exc if self.exc is not None else SinkRejected(f"422 cannot store {bad[0]}")
        return await super().deliver(ops)


async def test_one_rejected_operation_in_a_batch_of_500_is_isolated(journal_path: Path) -> None:
    sink = Poisoned(set())
    config = cfg(async_collection={"batch_size": 500, "max_batch_size": 500, "max_queue_size": 1000})
    async with AsyncMemoryCollector(journal_path, sink, config=config) as c:
        ids = [c.collect("bug", f"op {i}") for i in range(500)]  # no await: one lease takes all 500
        sink.poison = {ids[137]}
        await c.flush_queue(timeout=30)
        stats = c.stats()
    assert set(sink.memories) == set(ids) - {ids[137]}
    assert stats.delivered == 499 and stats.dead == 1 and stats.batches == 1
    extra = sink.calls - 1
    assert extra <= 2 * math.ceil(math.log2(500))  # the bisection, not one call per operation
    assert dead_reason(journal_path, ids[137]) == f"rejected: 422 cannot store {ids[137]}"


async def test_an_unexpected_exception_is_isolated_then_retried_up_to_max_retries(journal_path: Path) -> None:
    sink = Poisoned(set(), KeyError("content"))
    config = cfg(async_collection={"batch_size": 100, "max_retries": 2})
    async with AsyncMemoryCollector(journal_path, sink, config=config) as c:
        ids = [c.collect("bug", f"op {i}") for i in range(100)]
        sink.poison = {ids[3], ids[71]}
        await c.flush_queue(timeout=30)
        stats = c.stats()
    assert set(sink.memories) == set(ids) - {ids[3], ids[71]}
    assert stats.dead == 2 and stats.delivered == 98
    for bad in (ids[3], ids[71]):
        assert dead_reason(journal_path, bad) == "gave up after 3 attempts: KeyError: 'content'"
    assert all(sink.deliveries[i] == 1 for i in set(ids) - {ids[3], ids[71]})  # none sent twice


def test_bisection_decisions_are_plain_functions() -> None:
    assert should_bisect(SinkRejected("422"), 2) and should_bisect(KeyError("k"), 2)
    assert should_bisect(SinkFault("wrong type"), 2)
    assert not should_bisect(SinkRejected("422"), 1)
    assert not should_bisect(SinkUnavailable("503"), 500)  # an outage says nothing about the operations
    assert not should_bisect(None, 500) and not should_bisect(DeliveryReport(), 500)
    assert halves([1, 2, 3, 4, 5]) == ([1, 2], [3, 4, 5])


@pytest.mark.parametrize("n", [2, 3, 64, 500])
async def test_bisection_isolates_any_single_poison_within_the_call_bound(n: int) -> None:
    worst = best = 0
    for bad in range(n):
        calls = 0

        async def call(part: list[int], bad: int = bad) -> Any:
            nonlocal calls
            calls += 1
            return SinkRejected("no") if bad in part else None

        parts = await deliver_isolating(call, list(range(n)))
        assert sorted(x for p, _ in parts for x in p) == list(range(n))  # every item once
        assert [p for p, o in parts if o is not None] == [[bad]]
        worst, best = max(worst, calls - 1), min(best or n, calls - 1)
    assert worst <= math.ceil(math.log2(n)) + 1


# -- 17: one sink-call function ---------------------------------------------------------


async def test_call_sink_maps_every_answer_and_tells_the_breaker_once() -> None:
    breaker = CircuitBreaker("s", CircuitBreakerConfig(failure_threshold=100))
    ops = [MemoryOperation(id="a", category="bug", content="x")]

    async def answer(value: Any) -> Any:
        async def deliver(_: Any) -> Any:
            if isinstance(value, BaseException):
                raise value
            return value
        return await call_sink(deliver, ops, name="s", timeout=5, breaker=breaker)

    assert await answer(None) is None
    assert isinstance(await answer(DeliveryReport()), DeliveryReport)
    assert isinstance(await answer(42), SinkFault)
    assert isinstance(await answer(KeyError("k")), KeyError)
    assert isinstance(await answer(Boom("b")), SinkFault)
    assert isinstance(await answer(asyncio.CancelledError()), SinkFault)
    assert isinstance(await answer(SinkRejected("r")), SinkRejected)
    assert (breaker.calls, breaker.failures) == (7, 4)  # rejected, None and the report are answers
    with pytest.raises(KeyboardInterrupt):
        await answer(KeyboardInterrupt())


async def test_call_sink_lets_a_real_cancellation_through() -> None:
    started = anyio.Event()

    async def hang(_: Any) -> None:
        started.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        async def run() -> None:
            await call_sink(hang, [], name="s", timeout=None)
            raise AssertionError("not cancelled")
        tg.start_soon(run)
        await started.wait()
        tg.cancel_scope.cancel()


def test_replay_isolates_a_poison_operation_too(journal_path: Path) -> None:
    from memwal._recovery import redrive

    j = Journal(journal_path)
    j.open()
    ids = [j.append("bug", f"op {i}", {}, Priority.MEDIUM, (), None, limit=1000)[0].id for i in range(100)]
    sink = Poisoned({ids[42]})
    try:
        report = anyio.run(lambda: redrive.replay(j, sink))
        assert report.delivered == 99 and report.dead == 1 and report.failed == [ids[42]]
        assert set(sink.memories) == set(ids) - {ids[42]}
        assert sink.calls <= 1 + 2 * math.ceil(math.log2(100))
    finally:
        j.close()


async def test_a_fallback_chain_takes_over_from_a_sink_returning_a_wrong_type() -> None:
    primary, local = WrongType(), MemorySink()
    sink = FallbackSink(primary, local)
    sink.bind(cfg(), anyio.current_time)
    report = await sink.deliver([MemoryOperation(id="a", category="bug", content="x")])
    assert not report.failed and report.held == {"a": "MemorySink"} and "a" in local.memories
    assert sink.breakers()[0].failures == 1


async def test_a_failing_health_read_is_counted_and_the_collector_goes_on(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import memwal._observe.health as health_mod

    real, failures = health_mod.read_journal, [1]

    def flaky_read(journal: Journal) -> Any:
        if failures[0]:
            failures[0] -= 1
            raise JournalError("disk I/O error", path=str(journal_path))
        return real(journal)

    monkeypatch.setattr(health_mod, "read_journal", flaky_read)
    sink = MemorySink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        op_id = c.collect("bug", "x")
        await wait_for(lambda: c.monitor.view is not None)  # refreshed after the failure
        await c.flush_queue(timeout=10)
        assert c.stats().faults["health:JournalError"] == 1
    assert op_id in sink.memories


async def test_with_durability_full_claims_and_acks_never_commit_on_the_loop(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_loop: list[str] = []
    real = Journal.write_now

    def spy(self: Journal, sql: str, params: Any, **kw: Any) -> Any:
        on_loop.append(sql)
        return real(self, sql, params, **kw)

    monkeypatch.setattr(Journal, "write_now", spy)
    sink = MemorySink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg(journal={"durability": "full"})) as c:
        ids = [c.collect("bug", f"x{i}") for i in range(20)]
        await c.flush_queue(timeout=10)
    assert set(sink.memories) == set(ids) and on_loop == []
    async with AsyncMemoryCollector(journal_path, MemorySink(), config=cfg()) as c:
        c.collect("bug", "normal durability")
        await c.flush_queue(timeout=10)
    assert on_loop  # the spy works: with durability normal the loop commits when it can


def real_sqlite_error(tmp_path: Path, content: bytes) -> sqlite3.DatabaseError:
    path = tmp_path / "not-a-journal"
    path.write_bytes(content)
    conn = sqlite3.connect(path)
    try:
        conn.execute("SELECT * FROM sqlite_master").fetchall()
    except sqlite3.DatabaseError as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError("sqlite read the garbage")


def test_only_a_damaged_journal_counts_as_unusable(tmp_path: Path) -> None:
    notadb = real_sqlite_error(tmp_path, b"this is not a database at all" * 100)
    wrapped = JournalError(f"cannot read: {notadb}", path="j")
    wrapped.__cause__ = notadb
    assert journal_unusable(wrapped) == str(notadb)
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = 5  # type: ignore[attr-defined]
    busy = JournalError("cannot write: database is locked", path="j")
    busy.__cause__ = locked
    assert journal_unusable(busy) is None
    assert journal_unusable(JournalError("journal is closed", path="j")) is None
    assert journal_unusable(KeyError("k")) is None


async def test_an_unusable_journal_stops_the_collector_and_collect_says_why(
    journal_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notadb = real_sqlite_error(tmp_path, b"garbage" * 1000)
    sink = MemorySink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        consumer = c._consumer
        assert consumer is not None

        async def broken_lease(n: int) -> Any:
            raise JournalError(f"cannot read: {notadb}", path=str(journal_path)) from notadb

        monkeypatch.setattr(consumer, "_lease", broken_lease)
        kept = c.collect("bug", "collected before the journal broke")
        await wait_for(lambda: consumer.fatal is not None)
        with pytest.raises(JournalError, match=r"collector is stopped, journal unusable: file is not a database"):
            c.collect("bug", "after")
        assert c.stats().faults["lease:JournalError"] >= 1
        monkeypatch.undo()
    assert kept not in sink.memories and journal_rows(journal_path) == (1, 0, 0)  # it stays in the file


async def test_bisection_stops_when_the_lease_runs_out() -> None:
    left = [3.0]

    async def call(part: list[int]) -> Any:
        left[0] -= 1  # each call takes a second of the lease
        return SinkRejected("no") if 0 in part else None

    parts = await deliver_isolating(call, list(range(16)), time_left=lambda: left[0])
    assert sorted(x for p, _ in parts for x in p) == list(range(16))
    untried = [p for p, o in parts if isinstance(o, SinkUnavailable) and "lease ran out" in str(o)]
    assert untried and left[0] <= 0


async def test_a_failing_checkpoint_is_counted_and_never_reaches_the_caller(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kw: Any) -> None:
        raise RuntimeError("checkpoint bug")

    sink = MemorySink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        monkeypatch.setattr(c.journal, "maybe_checkpoint", broken)
        consumer = c._consumer
        assert consumer is not None
        await consumer._checkpoint(True)
        op_id = c.collect("bug", "x")
        await c.flush_queue(timeout=10)
        assert c.stats().faults["checkpoint:RuntimeError"] >= 1
        monkeypatch.undo()
    assert op_id in sink.memories


@given(n=st.integers(1, 200), data=st.data())
@settings(max_examples=60, deadline=None)
def test_bisection_delivers_every_good_item_once_and_isolates_every_bad_one(n: int, data: st.DataObject) -> None:
    bad = set(data.draw(st.sets(st.integers(0, n - 1), max_size=min(n, 8))))
    unexpected = data.draw(st.booleans())
    calls = 0

    async def call(part: list[int]) -> Any:
        nonlocal calls
        calls += 1
        if bad & set(part):
            return KeyError("k") if unexpected else SinkRejected("no")
        return None

    parts = anyio.run(deliver_isolating, call, list(range(n)))
    assert sorted(x for p, _ in parts for x in p) == list(range(n))  # each item in exactly one part
    assert {x for p, o in parts if o is None for x in p} == set(range(n)) - bad
    assert sorted(x for p, o in parts if o is not None for x in p) == sorted(bad)
    assert all(len(p) == 1 for p, o in parts if o is not None)  # failures stand alone
    assert calls <= 1 + len(bad) * (math.ceil(math.log2(n)) + 1)  # log2(n) + 1 more per bad item


def test_operations_a_sink_hands_back_unsent_do_not_count_against_its_breaker() -> None:
    from memwal._sinks.call import record

    breaker = CircuitBreaker("s", CircuitBreakerConfig(failure_threshold=1))
    handed_back = DeliveryReport(failed={"a": CircuitOpen("no slot"), "b": CircuitOpen("no slot")})
    record(breaker, handed_back, 2)
    assert breaker.allow() and breaker.statistics().failures == 0
    record(breaker, DeliveryReport(failed={"a": CircuitOpen("no slot"), "b": SinkUnavailable("503")}), 2)
    assert not breaker.allow()  # the one it sent failed: that is a failure
