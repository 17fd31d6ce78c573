"""A full disk (issue 16.5), on a real small tmpfs: collecting fails with JournalError
and every id returned survives; once space is freed, delivery resumes and empties the
journal with no operator action; opening a journal on a full disk says "disk is full".
A consumer write that finds no room checkpoints and truncates the WAL and retries; a
settlement that still cannot commit waits in memory (its rows stay leased by us) and
commits once space returns; health says "disk full" meanwhile. Draining needs free space
about the size of the main file the rows make (0.11 of a WAL of appends: the table in
benchmarks/README.md, bench_disk_full.py)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from helpers import fast_config, wait_for

from memwal import (
    AsyncMemoryCollector,
    DeliveryReport,
    JournalError,
    MemoryOperation,
    Priority,
    SinkUnavailable,
)
from memwal._journal.journal import Journal
from memwal._journal.rows import Settlement
from memwal.testing import MemorySink


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs, unmounted afterwards; skipped where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=False,
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def fill_disk(where: Path, name: str = "ballast") -> Path:
    """Write a file until the disk refuses another byte."""
    path = where / name
    with open(path, "ab", buffering=0) as f:
        for size in (64 << 10, 4 << 10, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return path


def test_opening_a_journal_on_a_full_disk_says_disk_is_full(small_disk: Path) -> None:
    fill_disk(small_disk)
    j = Journal(small_disk / "new.journal")
    with pytest.raises(JournalError, match="disk is full"):
        j.open()


@pytest.mark.anyio
async def test_collect_fails_clearly_and_delivery_drains_once_space_is_freed(small_disk: Path) -> None:
    path = small_disk / "agent.journal"
    ballast = small_disk / "ballast-freeable"
    ballast.write_bytes(b"\0" * (1 << 20))  # what the operator deletes later
    sink = MemorySink()
    cfg = fast_config(performance={"max_inflight_batches": 0})  # nothing delivers while the disk fills
    ids: list[str] = []
    errors = 0
    async with AsyncMemoryCollector(path, sink, config=cfg) as c:
        for i in range(200_000):
            try:
                ids.append(c.collect("bug", f"memory {i} " + uuid.uuid4().hex * 8))
            except JournalError as exc:
                assert "full" in str(exc), exc
                errors += 1
                if errors > 20:
                    break
        assert errors > 20 and len(ids) > 100
        fill_disk(small_disk, "rest")  # not even a page left
    # Space comes back; a collector (a restart, as after the outage) drains on its own.
    ballast.unlink()
    async with AsyncMemoryCollector(path, sink, config=fast_config()) as c:
        await wait_for(lambda: set(ids) <= set(sink.memories), timeout=60)
        await wait_for(lambda: c.journal.counts().pending + c.journal.counts().leased == 0, timeout=30)
    assert set(ids) <= set(sink.memories)


def test_reopening_a_journal_on_a_full_disk_says_disk_is_full(small_disk: Path) -> None:
    path = small_disk / "agent.journal"
    j = Journal(path)
    j.open()
    for i in range(50):
        j.append("bug", f"memory {i}", {}, Priority.MEDIUM, (), None)
    j.close()
    fill_disk(small_disk)
    again = Journal(path)
    try:
        with pytest.raises(JournalError, match="disk is full"):
            again.open()
            again.append("bug", "one more", {}, Priority.MEDIUM, (), None)
    finally:
        again.close()


@pytest.mark.anyio
async def test_a_running_collector_drains_once_space_is_freed(small_disk: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    path = small_disk / "agent.journal"
    ballast = small_disk / "ballast-freeable"
    ballast.write_bytes(b"\0" * (1 << 20))
    sink = MemorySink()
    ids: list[str] = []
    cfg = fast_config(performance={"max_inflight_batches": 0})
    async with AsyncMemoryCollector(path, sink, config=cfg) as c:
        ids += [c.collect("bug", f"memory {i} " + uuid.uuid4().hex * 8) for i in range(300)]
        fill_disk(small_disk, "rest")
        errors = 0
        for i in range(2000):
            try:
                ids.append(c.collect("bug", f"late {i} " + uuid.uuid4().hex * 8))
            except JournalError as exc:
                assert "full" in str(exc), exc
                errors += 1
        assert errors > 0
        # The consumer starts while the disk is still full: its leases fail, in a loop.
        c.configure(max_inflight_batches=4)
        await wait_for(lambda: "cannot lease" in caplog.text or len(sink.memories) > 0, timeout=30)
        ballast.unlink()  # the operator frees space; nothing else is done
        await wait_for(lambda: set(ids) <= set(sink.memories), timeout=60)
        await wait_for(lambda: c.journal.counts().pending + c.journal.counts().leased == 0, timeout=30)


def lease_and_release(j: Journal) -> None:
    leased, _ = j.lease(100_000)
    j.settle(Settlement(release=[g.key for g in leased]))


def rewrite_pages(j: Journal, rounds: int = 2) -> None:
    """Grow the WAL with rewrites of pages the main file already has: a checkpoint of
    such a WAL needs no new space in the main file. (A first lease splits pages, the
    lease owner making rows longer: that round is checkpointed before the rewrites.)"""
    lease_and_release(j)
    assert j.checkpoint("TRUNCATE")[0] == 0
    for _ in range(rounds):
        lease_and_release(j)
    assert Path(f"{j.path}-wal").stat().st_size > 0


@pytest.mark.anyio
async def test_consumer_writes_on_a_full_disk_checkpoint_to_make_room_and_drain(
        small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The disk stays full to the end: each claim or ack that finds no room checkpoints
    and truncates the WAL, writes into the space that frees, and the journal empties."""
    path = small_disk / "agent.journal"
    sink = MemorySink()
    async with AsyncMemoryCollector(path, sink, config=fast_config(performance={"max_inflight_batches": 0})) as c:
        ids = [c.collect("bug", f"memory {i} " + uuid.uuid4().hex * 8) for i in range(400)]
        rewrite_pages(c.journal)
        fill_disk(small_disk, "rest")  # never freed
        with pytest.raises(JournalError, match="full"):
            c.collect("bug", "no room")
        c.configure(max_inflight_batches=4)
        await wait_for(lambda: set(ids) <= set(sink.memories), timeout=60)
        await wait_for(lambda: c.journal.counts().pending + c.journal.counts().leased == 0, timeout=30)
    assert "checkpointed and truncated the WAL to make room" in caplog.text
    assert max(sink.deliveries.values()) == 1  # every ack committed: nothing delivered twice


class FillsTheDisk(MemorySink):
    """Delivers (or fails, ``fail``) its first batch after filling the disk: the
    settlement that follows finds no room, and no checkpoint can make any (the WAL
    holds appended rows, which the main file would need new space for)."""

    def __init__(self, where: Path, *, fail: bool) -> None:
        super().__init__()
        self.where, self.fail, self.filled = where, fail, False

    async def deliver(self, ops: Sequence[MemoryOperation]) -> DeliveryReport | None:
        if not self.filled:
            self.filled = True
            fill_disk(self.where, "rest")
            if self.fail:
                self.calls += 1
                raise SinkUnavailable("down while the disk fills")
        return await super().deliver(ops)


@pytest.mark.anyio
@pytest.mark.parametrize("fail", [False, True], ids=["ack", "retry"])
async def test_a_settlement_that_finds_no_room_waits_in_memory_and_commits_once_space_returns(
        small_disk: Path, caplog: pytest.LogCaptureFixture, fail: bool) -> None:
    """ack: delivered rows whose DELETE cannot commit stay leased by this process (not
    lost, not released to be delivered again) and are acknowledged once space is freed;
    retry: the retry bookkeeping (attempts, last_error) waits likewise and is applied.
    Meanwhile health says "disk full"; delivery resumes with no operator action."""
    path = small_disk / "agent.journal"
    ballast = small_disk / "ballast-freeable"
    ballast.write_bytes(b"\0" * (1 << 20))
    sink = FillsTheDisk(small_disk, fail=fail)
    cfg = fast_config(performance={"max_inflight_batches": 0}, journal={"lease_seconds": 300})
    async with AsyncMemoryCollector(path, sink, config=cfg) as c:
        ids = [c.collect("bug", f"memory {i} " + uuid.uuid4().hex * 8) for i in range(50)]
        c.configure(max_inflight_batches=1)
        await wait_for(lambda: "settling again before the next lease" in caplog.text, timeout=30)
        counts = c.journal.counts()
        assert counts.leased > 0 and counts.pending + counts.leased == len(ids)  # none lost, held by us
        health = c.health()
        assert health.status == "failing" and any(r.startswith("disk full") for r in health.reasons), health.reasons
        assert c.stats().retried == 0
        ballast.unlink()  # the operator frees space; nothing else is done
        await wait_for(lambda: "whose settlement had failed" in caplog.text, timeout=30)
        # The retries are counted when their bookkeeping commits, not before.
        assert (c.stats().retried > 0) == fail
        await wait_for(lambda: set(ids) <= set(sink.memories), timeout=60)
        await wait_for(lambda: c.journal.counts().pending + c.journal.counts().leased == 0, timeout=30)
        assert not c.health().disk_full
    if not fail:
        assert max(sink.deliveries.values()) == 1  # the acks waited in memory, no redelivery


def test_a_journal_drains_with_free_space_a_fifth_of_its_wal(small_disk: Path) -> None:
    """Draining needs room for the checkpoint (about the main file the rows make, 0.11
    of a WAL of appends; see benchmarks/README.md, bench_disk_full.py): once a write
    found the disk full, the consumer's next write checkpoints before taking the space
    freed. Writing first needed a third of the WAL free, which a fifth is short of."""
    j = Journal(small_disk / "agent.journal")
    j.open()
    try:
        for i in range(300):
            j.append("bug", f"memory {i} " + uuid.uuid4().hex * 8, {}, Priority.MEDIUM, (), None)
        wal = Path(f"{j.path}-wal").stat().st_size
        ballast = fill_disk(small_disk)
        with pytest.raises(JournalError, match="full"):
            j.append("bug", "no room", {}, Priority.MEDIUM, (), None)
        assert j.disk_full
        os.truncate(ballast, ballast.stat().st_size - wal // 5)
        for _ in range(300 // 64 + 1):
            leased, _ = j.lease(64)
            j.settle(Settlement(acked=[g.key for g in leased]))
        assert j.counts().pending + j.counts().leased == 0
        assert not j.disk_full
    finally:
        j.close()
