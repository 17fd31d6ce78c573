"""Group commit for ``journal.durability: full`` (issue 16 item 2).

Concurrent collects share one fdatasync of the WAL; ``collect``/``collect_async``
return only once their row is committed and synced.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import memwal
from memwal._core.records import Priority
from memwal._journal.journal import Journal
from memwal.testing import MemorySink

pytestmark = pytest.mark.anyio
HERE = Path(__file__).parent


def full(**extra: Any) -> memwal.Config:
    return memwal.load_config({"journal": {"durability": "full", **extra}}, env={})


class SyncCounter:
    """Counts fdatasync calls on the journal's WAL fd (the real call still runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = os.fdatasync

        def counted(fd: int) -> None:
            self.calls += 1
            real(fd)

        monkeypatch.setattr("memwal._journal.base.os.fdatasync", counted)


def test_one_fsync_covers_every_commit_made_before_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs = SyncCounter(monkeypatch)
    j = Journal(tmp_path / "j.journal", full().journal)
    j.open()
    try:
        assert j._w is not None and j._w.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        tickets = []
        for i in range(3):
            j.append("bug", f"op {i}", {}, Priority.HIGH, (), None)
            tickets.append(j.commits)
        assert j.synced < tickets[0]  # committed, not yet synced
        j.sync_upto(tickets[-1])
        assert syncs.calls == 1 and j.synced >= tickets[-1]
        for t in tickets:
            j.sync_upto(t)  # covered: no fsync of their own
        assert syncs.calls == 1
    finally:
        j.close()


def test_normal_durability_never_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs = SyncCounter(monkeypatch)
    j = Journal(tmp_path / "j.journal")
    j.open()
    try:
        j.append("bug", "x", {}, Priority.HIGH, (), None)
        j.sync_upto(j.commits)
        assert syncs.calls == 0
    finally:
        j.close()


def test_threads_return_only_after_their_commit_is_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs = SyncCounter(monkeypatch)
    violations: list[str] = []
    c = memwal.MemoryCollector(tmp_path / "j.journal", MemorySink(), config=full())
    j = c._async.journal
    real_append = j.append

    def append(*a: Any, **k: Any) -> Any:
        out = real_append(*a, **k)
        local.ticket = j.commits  # at least this thread's commit
        return out

    local = threading.local()
    monkeypatch.setattr(j, "append", append)

    def produce(t: int) -> None:
        for i in range(40):
            c.collect("feedback", f"{t}/{i}")
            if j.synced < local.ticket:
                violations.append(f"{t}/{i}: returned at synced={j.synced} < commit {local.ticket}")

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert violations == []
        assert c.stats().collected == 320
        assert 1 <= syncs.calls  # at most one per collect; fewer whenever collects overlapped
        assert syncs.calls <= 320 + 64  # + the consumer's own writes (claims, acks)
    finally:
        c.close()


async def test_tasks_await_a_shared_group_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """100 tasks: every awaited id is synced when it returns; one fsync serves many."""
    syncs = SyncCounter(monkeypatch)
    config = memwal.load_config(
        {"journal": {"durability": "full"}, "performance": {"max_inflight_batches": 0}}, env={}
    )
    got: list[tuple[str, int, int]] = []
    async with memwal.AsyncMemoryCollector(tmp_path / "j.journal", MemorySink(), config=config) as c:
        j = c.journal

        async def produce(t: int) -> None:
            for i in range(5):
                pending = c.collect_async("feedback", f"{t}/{i}")
                ticket = j.commits
                op_id = await pending
                got.append((op_id, ticket, j.synced))

        async with anyio.create_task_group() as tg:
            for t in range(100):
                tg.start_soon(produce, t)
        assert len(got) == 500
        assert all(synced >= ticket for _, ticket, synced in got)
        # All 100 tasks append before the first fsync ends: groups, not one fsync each.
        assert syncs.calls < 100
        assert {m.id for m in j.undelivered(limit=1000)} == {g[0] for g in got}


def test_every_promised_id_survives_sigkill_of_a_threaded_child(tmp_path: Path) -> None:
    journal = tmp_path / "j.journal"
    child = subprocess.Popen(
        [sys.executable, str(HERE / "group_commit_child.py"), str(journal), "16"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )
    promised: list[str] = []
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 60
        while len(promised) < 400 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            promised.append(line.strip())
        os.kill(child.pid, signal.SIGKILL)
        rest = child.stdout.read()  # ids printed before the kill landed are promises too
        promised += [x for x in rest.split("\n") if len(x) == 36]
    finally:
        child.kill()
        child.wait(30)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert len(promised) >= 400
    with sqlite3.connect(journal) as conn:
        stored = {r[0] for r in conn.execute("SELECT id FROM ops")}
    missing = [p for p in promised if p not in stored]
    assert missing == [], f"{len(missing)} promised ids lost, e.g. {missing[:3]}"
    assert len(set(promised)) == len(promised)
