"""AsyncMemoryCollector and MemoryCollector end to end, with in-memory and SQLite sinks."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest
from helpers import FAST, fast_config, wait_for

from memwal import (
    AsyncMemoryCollector,
    JournalError,
    MemoryCollector,
    MemoryOperation,
    Priority,
    SinkRejected,
    SQLiteSink,
)
from memwal._journal.journal import Journal
from memwal.testing import FlakySink, MemorySink

pytestmark = pytest.mark.anyio


def cfg(**sections: Any) -> Any:
    return fast_config(FAST, **sections)


class GateSink(MemorySink):
    """Holds every delivery until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = anyio.Event()
        self.entered = anyio.Event()
        self.arrived: list[list[str]] = []  # each call's ids, recorded before the gate
        self.reject = False  # past the gate: raise SinkRejected instead of storing

    async def deliver(self, ops: Sequence[MemoryOperation]):
        self.arrived.append([op.id for op in ops])
        self.entered.set()
        await self.gate.wait()
        if self.reject:
            raise SinkRejected("the test rejects this batch")
        return await super().deliver(ops)


async def test_collected_operations_are_delivered_once_and_counted(journal_path: Path, store_path: Path) -> None:
    async with AsyncMemoryCollector(journal_path, SQLiteSink(store_path), config=cfg()) as c:
        ids = [await c.collect_async("bug", f"bug {i}", {"i": i}, tags=["t"], project="p") for i in range(500)]
        ids += [c.collect("feedback", f"fb {i}") for i in range(500)]
        assert await c.flush_queue(timeout=30) == 1000
        s = c.stats()
        assert (s.collected, s.delivered, s.pending, s.leased, s.dead) == (1000, 1000, 0, 0, 0)
        assert s.collect_p50_us > 0
    async with SQLiteSink(store_path) as store:
        assert await store.count() == 1000
        assert await store.count("feedback") == 500
        m = await store.get(ids[3])
        assert m is not None and m.metadata == {"i": 3} and m.tags == ("t",) and m.project == "p"
        assert m.priority is Priority.HIGH


async def test_an_id_is_returned_only_once_the_operation_is_committed(journal_path: Path) -> None:
    sink = GateSink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        op_id = await c.collect_async("qa", "committed before return")
        other = Journal(journal_path)
        other.open()
        assert other.find(op_id) is not None  # visible to another connection right away
        other.close()
        sink.gate.set()


async def test_rows_gather_for_one_batch_while_another_is_in_flight(journal_path: Path) -> None:
    # Without this, a fast consumer leases each new row in a batch of its own, paying
    # two journal transactions per row while the producers write.
    sink = GateSink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        first = await c.collect_async("qa", "first")
        await sink.entered.wait()
        later = []
        for i in range(49):
            later.append(await c.collect_async("qa", f"later {i}"))
            await anyio.sleep(0.002)  # time for a lease loop that leases early to do so
        sink.gate.set()
        await c.flush_queue(timeout=30)
    assert sink.arrived == [[first], later]


async def test_while_rows_gather_a_collect_wakes_the_lease_loop_only_for_a_whole_batch(
    journal_path: Path,
) -> None:
    # Waking the loop for every collect only to nap again costs the thread collect runs
    # on; the settle of the batch in flight wakes it anyway. The collect that completes
    # a batch does wake it (poll_interval 60: nothing else could), so a second batch
    # leaves while the first is still in flight.
    sink = GateSink()
    config = cfg(async_collection={"batch_size": 10}, journal={"poll_interval": 60.0})
    async with AsyncMemoryCollector(journal_path, sink, config=config) as c:
        await c.collect_async("qa", "first")
        await sink.entered.wait()
        sink.entered = anyio.Event()
        consumer = c._consumer
        assert consumer is not None
        naps = 0
        nap = consumer._nap

        async def counting_nap(seconds: float) -> None:
            nonlocal naps
            naps += 1
            await nap(seconds)

        consumer._nap = counting_nap  # type: ignore[method-assign]
        nine = []
        for i in range(9):
            nine.append(await c.collect_async("qa", f"op {i}"))
            for _ in range(5):
                await anyio.lowlevel.checkpoint()  # a woken loop would run and nap again here
        assert naps == 0 and len(sink.arrived) == 1
        tenth = await c.collect_async("qa", "op 9")
        await sink.entered.wait()
        assert sink.arrived[1] == [*nine, tenth]
        sink.gate.set()


async def test_rows_collected_soon_after_a_lease_wait_for_a_whole_batch_or_a_flush(journal_path: Path) -> None:
    # batch_linger: while rows keep arriving, the consumer leases at most once per
    # linger unless a whole batch or a flush waits. The linger (30 s) outlasts every
    # wait below, so each delivery after the first comes from one of those two.
    sink = MemorySink()
    config = cfg(async_collection={"batch_size": 5, "batch_linger": 30.0})
    async with AsyncMemoryCollector(journal_path, sink, config=config) as c:
        first = await c.collect_async("qa", "first")
        await wait_for(lambda: len(sink.batches) == 1)  # no lease before it: it leaves at once
        four = []
        for i in range(4):
            four.append(await c.collect_async("qa", f"op {i}"))
            await anyio.sleep(0.002)  # time for a lease loop that leases early to do so
        assert len(sink.batches) == 1
        fifth = await c.collect_async("qa", "op 4")
        await wait_for(lambda: len(sink.batches) == 2)  # a whole batch waits: leased at once
        last = await c.collect_async("qa", "last")
        assert await c.flush_queue(timeout=10) == 1
    assert sink.batches == [[first], [*four, fifth], [last]]


@pytest.mark.parametrize("settings", [{"batch_linger": 0}, {"batch_linger": 30.0, "batch_timeout": 0}],
                         ids=["linger 0", "linger capped by batch_timeout 0"])
async def test_without_a_linger_a_row_is_leased_once_the_last_batch_settles(
    journal_path: Path, settings: dict[str, float]
) -> None:
    # batch_timeout is the most an operation waits for its batch to fill, linger included.
    sink = MemorySink()
    config = cfg(async_collection={"batch_size": 5, **settings})
    async with AsyncMemoryCollector(journal_path, sink, config=config) as c:
        first = await c.collect_async("qa", "first")
        await wait_for(lambda: len(sink.batches) == 1)
        second = await c.collect_async("qa", "second")
        await wait_for(lambda: len(sink.batches) == 2)  # no flush, no whole batch
    assert sink.batches == [[first], [second]]


async def test_when_the_loop_cannot_read_at_once_the_consumer_reads_on_a_worker_thread(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def busy(self: Journal, n: int, **kw: Any) -> None:
        calls.append(n)

    monkeypatch.setattr(Journal, "select_ready_now", busy)
    sink = MemorySink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        ids = [await c.collect_async("qa", f"op {i}") for i in range(20)]
        await c.flush_queue(timeout=10)  # its count leaves out what was delivered before it
    assert set(sink.memories) == set(ids) and calls


async def test_a_full_journal_ends_the_linger_for_a_collect_waiting_for_room(journal_path: Path) -> None:
    # The batch (500) can never fill under the bound (10): without this the blocking
    # collect would wait the whole linger and time out with the consumer idle.
    sink = MemorySink()
    config = cfg(async_collection={"batch_size": 500, "max_queue_size": 10, "on_full": "block",
                                   "collect_timeout": 20.0, "batch_linger": 30.0})
    async with AsyncMemoryCollector(journal_path, sink, config=config) as c:
        ids = [await c.collect_async("qa", "first")]
        await wait_for(lambda: len(sink.batches) == 1)
        ids += [await c.collect_async("qa", f"op {i}") for i in range(11)]  # the 11th waits for room
        await c.flush_queue(timeout=10)
    assert set(sink.memories) == set(ids)


async def test_rows_backing_off_do_not_count_toward_a_whole_batch(journal_path: Path) -> None:
    # Eight rows wait out a 60 s retry. Counted as a batch's worth, they would end
    # the linger at every collect and each new row would leave alone.
    sink = FlakySink(fail_next=100, retry_after=60.0)  # no jitter brings a retry into the test
    config = cfg(async_collection={"batch_size": 5, "batch_linger": 0, "retry_delay": 60.0,
                                   "max_retry_delay": 60.0},
                 circuit_breaker={"failure_threshold": 1000})
    async with AsyncMemoryCollector(journal_path, sink, config=config) as c:
        for i in range(8):
            await c.collect_async("qa", f"fails {i}")
        await wait_for(lambda: c.stats().retried >= 8 and c.stats().leased == 0)
        c.configure(batch_linger=30.0)
        sink.fail_next = 0
        good = []
        for i in range(4):
            good.append(await c.collect_async("qa", f"good {i}"))
            await anyio.sleep(0.002)  # time for a lease loop that leases early to do so
        assert sink.batches == []
        good.append(await c.collect_async("qa", "good 4"))
        await wait_for(lambda: len(sink.batches) == 1)
    assert sink.batches == [good]


async def test_small_rows_are_read_on_the_loop_and_a_large_row_collected_here_on_a_worker(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[tuple[str, int]] = []
    now, threaded = Journal.select_ready_now, Journal.select_ready

    def on_loop(self: Journal, n: int, **kw: Any) -> Any:
        got = now(self, n, **kw)
        if got is not None:
            reads.append(("loop", len(got[0])))
        return got

    def on_worker(self: Journal, n: int, **kw: Any) -> Any:
        got = threaded(self, n, **kw)
        reads.append(("worker", len(got[0])))
        return got

    monkeypatch.setattr(Journal, "select_ready_now", on_loop)
    monkeypatch.setattr(Journal, "select_ready", on_worker)
    async with AsyncMemoryCollector(journal_path, MemorySink(), config=cfg()) as c:
        await c.collect_async("qa", "small")
        await c.flush_queue(timeout=10)
        assert ("loop", 1) in reads
        del reads[:]
        await c.collect_async("qa", "x" * 600_000)  # a large row collected here: read off the loop
        await c.flush_queue(timeout=10)
        assert ("worker", 1) in reads and ("loop", 1) not in reads
        await c.collect_async("qa", "small again")  # the last read moved under 1 MiB: on the loop
        await c.flush_queue(timeout=10)
    assert ("loop", 1) in reads


async def test_with_no_inflight_batches_a_collector_collects_and_another_delivers(journal_path: Path) -> None:
    # max_inflight_batches 0: collect on this collector, deliver from another one on
    # the same journal (in production, another process); flush waits for that one.
    mine, theirs = MemorySink(), MemorySink()
    async with (
        AsyncMemoryCollector(journal_path, mine, config=cfg(performance={"max_inflight_batches": 0})) as collecting,
        AsyncMemoryCollector(journal_path, theirs, config=cfg()) as delivering,
    ):
        ids = [await collecting.collect_async("qa", f"op {i}") for i in range(50)]
        ids.append(collecting.collect("qa", "op 50"))
        await collecting.flush_queue(timeout=30)  # returns once the other collector delivered
        assert mine.calls == 0 and sorted(theirs.memories) == sorted(ids)
        s = collecting.stats()
        assert (s.collected, s.delivered, s.pending) == (51, 0, 0)
        await wait_for(lambda: delivering.stats().delivered == 51)  # its counters follow its acks


async def test_max_inflight_batches_0_on_a_live_collector_stops_leasing(journal_path: Path) -> None:
    sink = GateSink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        first = await c.collect_async("qa", "in flight")
        await sink.entered.wait()  # the lease loop now naps behind the batch in flight
        c.configure(max_inflight_batches=0)
        paused = await c.collect_async("qa", "waits")
        sink.gate.set()  # the batch in flight still settles...
        await wait_for(lambda: c.stats().delivered == 1)
        with pytest.raises(TimeoutError):  # ...but nothing more is leased
            await c.flush_queue(timeout=0.3)
        assert sink.arrived == [[first]] and c.stats().pending == 1
        c.configure(max_inflight_batches=4)
        assert await c.flush_queue(timeout=30) == 1
        assert sink.arrived == [[first], [paused]]


@pytest.mark.parametrize("outcome", ["delivered", "dead-lettered"])
async def test_a_batch_settled_while_a_flush_counts_is_still_counted(journal_path: Path, outcome: str) -> None:
    # The flush counts the journal on a worker thread. A batch this collector settles
    # before that count reads the journal must still be counted: flush_queue once
    # reported 0 for an operation it had waited for (1 run in 5 of a test below).
    sink = GateSink()
    sink.reject = outcome == "dead-lettered"
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        op_id = await c.collect_async("qa", "in flight while the flush counts")
        await sink.entered.wait()
        count = c.journal.remaining_upto
        portal_token = anyio.lowlevel.current_token()

        def count_after_the_batch_settled(seq: int, watch: Any) -> int:
            c.journal.remaining_upto = count  # type: ignore[method-assign]  # once
            anyio.from_thread.run_sync(sink.gate.set, token=portal_token)  # the delivery ends...
            deadline = time.monotonic() + 10
            while c.journal.find(op_id) is not None:  # ...and the row leaves the journal
                assert time.monotonic() < deadline, "the batch never settled"
                threading.Event().wait(0.005)
            return count(seq, watch)

        c.journal.remaining_upto = count_after_the_batch_settled  # type: ignore[method-assign]
        assert await c.flush_queue(timeout=30) == 1
        s = c.stats()
        assert (s.delivered, s.dead) == ((1, 0) if outcome == "delivered" else (0, 1))


async def test_a_flush_leases_a_partial_batch_while_another_is_in_flight(journal_path: Path) -> None:
    slow = GateSink()
    config = cfg(journal={"poll_interval": 60.0})  # only a wake-up can move the lease loop
    async with AsyncMemoryCollector(journal_path, slow, config=config) as c:
        await c.collect_async("qa", "first")
        await slow.entered.wait()
        slow.entered = anyio.Event()
        second = await c.collect_async("qa", "second")
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.flush_queue, 30)
            await slow.entered.wait()  # the flush leased "second" with "first" still in flight
            assert slow.arrived[-1] == [second] and c.stats().leased == 2
            slow.gate.set()


async def test_a_failed_batch_is_put_back_for_retry_on_the_loop_like_an_ack(journal_path: Path) -> None:
    # settle's one transaction runs on a worker thread that holds the writer lock while
    # it needs the GIL back, so collects would wait on it; a retry needs no transaction.
    sink = FlakySink(fail_next=1)
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        transactions: list[Any] = []
        settle = c.journal.settle

        def spy(s: Any) -> None:
            transactions.append(s)
            settle(s)

        c.journal.settle = spy  # type: ignore[method-assign]
        ids = [await c.collect_async("qa", f"op {i}") for i in range(5)]
        assert await c.flush_queue(timeout=30) == 5
        s = c.stats()
        assert sink.failures == 1 and s.retried >= 1 and s.delivered == 5  # the failed call's rows retried
        assert sorted(sink.memories) == sorted(ids)
        assert transactions == []


async def test_the_loop_hands_a_write_to_a_worker_while_another_process_holds_the_lock(
    journal_path: Path,
) -> None:
    # write_now never waits on the loop; when the journal is busy the ack goes to a
    # worker thread, which waits for the lock and then acknowledges.
    sink = GateSink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        ids = [await c.collect_async("qa", f"op {i}") for i in range(10)]
        await sink.entered.wait()
        handed: list[str] = []
        write_one = c.journal.write_one

        def spy(sql: str, params: Any, **kw: Any) -> int:
            handed.append(sql)
            return write_one(sql, params, **kw)

        c.journal.write_one = spy  # type: ignore[method-assign]
        other = sqlite3.connect(journal_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            sink.gate.set()
            await wait_for(lambda: bool(handed), timeout=2.0)  # the loop never sleeps on the lock (busy_timeout 5 s)
            assert c.stats().delivered == 0  # acknowledged only once the lock is free
        finally:
            other.execute("ROLLBACK")
            other.close()
        await c.flush_queue(timeout=30)
        s = c.stats()
        assert (s.delivered, s.pending, s.leased) == (10, 0, 0)
        assert sorted(sink.memories) == sorted(ids)


async def test_the_wal_stays_bounded_under_a_steady_stream_of_collects(journal_path: Path, store_path: Path) -> None:
    # Producer, claims, acks and lease reads all touch the WAL at once, so a passive
    # checkpoint alone never lets SQLite start the WAL over: it grew by ~4 KB per
    # collect. Checkpoints by growth that restart the WAL keep it to about
    # checkpoint_pages commits.
    config = cfg(journal={"checkpoint_pages": 200})
    wal = Path(f"{journal_path}-wal")
    async with AsyncMemoryCollector(journal_path, SQLiteSink(store_path), config=config) as c:
        for i in range(6000):
            await c.collect_async("qa", f"memory {i} " + "x" * 300)
            await anyio.lowlevel.checkpoint()
        await c.flush_queue(timeout=60)
        assert c.stats().delivered == 6000
        size = os.path.getsize(wal)  # noqa: ASYNC240  (a stat, not I/O worth a thread)
    assert size < 8 * 2**20, f"WAL grew to {size} bytes"


async def test_higher_priorities_are_delivered_first_fifo_within_one(journal_path: Path) -> None:
    j = Journal(journal_path)
    j.open()
    for content, prio in [("low", Priority.LOW), ("med", Priority.MEDIUM), ("crit", Priority.CRITICAL),
                          ("high", Priority.HIGH), ("crit2", Priority.CRITICAL), ("med2", Priority.MEDIUM)]:
        j.append("qa", content, {}, prio, (), None)
    j.close()
    sink = MemorySink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg(async_collection={"batch_size": 2})) as c:
        await c.flush_queue(timeout=10)
    delivered = [sink.memories[i].content for batch in sink.batches for i in batch]
    assert delivered == ["crit", "crit2", "high", "med", "med2", "low"]


async def test_helpers_fix_the_category(journal_path: Path) -> None:
    sink = MemorySink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        ids = {
            "bug": await c.collect_bug("b"), "error": await c.collect_error("e"),
            "feedback": await c.collect_feedback("f"), "performance": await c.collect_performance("p"),
            "architecture": await c.collect_architecture("a"), "operation": await c.collect_operation("o"),
        }
        await c.flush_queue(timeout=10)
    assert {cat: sink.memories[i].category for cat, i in ids.items()} == {cat: cat for cat in ids}


async def test_flush_timeout_raises_and_loses_nothing(journal_path: Path) -> None:
    async with AsyncMemoryCollector(journal_path, FlakySink(hang=True), config=cfg(journal={"shutdown_timeout": 0.1})) as c:
        ids = [c.collect("bug", f"x{i}") for i in range(5)]
        with pytest.raises(TimeoutError):
            await c.flush_queue(timeout=0.2)
    j = Journal(journal_path)
    j.open()
    assert all(j.find(i) is not None for i in ids)
    j.close()
    sink = MemorySink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        await c.flush_queue(timeout=10)
    assert set(sink.memories) == set(ids)


async def test_blocking_mode_returns_only_after_delivery(journal_path: Path) -> None:
    sink = MemorySink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg(async_collection={"enabled": False})) as c:
        op_id = await c.collect_async("bug", "old blocking behaviour")
        assert op_id in sink.memories


async def test_blocking_mode_raises_when_the_operation_is_dead_lettered(journal_path: Path) -> None:
    config = cfg(async_collection={"enabled": False})
    async with AsyncMemoryCollector(journal_path, FlakySink(fail_next=1, permanent=True), config=config) as c:
        with pytest.raises(SinkRejected, match="was dead-lettered: rejected: flaky sink rejects"):
            await c.collect_async("bug", "will be rejected")


async def test_close_twice_is_a_no_op_and_collect_after_close_fails(journal_path: Path) -> None:
    c = AsyncMemoryCollector(journal_path, MemorySink(), config=cfg())
    await c.start()
    await c.aclose()
    await c.aclose()
    with pytest.raises(JournalError, match="collector is closed"):
        c.collect("bug", "late")


async def test_shutdown_leaves_undelivered_operations_for_the_next_start(journal_path: Path) -> None:
    config = cfg(journal={"shutdown_timeout": 0.2})
    async with AsyncMemoryCollector(journal_path, FlakySink(hang=True), config=config) as c:
        ids = [c.collect("qa", str(i)) for i in range(20)]
    j = Journal(journal_path)
    j.open()
    counts = j.counts()
    j.close()
    assert (counts.pending, counts.leased) == (20, 0)  # leases released at shutdown
    sink = MemorySink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        await c.flush_queue(timeout=10)
    assert set(sink.memories) == set(ids)


async def test_a_damaged_row_is_dead_lettered_and_does_not_stop_delivery(journal_path: Path) -> None:
    sink = GateSink()
    # One batch in flight, so nothing is leased while the row is being damaged.
    async with AsyncMemoryCollector(journal_path, sink, config=cfg(performance={"max_inflight_batches": 1})) as c:
        first = c.collect("qa", "first")
        await sink.entered.wait()
        bad = c.collect("qa", "to be damaged")
        good = c.collect("qa", "fine")
        with sqlite3.connect(journal_path) as con:
            con.execute("UPDATE ops SET crc = crc + 1 WHERE id = ?", (bad,))
        sink.gate.set()
        await c.flush_queue(timeout=10)
        assert c.stats().dead == 1
    assert set(sink.memories) == {first, good}


def test_sync_facade_collects_from_many_threads(journal_path: Path, store_path: Path) -> None:
    ids: list[str] = []
    lock = threading.Lock()
    with MemoryCollector(journal_path, SQLiteSink(store_path), config=cfg()) as c:

        def work(n: int) -> None:
            mine = [c.collect("qa", f"t{n}-{i}", priority="low") for i in range(200)]
            with lock:
                ids.extend(mine)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert 0 <= c.flush(timeout=30) <= 1600
        assert c.stats().delivered == 1600
        assert c.flush(timeout=30) == 0
    assert len(set(ids)) == 1600

    async def count() -> int:
        async with SQLiteSink(store_path) as s:
            return await s.count()

    assert anyio.run(count) == 1600


class TestFailures:
    async def test_transient_failures_are_retried_then_delivered(self, journal_path: Path) -> None:
        sink = FlakySink(fail_next=3)
        async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
            ids = [c.collect("bug", str(i)) for i in range(10)]
            await c.flush_queue(timeout=10)
            assert c.stats().retried >= 3
        assert set(sink.memories) == set(ids)

    async def test_operations_are_dead_lettered_after_max_retries(self, journal_path: Path) -> None:
        config = cfg(async_collection={"max_retries": 2}, circuit_breaker={"failure_threshold": 100})
        async with AsyncMemoryCollector(journal_path, FlakySink(fail_next=10**6), config=config) as c:
            op_id = c.collect("bug", "doomed")
            await c.flush_queue(timeout=10)
            assert c.stats().dead == 1
        j = Journal(journal_path)
        j.open()
        assert j.dead_reason(op_id) == "gave up after 3 attempts: SinkUnavailable: flaky sink unavailable for this call"
        j.close()

    async def test_only_failed_ids_of_a_batch_are_retried(self, journal_path: Path) -> None:
        sink = FlakySink()
        async with AsyncMemoryCollector(journal_path, sink, config=cfg(async_collection={"max_retries": 1})) as c:
            ids = [c.collect("qa", str(i)) for i in range(4)]
            sink.fail_ids = {ids[1]}
            sink.permanent = True
            await c.flush_queue(timeout=10)
            assert c.stats().dead == 1
        assert set(sink.memories) == set(ids) - {ids[1]}
        assert all(sink.deliveries[i] == 1 for i in sink.memories)

    async def test_retry_after_is_stored_in_the_journal(self, journal_path: Path) -> None:
        sink = FlakySink(fail_next=1, retry_after=3600.0)
        async with AsyncMemoryCollector(journal_path, sink, config=cfg(journal={"shutdown_timeout": 0.1})) as c:
            c.collect("bug", "x")
            await wait_for(lambda: c.stats().retried == 1)
            (nb,) = c.journal._read("SELECT not_before FROM ops")[0]
            assert nb >= c.journal.clock() + 3590

    async def test_a_hanging_sink_times_out_as_a_transient_failure(self, journal_path: Path) -> None:
        sink = FlakySink(hang=True)
        config = cfg(performance={"operation_timeout": 0.05}, journal={"shutdown_timeout": 0.1})
        async with AsyncMemoryCollector(journal_path, sink, config=config) as c:
            c.collect("bug", "x")
            await wait_for(lambda: c.stats().retried >= 1)
            (err,) = c.journal._read("SELECT last_error FROM ops")[0]
            assert err == "SinkUnavailable: FlakySink timed out after 0.05s; outcome unknown"
            sink.hang = False
            await c.flush_queue(timeout=10)
        assert len(sink.memories) == 1

    async def test_unexpected_errors_are_logged_once_with_traceback_and_retried(
        self, journal_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        class Buggy(MemorySink):
            fails = 3

            async def deliver(self, ops):
                if self.fails:
                    self.fails -= 1
                    raise ZeroDivisionError("oops")
                return await super().deliver(ops)

        sink = Buggy()
        caplog.set_level(logging.ERROR, "memwal")
        async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
            c.collect("bug", "x")
            await c.flush_queue(timeout=10)
        records = [r for r in caplog.records if "unexpected error from Buggy" in r.getMessage()]
        assert len(records) == 3
        assert sum(r.exc_info is not None for r in records) == 1
        assert len(sink.memories) == 1

    async def test_open_breaker_stops_calls_without_using_attempts(self, journal_path: Path) -> None:
        sink = FlakySink(fail_next=10**6)
        config = cfg(circuit_breaker={"failure_threshold": 2, "recovery_timeout": 3600},
                     async_collection={"max_retries": 3}, journal={"shutdown_timeout": 0.1})
        async with AsyncMemoryCollector(journal_path, sink, config=config) as c:
            c.collect("bug", "x")
            await wait_for(lambda: sink.failures == 2)
            assert c._consumer is not None and c._consumer.breaker is not None
            await wait_for(lambda: c._consumer.breaker.state.value == "open")  # type: ignore[union-attr]
            await anyio.sleep(0.1)  # many poll intervals: no call while open
            assert sink.failures == 2
            (attempts,) = c.journal._read("SELECT attempts FROM ops")[0]
            assert attempts == 2
            assert c.stats().breaker_transitions == {"FlakySink:open": 1}
            sink.fail_next = 0
            c.reset_circuit_breaker()
            await c.flush_queue(timeout=10)
        assert len(sink.memories) == 1


class TestBackPressure:
    async def test_reject_raises_queue_full_and_counts_nothing_collected(self, journal_path: Path) -> None:
        from memwal import QueueFull

        config = cfg(async_collection={"max_queue_size": 3, "on_full": "reject"}, journal={"shutdown_timeout": 0.1})
        async with AsyncMemoryCollector(journal_path, FlakySink(hang=True), config=config) as c:
            for i in range(3):
                await c.collect_async("qa", str(i))
            with pytest.raises(QueueFull, match="limit is 3"):
                await c.collect_async("qa", "no room")
            assert c.stats().collected == 3 and c.stats().pending + c.stats().leased == 3

    async def test_block_waits_for_room_then_succeeds(self, journal_path: Path) -> None:
        sink = GateSink()
        config = cfg(async_collection={"max_queue_size": 2, "collect_timeout": 10})
        async with AsyncMemoryCollector(journal_path, sink, config=config) as c:
            await c.collect_async("qa", "a")
            await c.collect_async("qa", "b")
            got: list[str] = []

            async def blocked() -> None:
                got.append(await c.collect_async("qa", "c"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(blocked)
                await anyio.sleep(0.05)
                assert got == []  # still waiting for room
                sink.gate.set()
            await c.flush_queue(timeout=10)
        assert sorted(m.content for m in sink.memories.values()) == ["a", "b", "c"]

    async def test_block_gives_up_after_collect_timeout(self, journal_path: Path) -> None:
        from memwal import QueueFull

        config = cfg(async_collection={"max_queue_size": 1, "collect_timeout": 0.1}, journal={"shutdown_timeout": 0.1})
        async with AsyncMemoryCollector(journal_path, FlakySink(hang=True), config=config) as c:
            await c.collect_async("qa", "a")
            with pytest.raises(QueueFull, match=r"after waiting 0\.1s"):
                await c.collect_async("qa", "b")
            assert c.stats().drops_by_reason == {"queue_full_timeout": 1}

    async def test_drop_oldest_is_counted_and_logged_with_the_id(
        self, journal_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        config = cfg(async_collection={"max_queue_size": 2, "on_full": "drop_oldest"}, journal={"shutdown_timeout": 0.1})
        caplog.set_level(logging.WARNING, "memwal")
        sink = GateSink()
        async with AsyncMemoryCollector(journal_path, sink, config=config) as c:
            c.collect("qa", "busy")
            await sink.entered.wait()
            old = c.collect("qa", "old", priority="low")
            new = c.collect("qa", "new", priority="low")
            assert c.stats().drops_by_reason == {"queue_full_drop_oldest": 1}
            assert f"operation {old} dropped" in caplog.text
            assert c.journal.find(new) is not None and c.journal.find(old) is None
            sink.gate.set()
