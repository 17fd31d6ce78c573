"""The durability chain: a journal row leaves only once its delivery is as durable as the journal.

With ``durability: full`` the consumer awaits ``sink.sync()`` before each ack (every
ack commit is durable at once); with ``normal`` before each checkpoint (the only
thing that makes acks durable), holding acks back meanwhile. A failed sync leaves the
rows in the journal. ``SQLiteSink`` follows the journal's durability unless told.
The power-cut campaigns in test_powerloss.py show the whole chain under real cuts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from helpers import fast_config, wait_for

from memwal import (
    AsyncMemoryCollector,
    FallbackSink,
    InvalidOperation,
    MemoryOperation,
    SinkUnavailable,
    SQLiteSink,
    load_config,
)
from memwal.testing import MemorySink

pytestmark = pytest.mark.anyio


class SyncingSink(MemorySink):
    """MemorySink that logs ``deliver`` and ``sync`` calls; sync can fail or block."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.fail_sync = False
        self.syncing = anyio.Event()  # set when a sync begins
        self.release: anyio.Event | None = None  # while set to an unset Event, sync waits for it

    async def deliver(self, ops: Sequence[MemoryOperation]) -> None:
        self.events.append("deliver")
        await super().deliver(ops)

    async def sync(self) -> None:
        self.events.append("sync")
        self.syncing.set()
        if self.release is not None:
            await self.release.wait()
        if self.fail_sync:
            raise SinkUnavailable("disk gone")


async def _pending(c: AsyncMemoryCollector) -> int:
    counts = await anyio.to_thread.run_sync(c.journal.counts)
    return counts.pending + counts.leased


async def test_full_acks_only_after_the_sink_synced(journal_path: Path) -> None:
    sink = SyncingSink()
    sink.fail_sync = True
    config = fast_config(journal={"durability": "full"})
    async with AsyncMemoryCollector(journal_path, sink, config=config) as c:
        ids = [c.collect("bug", f"m{i}") for i in range(5)]
        await wait_for(lambda: set(ids) <= set(sink.memories) and c.stats().retried >= 5)
        assert await _pending(c) == 5  # delivered, but the sync failed: still in the journal
        sink.fail_sync = False
        await c.flush_queue(timeout=10)
        assert await _pending(c) == 0
    # every delivery was followed by a sync before its rows were acknowledged
    assert sink.events[-1] == "sync" and "sync" in sink.events[sink.events.index("deliver"):]


async def test_normal_syncs_the_sink_before_each_checkpoint(journal_path: Path) -> None:
    sink = SyncingSink()
    config = fast_config(journal={"durability": "normal", "checkpoint_pages": 5})
    async with AsyncMemoryCollector(journal_path, sink, config=config) as c:
        original = c.journal.maybe_checkpoint

        def checkpoint(*, idle: bool) -> bool:
            sink.events.append("checkpoint")
            return original(idle=idle)

        c.journal.maybe_checkpoint = checkpoint  # type: ignore[method-assign]
        for i in range(40):
            c.collect("bug", f"m{i}")
            await anyio.lowlevel.checkpoint()
        await c.flush_queue(timeout=10)
        await wait_for(lambda: "checkpoint" in sink.events)
    # Each checkpoint follows a sync with no other checkpoint between (deliveries may
    # come between: their acks wait until the checkpoint is over).
    marks = [e for e in sink.events if e != "deliver"]
    for i, e in enumerate(marks):
        if e == "checkpoint":
            assert i > 0 and marks[i - 1] == "sync", sink.events


async def test_normal_holds_acks_while_the_sink_syncs_and_skips_the_checkpoint_if_it_fails(
    journal_path: Path,
) -> None:
    sink = SyncingSink()
    sink.release = anyio.Event()
    sink.fail_sync = True
    # One row per batch, many in flight: the late rows are delivered while the early
    # batches' acks wait at the gate.
    config = fast_config(
        journal={"durability": "normal", "checkpoint_pages": 3},
        async_collection={"batch_size": 1, "min_batch_size": 1, "adaptive_batching": False},
        performance={"max_inflight_batches": 64},
    )
    async with AsyncMemoryCollector(journal_path, sink, config=config) as c:
        calls: list[bool] = []
        original = c.journal.maybe_checkpoint

        def checkpoint(*, idle: bool) -> bool:
            calls.append(idle)
            return original(idle=idle)

        c.journal.maybe_checkpoint = checkpoint  # type: ignore[method-assign]
        for i in range(10):
            c.collect("bug", f"early {i}")
            await anyio.lowlevel.checkpoint()
        with anyio.fail_after(10):
            await sink.syncing.wait()  # a checkpoint began: its sink sync blocks
        late = [c.collect("bug", f"late {i}") for i in range(5)]
        await wait_for(lambda: set(late) <= set(sink.memories))
        for op_id in late:  # delivered, but the ack waits for the checkpoint
            assert await anyio.to_thread.run_sync(c.journal.find, op_id) is not None
        sink.release.set()  # the sync fails: no checkpoint, the acks go ahead
        await c.flush_queue(timeout=10)
        assert calls == []
        sink.fail_sync = False
        await wait_for(lambda: bool(calls))  # a later checkpoint, after a good sync


async def test_sqlite_sink_follows_the_journal_durability_unless_told(tmp_path: Path) -> None:
    op = MemoryOperation(id="0190", category="bug", content="x", created_at=1.0)
    cases = [(None, "full", 2), (None, "normal", 1), ("normal", "full", 1), ("full", "normal", 2), (None, None, 1)]
    for n, (explicit, journal, want) in enumerate(cases):
        sink = SQLiteSink(tmp_path / f"s{n}.db", durability=explicit)  # type: ignore[arg-type]
        if journal is not None:
            sink.bind(load_config({"journal": {"durability": journal}}), clock=None)
        async with sink:
            await sink.deliver([op])
            assert (await sink._query("PRAGMA synchronous"))[0][0] == want, (explicit, journal)


async def test_sqlite_sink_rejects_an_unknown_durability(tmp_path: Path) -> None:
    with pytest.raises(InvalidOperation, match="durability"):
        SQLiteSink(tmp_path / "s.db", durability="fsync")  # type: ignore[arg-type]
    assert not (tmp_path / "s.db").exists()


class DownSink(SyncingSink):
    async def deliver(self, ops: Sequence[MemoryOperation]) -> None:
        raise SinkUnavailable("primary down")


async def test_fallback_sink_syncs_only_the_sinks_that_stored_something() -> None:
    primary, fallback = DownSink(), SyncingSink()
    primary.fail_sync = True  # a down primary that took nothing must not block the acks
    sink = FallbackSink(primary, fallback)
    op = MemoryOperation(id="0190", category="bug", content="x", created_at=1.0)
    report = await sink.deliver([op])
    assert report.held == {"0190": "SyncingSink"}
    await sink.sync()
    assert primary.events == [] and fallback.events == ["deliver", "sync"]
    await sink.sync()  # nothing stored since: nobody is asked
    assert fallback.events == ["deliver", "sync"]


def test_replay_acks_only_after_the_sink_synced(journal_path: Path) -> None:
    from memwal._core.records import Priority
    from memwal._journal.journal import Journal
    from memwal._recovery import redrive

    j = Journal(journal_path)
    j.open()
    try:
        for i in range(3):
            j.append("bug", f"m{i}", {}, Priority.MEDIUM, (), None)
        sink = SyncingSink()
        sink.fail_sync = True
        first = anyio.run(lambda: redrive.replay(j, sink, batch_size=10))
        assert first.delivered == 0 and first.retried >= 3  # delivered, not synced: kept (retried again if slow)
        assert j.counts().pending == 3 and len(sink.memories) == 3
        sink.fail_sync = False
        second = anyio.run(lambda: redrive.replay(j, sink, batch_size=10))
        assert second.delivered == 3 and j.counts().pending == 0
        assert sink.events[-2:] == ["deliver", "sync"]
    finally:
        j.close()
