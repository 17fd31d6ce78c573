"""A full disk (issue 16.5), on a real small tmpfs: collecting fails with JournalError
and every id returned survives; once space is freed, delivery resumes and empties the
journal with no operator action; opening a journal on a full disk says "disk is full"."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import fast_config, wait_for

from memwal import AsyncMemoryCollector, JournalError, Priority
from memwal._journal.journal import Journal
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
