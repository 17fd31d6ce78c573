"""Crash tests: real child processes collect in a loop and are killed with SIGKILL.

Each child (tests/crash_child.py) prints an id only after ``collect_async`` returned
it. The parent kills children at random moments, restarts them on the same journal
and store, then flushes with a collector of its own and checks that every printed id
is stored exactly once and that nothing else slipped in: a stored id that was never
printed must be the one collect a kill interrupted between commit and print (at most
one per child run, the next index after its last printed one).

Seeds come from MEMWAL_CRASH_SEED or are random; a failure message names the seed.
MEMWAL_LONG=1 runs 200 kills per test instead of 20.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from crash_child import crash_config

import memwal
from memwal._journal.journal import Journal

CHILD = Path(__file__).with_name("crash_child.py")
LONG = os.environ.get("MEMWAL_LONG") == "1"
KILLS = 200 if LONG else 20
WAIT = 60.0  # guard against a hung child; never reached when things work
pytestmark = pytest.mark.timeout(1800 if LONG else 120)


def _seed() -> int:
    return int(os.environ.get("MEMWAL_CRASH_SEED") or random.randrange(1 << 32))


@dataclass
class Run:
    """One child process: its printed ids, killed by its reader thread at a chosen moment."""

    proc_no: int
    round_no: int
    kill_after: int | None  # SIGKILL once this many ids are printed; None: before "started"
    ids: list[str] = field(default_factory=list)
    started: bool = False
    lines: list[str] = field(default_factory=list)
    popen: subprocess.Popen[str] | None = None
    stderr: Path | None = None
    seen: threading.Condition = field(default_factory=threading.Condition)

    def start(self, args: list[str], tmp: Path, done: queue.Queue[Run], kill_delay: float = 0.0) -> None:
        self.stderr = tmp / f"child-{self.proc_no}-{self.round_no}.err"
        cmd = [sys.executable, str(CHILD), *args, "--proc", str(self.proc_no), "--round", str(self.round_no)]
        with self.stderr.open("wb") as err:
            self.popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        if self.kill_after is None:
            # A kill while the child imports, opens the journal or recovers leases.
            threading.Timer(kill_delay, self.kill).start()
        threading.Thread(target=self._read, args=(done,), daemon=True).start()

    def kill(self) -> None:
        assert self.popen is not None
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _read(self, done: queue.Queue[Run]) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        for line in self.popen.stdout:
            if not line.endswith("\n"):
                break  # cut by the kill mid-write: not a promise
            text = line.strip()
            with self.seen:
                self.lines.append(text)
                if text == "started":
                    self.started = True
                elif self.started and not text.startswith("delivering"):
                    self.ids.append(text)
                self.seen.notify_all()
            if self.started and self.kill_after is not None and len(self.ids) >= self.kill_after:
                self.kill()
        self.popen.stdout.close()
        self.popen.wait()  # reap it, so its pid no longer answers and its leases count as gone
        done.put(self)

    def wait_for(self, predicate: Callable[[Run], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` holds after a printed line, or ``timeout``."""
        with self.seen:
            return self.seen.wait_for(lambda: predicate(self), timeout)

    def check_killed(self, seed: int) -> None:
        assert self.popen is not None and self.stderr is not None
        rc = self.popen.returncode
        assert rc == -signal.SIGKILL, (
            f"seed {seed}: child {self.proc_no}/{self.round_no} exited with {rc}, not by SIGKILL;"
            f" stderr:\n{self.stderr.read_text()[-3000:]}"
        )


def _plan_kill(rng: random.Random) -> tuple[int | None, float]:
    """When to kill: mostly after a random number of printed ids, sometimes before start."""
    if rng.random() < 0.15:
        return None, rng.uniform(0.0, 0.4)
    return rng.choice((0, 1, rng.randrange(2, 20), rng.randrange(20, 150))), 0.0


def _campaign(tmp: Path, args: list[str], seed: int, *, procs: int, kills: int,
              before_round: Callable[[int], None] | None = None) -> list[Run]:
    """Run ``kills`` child runs spread over ``procs`` concurrent slots; return every run."""
    rng = random.Random(seed)
    done: queue.Queue[Run] = queue.Queue()
    runs: list[Run] = []

    def launch(proc_no: int, round_no: int) -> None:
        after, delay = _plan_kill(rng)
        run = Run(proc_no, round_no, after)
        runs.append(run)
        run.start([*args, "--seed", str(rng.randrange(1 << 30))], tmp, done, delay)

    for slot in range(procs):
        launch(slot, slot)
    live = procs
    started = procs
    while live:
        try:
            ended = done.get(timeout=WAIT)
        except queue.Empty:
            for r in runs:
                r.kill()
            pytest.fail(f"seed {seed}: a child printed nothing for {WAIT}s (hung?)")
        live -= 1
        ended.check_killed(seed)
        if started < kills:
            if before_round is not None:
                before_round(started)
            launch(ended.proc_no, started)
            started += 1
            live += 1
    return runs


def _stored(path: Path) -> list[tuple[str, dict[str, int]]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT id, metadata FROM memories").fetchall()
    return [(i, json.loads(m)) for i, m in rows]


def _check_exactly_once(runs: list[Run], stored: list[tuple[str, dict[str, int]]], seed: int) -> None:
    ids = Counter(i for i, _ in stored)
    dup = [i for i, n in ids.items() if n > 1]
    assert not dup, f"seed {seed}: ids stored more than once: {dup[:5]}"
    by_slot = Counter((m["proc"], m["round"], m["i"]) for _, m in stored)
    assert max(by_slot.values(), default=1) == 1, f"seed {seed}: one collect stored under two ids"
    meta = dict(stored)
    printed = 0
    for run in runs:
        for n, op_id in enumerate(run.ids):
            m = meta.get(op_id)
            assert m is not None, f"seed {seed}: printed id {op_id} (child {run.proc_no}/{run.round_no}) is lost"
            assert (m["proc"], m["round"], m["i"]) == (run.proc_no, run.round_no, n), f"seed {seed}: {op_id}"
        printed += len(run.ids)
    printed_ids = {i for r in runs for i in r.ids}
    unprinted = [(m["proc"], m["round"], m["i"]) for i, m in stored if i not in printed_ids]
    count = {(r.proc_no, r.round_no): len(r.ids) for r in runs}
    for proc, rnd, i in unprinted:
        # Committed, then killed before the print: only the very next collect of that run.
        assert count.get((proc, rnd)) == i, f"seed {seed}: stray stored op {(proc, rnd, i)}"
    assert len(stored) == printed + len(unprinted)


async def _flush_and_close(journal: Path, sink: memwal.Sink, config: memwal.Config, *,
                           wait_held: bool = False) -> memwal.JournalCounts:
    async with memwal.AsyncMemoryCollector(journal, sink, config=config) as c:
        await c.flush_queue(timeout=WAIT)
        # Reconciliation runs in the background: poll, with a deadline, until none is held.
        with anyio.fail_after(WAIT):
            while wait_held and c.journal.counts().held:
                await anyio.sleep(0.05)
        return c.journal.counts()


@pytest.mark.anyio
async def test_sigkilled_collector_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    seed = _seed()
    journal, store = tmp_path / "agent.journal", tmp_path / "memories.db"
    args = ["plain", str(journal), str(store)]
    runs = await anyio.to_thread.run_sync(lambda: _campaign(tmp_path, args, seed, procs=1, kills=KILLS))
    assert sum(len(r.ids) for r in runs) > 0, f"seed {seed}: no child printed an id"
    counts = await _flush_and_close(journal, memwal.SQLiteSink(store), crash_config("plain"))
    assert counts == memwal.JournalCounts(), f"seed {seed}: journal not drained: {counts}"
    _check_exactly_once(runs, _stored(store), seed)


@pytest.mark.anyio
async def test_two_processes_sigkilled_into_one_journal(tmp_path: Path) -> None:
    seed = _seed()
    journal, store = tmp_path / "agent.journal", tmp_path / "memories.db"
    args = ["plain", str(journal), str(store)]
    runs = await anyio.to_thread.run_sync(lambda: _campaign(tmp_path, args, seed, procs=2, kills=KILLS))
    assert {r.proc_no for r in runs if r.ids} == {0, 1}, f"seed {seed}: a process never collected"
    counts = await _flush_and_close(journal, memwal.SQLiteSink(store), crash_config("plain"))
    assert counts == memwal.JournalCounts(), f"seed {seed}: journal not drained: {counts}"
    _check_exactly_once(runs, _stored(store), seed)


@pytest.mark.anyio
async def test_primary_down_then_up_reconciles_everything_despite_kills(tmp_path: Path) -> None:
    seed = _seed()
    journal, local = tmp_path / "agent.journal", tmp_path / "local.db"
    primary = tmp_path / "mem0-down" / "primary.db"  # its directory does not exist yet
    args = ["fallback", str(journal), str(primary), "--local", str(local)]

    def bring_primary_up(round_no: int) -> None:
        if round_no == KILLS // 2:
            primary.parent.mkdir()

    runs = await anyio.to_thread.run_sync(
        lambda: _campaign(tmp_path, args, seed, procs=1, kills=KILLS, before_round=bring_primary_up)
    )
    assert primary.parent.is_dir()
    sink = memwal.FallbackSink(memwal.SQLiteSink(primary), memwal.SQLiteSink(local))
    counts = await _flush_and_close(journal, sink, crash_config("fallback"), wait_held=True)
    assert counts == memwal.JournalCounts(), f"seed {seed}: journal not drained: {counts}"
    in_local = {i for i, _ in _stored(local)}
    # The outage was real: operations went to the fallback while the primary was down.
    assert in_local, f"seed {seed}: nothing reached the fallback during the outage"
    _check_exactly_once(runs, _stored(primary), seed)
    assert in_local <= {i for i, _ in _stored(primary)}, f"seed {seed}: some ops only in the fallback"


@pytest.mark.anyio
async def test_leases_of_a_killed_child_are_recovered_at_restart(tmp_path: Path) -> None:
    journal, store = tmp_path / "agent.journal", tmp_path / "memories.db"
    done: queue.Queue[Run] = queue.Queue()
    run = Run(0, 0, kill_after=10**9)  # killed below, once its rows are leased
    run.start(["hang", str(journal), str(store), "--count", "30"], tmp_path, done)

    def leased_now() -> int:
        j = Journal(journal)
        j.open()
        try:
            return j.counts().leased
        finally:
            j.close()

    def leasing(r: Run) -> bool:
        return len(r.ids) == 30 and any(x.startswith("delivering") for x in r.lines)

    assert await anyio.to_thread.run_sync(run.wait_for, leasing, WAIT), run.lines[-5:]
    leased = await anyio.to_thread.run_sync(leased_now)
    assert leased > 0
    run.kill()
    ended = await anyio.to_thread.run_sync(lambda: done.get(timeout=WAIT))
    ended.check_killed(0)
    # lease_seconds is an hour: the flush only completes if start-up recovery frees the rows.
    config = crash_config("hang")
    assert config.journal.lease_seconds == 3600
    counts = await _flush_and_close(journal, memwal.SQLiteSink(store), config)
    assert counts == memwal.JournalCounts(), f"journal not drained after restart + flush: {counts}"
    assert {i for i, _ in _stored(store)} == set(run.ids)
