"""The collector's life: start and close from any task and cancel scope, a prompt close,
run() as an anyio service, clear limits, and the names both collectors share."""

from __future__ import annotations

import inspect
import sqlite3
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio import wait_all_tasks_blocked
from helpers import fast_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memwal
from memwal import AsyncMemoryCollector, JournalError, MemoryCollector, SinkUnavailable, SQLiteSink
from memwal._journal.journal import Journal
from memwal.testing import MemorySink

pytestmark = pytest.mark.anyio

# A shutdown timeout no test waits out: a close that returns within the tests'
# deadlines (20 s) did not wait for it.
LONG = {"shutdown_timeout": 120.0}


def cfg(**sections: Any) -> Any:
    journal = {**LONG, **sections.pop("journal", {})}
    return fast_config(journal=journal, **sections)


class GateSink(MemorySink):
    """Holds every delivery until ``gate`` is set; counts closes."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = anyio.Event()
        self.entered = anyio.Event()
        self.closed = 0

    async def deliver(self, ops: Sequence[Any]) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().deliver(ops)

    async def aclose(self) -> None:
        self.closed += 1


class DownSink(MemorySink):
    """Always unavailable; counts calls and closes."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = 0

    async def deliver(self, ops: Sequence[Any]) -> None:
        self.calls += 1
        raise SinkUnavailable("down for the test")

    async def aclose(self) -> None:
        self.closed += 1


def undelivered(journal_path: Path, ids: Sequence[str]) -> set[str]:
    """The ids of ``ids`` still in the journal (pending or leased), read by a fresh Journal."""
    j = Journal(journal_path)
    j.open()
    try:
        return {i for i in ids if j.find(i) is not None}
    finally:
        j.close()


def leased(journal_path: Path) -> int:
    j = Journal(journal_path)
    j.open()
    try:
        return j.counts().leased
    finally:
        j.close()


# -- 15.1 the anyio service shape --------------------------------------------------


async def test_aclose_under_a_deadline_releases_closes_and_lets_the_caller_go_on(journal_path: Path) -> None:
    sink = GateSink()
    c = AsyncMemoryCollector(journal_path, sink, config=cfg())
    await c.start()
    op_id = await c.collect_async("qa", "in flight while the close is cancelled")
    await sink.entered.wait()
    with anyio.fail_after(20):
        with anyio.move_on_after(0.05) as scope:
            await c.aclose()  # waits for the batch in flight until the deadline
    assert scope.cancelled_caught
    await anyio.lowlevel.checkpoint()  # the caller's next await is not cancelled
    await c.aclose()  # a second close returns at once
    assert not c.journal.is_open and sink.closed == 1
    assert undelivered(journal_path, [op_id]) == {op_id} and leased(journal_path) == 0
    with pytest.raises(JournalError, match="closed"):
        c.collect("qa", "after close")


async def test_aclose_from_another_task_than_start(journal_path: Path) -> None:
    sink = MemorySink()
    c = AsyncMemoryCollector(journal_path, sink, config=cfg())
    ids: list[str] = []

    async def starter() -> None:
        await c.start()
        ids.append(await c.collect_async("qa", "from the starting task"))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(starter)
        ids.append(c.collect("qa", "from the closing task"))
        await c.aclose()
    assert set(sink.memories) == set(ids) and not c.journal.is_open


async def test_async_with_inside_a_cancelled_scope_exits_cleanly(journal_path: Path) -> None:
    sink = GateSink()
    with anyio.fail_after(20):
        with anyio.CancelScope() as outer:
            async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
                op_id = await c.collect_async("qa", "in flight when the scope is cancelled")
                await sink.entered.wait()
                outer.cancel()
                await anyio.sleep_forever()
    assert outer.cancelled_caught and not c.journal.is_open and sink.closed == 1
    assert undelivered(journal_path, [op_id]) == {op_id} and leased(journal_path) == 0


async def test_run_is_an_anyio_service_ended_by_aclose_or_by_cancellation(journal_path: Path) -> None:
    sink = MemorySink()
    c = AsyncMemoryCollector(journal_path, sink, config=cfg())
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(c.run)
            op_id = c.collect("qa", "through a service")
            await c.aclose()  # drains, then run() returns and the task group ends
    assert op_id in sink.memories and not c.journal.is_open

    gate = GateSink()
    d = AsyncMemoryCollector(journal_path, gate, config=cfg())
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(d.run)
            held = d.collect("qa", "in flight when the task group is cancelled")
            await gate.entered.wait()
            tg.cancel_scope.cancel()
    assert not d.journal.is_open and gate.closed == 1
    assert undelivered(journal_path, [held]) == {held} and leased(journal_path) == 0


async def test_a_cancelled_start_leaves_nothing_open(journal_path: Path) -> None:
    c = AsyncMemoryCollector(journal_path, MemorySink(), config=cfg())
    with anyio.fail_after(20):
        with anyio.CancelScope() as scope:
            scope.cancel()
            await c.start()
    await c.aclose()
    assert not c.journal.is_open
    with pytest.raises(JournalError):
        c.collect("qa", "never started")


# -- 15.5 close is prompt ----------------------------------------------------------


@pytest.mark.parametrize("why", ["sink_down", "breaker_open", "backing_off", "delivery_elsewhere"])
async def test_aclose_returns_at_once_when_nothing_can_be_delivered_now(journal_path: Path, why: str) -> None:
    sink = DownSink()
    sections: dict[str, Any] = {}
    if why == "breaker_open":
        sections["circuit_breaker"] = {"failure_threshold": 1, "recovery_timeout": 300.0}
    if why == "backing_off":
        sections["async_collection"] = {"retry_delay": 300.0, "max_retry_delay": 300.0}
        sections["circuit_breaker"] = {"failure_threshold": 10_000}
    if why == "delivery_elsewhere":
        sections["performance"] = {"max_inflight_batches": 0}
    c = AsyncMemoryCollector(journal_path, sink, config=cfg(**sections))
    await c.start()
    ids = [c.collect("qa", f"op {i}") for i in range(300)]
    if why in ("breaker_open", "backing_off"):
        with anyio.fail_after(20):
            while c.counters.retried + c.counters.released == 0:
                await anyio.sleep(0.005)
    with anyio.fail_after(20):  # far below shutdown_timeout (120 s)
        await c.aclose()
    assert undelivered(journal_path, ids) == set(ids) and leased(journal_path) == 0
    assert sink.closed == 1 and not c.journal.is_open


async def test_aclose_waits_for_the_batch_in_flight_and_delivers_it(journal_path: Path) -> None:
    sink = GateSink()
    c = AsyncMemoryCollector(journal_path, sink, config=cfg())
    await c.start()
    op_id = c.collect("qa", "in flight at close")
    await sink.entered.wait()
    closed = anyio.Event()

    async def close() -> None:
        await c.aclose()
        closed.set()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(close)
            await wait_all_tasks_blocked()
            assert not closed.is_set()  # the close waits for the batch in flight
            sink.gate.set()
    assert op_id in sink.memories and undelivered(journal_path, [op_id]) == set()


async def test_aclose_delivers_what_a_healthy_sink_takes(journal_path: Path) -> None:
    sink = MemorySink()
    c = AsyncMemoryCollector(journal_path, sink, config=cfg(async_collection={"batch_linger": 30.0}))
    await c.start()
    ids = [c.collect("qa", f"op {i}") for i in range(250)]
    with anyio.fail_after(20):
        await c.aclose()
    assert set(sink.memories) == set(ids)


# -- 15.8 clear limits -------------------------------------------------------------


def test_start_without_an_asyncio_loop_raises_at_once(journal_path: Path) -> None:
    # trio (not installed here) runs no asyncio loop; neither does a bare coroutine driver.
    c = AsyncMemoryCollector(journal_path, MemorySink(), config=cfg())
    coro = c.start()
    with pytest.raises(RuntimeError, match="memwal runs on asyncio"):
        coro.send(None)
    assert not journal_path.exists()


async def test_a_sqlite_sink_in_a_missing_directory_fails_start_naming_the_path(
    journal_path: Path, tmp_path: Path
) -> None:
    store = tmp_path / "nowhere" / "memories.db"
    c = AsyncMemoryCollector(journal_path, SQLiteSink(store), config=cfg())
    with pytest.raises(JournalError, match="nowhere"):
        await c.start()
    assert not c.journal.is_open
    async with AsyncMemoryCollector(journal_path, MemorySink(), config=cfg()) as again:  # nothing held
        again.collect("qa", "the journal opens again")


# -- 18.2 one vocabulary -----------------------------------------------------------

ASYNC_ONLY = {"collect_async", "start", "aclose", "run"}
SYNC_ONLY = {"close"}


def public(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def test_both_collectors_offer_the_same_names() -> None:
    a = public(AsyncMemoryCollector) | {"config", "sink", "journal", "clock", "counters", "monitor", "cache"}
    s = public(MemoryCollector)
    assert s - a == SYNC_ONLY
    shared = (public(AsyncMemoryCollector) - ASYNC_ONLY) & public(MemoryCollector)
    assert {"flush", "flush_queue", "config", "collect_bug", "collect_operation", "reset_circuit_breaker"} <= shared


@pytest.mark.parametrize("cls", [AsyncMemoryCollector, MemoryCollector])
def test_every_public_method_has_a_docstring_with_an_example(cls: type) -> None:
    missing = []
    # collect and collect_async: their examples open each class's docstring (their
    # bodies and docstrings are another branch's: group commit)
    for name in public(cls) - {"collect", "collect_async"}:
        member = inspect.getattr_static(cls, name)
        fn = member.fget if isinstance(member, property) else member
        if not callable(fn) and not isinstance(member, property):
            continue
        doc = inspect.getdoc(fn) or ""
        if "Example" not in doc and ">>>" not in doc:
            missing.append(name)
    assert missing == []


async def test_collect_helpers_keep_their_call_shapes(journal_path: Path) -> None:
    sink = MemorySink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        op_id = await c.collect_bug("parser fails", {"line": 3}, "high", tags=["parser"])
        assert await c.flush(timeout=10) == 1
    op = sink.memories[op_id]
    assert (op.category, op.metadata, op.priority.value, op.tags) == ("bug", {"line": 3}, "high", ("parser",))
    assert memwal.MemoryCollector.collect_bug is memwal.AsyncMemoryCollector.collect_bug  # written once


class ThreadGateSink(MemorySink):
    """Holds every delivery until the threading.Event ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    async def deliver(self, ops: Sequence[Any]) -> None:
        await anyio.to_thread.run_sync(self.gate.wait)
        await super().deliver(ops)


def test_sync_flush_queue_is_flush(journal_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = ThreadGateSink()
    with MemoryCollector(journal_path, sink, config=cfg()) as c:
        ids = [c.collect_feedback(f"fb {i}") for i in range(3)]
        journal = c._async.journal
        take = journal.own_snapshot

        def snapshot_then_open() -> Any:  # nothing can be delivered before the flush's snapshot
            snap = take()
            sink.gate.set()
            return snap

        monkeypatch.setattr(journal, "own_snapshot", snapshot_then_open)
        assert c.flush_queue(timeout=10) == 3
    assert set(sink.memories) == set(ids)



# -- interleavings -----------------------------------------------------------------


class SteppingSink(MemorySink):
    """Delivers after a few scheduler turns, so closes land while batches are in flight."""

    def __init__(self, turns: int) -> None:
        super().__init__()
        self.turns = turns

    async def deliver(self, ops: Sequence[Any]) -> None:
        for _ in range(self.turns):
            await anyio.lowlevel.checkpoint()
        await super().deliver(ops)


ACTIONS = st.lists(
    st.sampled_from(["start", "collect", "collect", "collect", "close", "close_cancelled", "close_deadline", "turn"]),
    min_size=1, max_size=25,
)


async def _interleave(journal: Path, actions: list[str], turns: int) -> tuple[list[str], set[str]]:
    sink = SteppingSink(turns)
    c = AsyncMemoryCollector(journal, sink, config=cfg(async_collection={"batch_size": 3}))
    ids: list[str] = []

    async def start() -> None:
        try:
            await c.start()
        except JournalError:  # closed before this task started it
            pass

    async def close_cancelled() -> None:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await c.aclose()

    async def close_deadline() -> None:
        with anyio.move_on_after(0.001):
            await c.aclose()

    with anyio.fail_after(30):  # nothing hangs
        async with anyio.create_task_group() as tg:
            for action in actions:
                if action == "start":
                    tg.start_soon(start)
                elif action == "collect":
                    try:
                        ids.append(c.collect("qa", f"op {len(ids)}"))
                    except JournalError:  # not started yet, or closing
                        pass
                elif action == "close":
                    tg.start_soon(c.aclose)
                elif action == "close_cancelled":
                    tg.start_soon(close_cancelled)
                elif action == "close_deadline":
                    tg.start_soon(close_deadline)
                await anyio.lowlevel.checkpoint()
        await c.aclose()
    assert not c.journal.is_open and c._state == "closed"
    return ids, set(sink.memories)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=ACTIONS, turns=st.integers(0, 3))
def test_start_collect_and_closes_from_many_tasks_lose_nothing_and_never_hang(
    tmp_path: Path, actions: list[str], turns: int
) -> None:
    journal = tmp_path / f"{uuid.uuid4().hex}.journal"
    ids, delivered = anyio.run(_interleave, journal, actions, turns, backend="asyncio")
    left = undelivered(journal, ids) if journal.exists() else set()
    assert set(ids) <= delivered | left  # every returned id: delivered or in the journal
    assert not journal.exists() or leased(journal) == 0


# -- what flush_queue counts ---------------------------------------------------------


async def test_flush_counts_own_operations_another_collector_delivers(journal_path: Path) -> None:
    """Two collectors on one journal: B never delivers (max_inflight_batches 0), A
    delivers for both. Each flush counts exactly its own undelivered operations,
    whoever delivers them, and waits for everyone's."""
    gate = GateSink()
    other = MemorySink()
    a = AsyncMemoryCollector(journal_path, gate, config=cfg())
    b = AsyncMemoryCollector(journal_path, other, config=cfg(performance={"max_inflight_batches": 0}))
    async with a, b:
        mine_b = [b.collect("qa", f"b {i}") for i in range(100)]
        mine_a = [a.collect("qa", f"a {i}") for i in range(5)]
        counts: dict[str, int] = {}

        async def flush(name: str, c: AsyncMemoryCollector) -> None:
            counts[name] = await c.flush_queue(timeout=20)

        async with anyio.create_task_group() as tg:
            tg.start_soon(flush, "b", b)
            tg.start_soon(flush, "a", a)
            with anyio.fail_after(20):
                await gate.entered.wait()  # A's first delivery is held: nothing was delivered before the flushes
            await wait_all_tasks_blocked()
            gate.gate.set()
        assert counts == {"b": 100, "a": 5}
        assert set(gate.memories) == set(mine_a) | set(mine_b) and other.memories == {}
        assert await b.flush_queue(timeout=20) == 0  # nothing of B's is left undelivered
        b.collect("qa", "late")
        assert await a.flush_queue(timeout=20) == 0  # waited for B's row, which is not A's
        assert await b.flush_queue(timeout=20) == 0  # already delivered by A before this call


class RejectAfterGate(GateSink):
    """Holds every delivery until ``gate`` is set, then rejects it for good."""

    async def deliver(self, ops: Sequence[Any]) -> None:
        self.entered.set()
        await self.gate.wait()
        raise memwal.SinkRejected("refused")


async def test_flush_counts_dead_letters(journal_path: Path) -> None:
    sink = RejectAfterGate()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        ids = [c.collect("qa", f"bad {i}") for i in range(3)]
        async with anyio.create_task_group() as tg:
            result: list[int] = []

            async def flush() -> None:
                result.append(await c.flush_queue(timeout=20))

            tg.start_soon(flush)
            with anyio.fail_after(20):
                await sink.entered.wait()
            await wait_all_tasks_blocked()
            sink.gate.set()
        assert result == [3] and c.stats().dead == 3
        assert all(c.journal.dead_reason(i) is not None for i in ids)


# -- closing a collector its journal stopped ---------------------------------------------


def not_a_database(tmp_path: Path) -> sqlite3.DatabaseError:
    """A real SQLite error for a damaged file ("file is not a database")."""
    path = tmp_path / "not-a-journal"
    path.write_bytes(b"garbage" * 1000)
    conn = sqlite3.connect(path)
    try:
        conn.execute("SELECT * FROM sqlite_master").fetchall()
    except sqlite3.DatabaseError as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError("sqlite read the garbage")


async def test_aclose_of_a_collector_its_journal_stopped_skips_the_flush(
    journal_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    damage = not_a_database(tmp_path)
    sink = DownSink()
    c = AsyncMemoryCollector(journal_path, sink, config=cfg())
    await c.start()
    consumer = c._consumer
    assert consumer is not None
    leases = [0]

    async def broken_lease(n: int) -> Any:
        leases[0] += 1
        raise JournalError(f"cannot read: {damage}", path=str(journal_path)) from damage

    monkeypatch.setattr(consumer, "_lease", broken_lease)
    kept = c.collect("qa", "collected before the journal broke")
    with anyio.fail_after(20):
        while consumer.fatal is None:
            await anyio.sleep(0.005)
    with pytest.raises(JournalError, match="collector is stopped, journal unusable"):
        c.collect("qa", "after")
    before = leases[0]
    with anyio.fail_after(20):  # far below shutdown_timeout (120 s); and no error
        await c.aclose()
    assert leases[0] == before and sink.calls == 0  # no flush was tried
    assert sink.closed == 1 and not c.journal.is_open and "closed" in repr(c)
    await c.aclose()  # a second close is a no-op
    assert undelivered(journal_path, [kept]) == {kept}


class FailsThenHangs(MemorySink):
    """Its first call fails (the sink is down); every later call hangs until cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.hanging = anyio.Event()
        self.cancelled = 0

    async def deliver(self, ops: Sequence[Any]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise SinkUnavailable("connection refused")
        self.hanging.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise


async def test_close_does_not_wait_for_a_delivery_to_a_sink_that_is_down(journal_path: Path) -> None:
    sink = FailsThenHangs()
    config = cfg(
        async_collection={"retry_delay": 0.01, "max_retry_delay": 0.01},
        circuit_breaker={"failure_threshold": 10_000},  # the breaker stays closed: the last failure says "down"
        performance={"operation_timeout": 60.0},  # no call timeout ends the hung delivery within the deadline
    )
    c = AsyncMemoryCollector(journal_path, sink, config=config)
    await c.start()
    op_id = c.collect("qa", "retried into a sink that hangs")
    with anyio.fail_after(20):
        await sink.hanging.wait()  # the retry is in flight when the close begins
    with anyio.fail_after(20):  # far below shutdown_timeout (120 s)
        await c.aclose()
    assert sink.calls == 2 and sink.cancelled == 1  # no call during the close; the hung one was cancelled
    assert undelivered(journal_path, [op_id]) == {op_id} and leased(journal_path) == 0
