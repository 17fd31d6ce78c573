"""The WAL journal (memwal/_journal.py): open errors, order, leases, settle, back-pressure."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memwal import InvalidOperation, JournalError, Priority, QueueFull
from memwal._core.records import decode_op
from memwal._journal import append as append_module
from memwal._journal import lease as lease_module
from memwal._journal.journal import Journal, Settlement, decode_rows, owner_is_gone
from memwal._journal.rows import EXACT_COUNT_TTL
from memwal._journal.schema import ACK_OPS, RELEASE_OPS, RETRY_OPS, SCHEMA_VERSION
from memwal.testing import ManualClock


def add(j: Journal, content: str, priority: Priority = Priority.MEDIUM, category: str = "bug", **kw):
    return j.append(category, content, {}, priority, (), None, **kw)[0]


@contextlib.contextmanager
def held_by_another_thread(lock: Any) -> Iterator[None]:
    """Run the body while another thread holds ``lock``."""
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            done.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert holding.wait(10)
        yield
    finally:
        done.set()
        t.join()


@pytest.fixture
def journal(journal_path: Path):
    j = Journal(journal_path, clock=ManualClock())
    j.open()
    yield j
    j.close()


@pytest.fixture
def two_consumers(journal_path: Path):
    """Two journals on one file, as two consumers see it, sharing a ManualClock."""
    clock = ManualClock()
    a, b = Journal(journal_path, clock=clock), Journal(journal_path, clock=clock)
    a.open()
    b.open()
    yield a, b, clock
    a.close()
    b.close()


class TestOpen:
    def test_a_new_file_becomes_a_wal_journal(self, journal_path: Path) -> None:
        j = Journal(journal_path)
        j.open()
        j.close()
        con = sqlite3.connect(journal_path)
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION

    def test_a_text_file_is_not_a_journal(self, journal_path: Path) -> None:
        journal_path.write_text("hello, I am notes\n" * 100)
        with pytest.raises(JournalError, match=rf"not a memwal journal .*\(journal {journal_path}\)"):
            Journal(journal_path).open()

    def test_another_apps_database_is_not_a_journal(self, journal_path: Path) -> None:
        con = sqlite3.connect(journal_path)
        con.execute("CREATE TABLE users (id INTEGER)")
        con.commit()
        con.close()
        with pytest.raises(JournalError, match=r"not a memwal journal \(no memwal application_id\)"):
            Journal(journal_path).open()

    def test_a_newer_schema_is_refused(self, journal_path: Path) -> None:
        Journal(journal_path).open()
        con = sqlite3.connect(journal_path)
        con.execute("PRAGMA user_version=99")
        con.commit()
        con.close()
        with pytest.raises(JournalError, match=rf"schema version 99 is newer than this memwal reads \({SCHEMA_VERSION}\)"):
            Journal(journal_path).open()

    def test_a_corrupt_file_is_refused(self, journal_path: Path) -> None:
        j = Journal(journal_path)
        j.open()
        for i in range(200):
            add(j, f"op {i}" * 50)
        j.close()
        data = bytearray(journal_path.read_bytes())
        data[100:4096] = os.urandom(4096 - 100)  # smash the header page's schema
        journal_path.write_bytes(bytes(data))
        with pytest.raises(JournalError, match=str(journal_path)):
            Journal(journal_path).open()

    def test_a_missing_directory_is_an_error(self, tmp_path: Path) -> None:
        with pytest.raises(JournalError, match="the directory does not exist"):
            Journal(tmp_path / "nope" / "j").open()

    def test_closing_twice_is_a_no_op_and_append_after_close_fails(self, journal: Journal) -> None:
        journal.close()
        journal.close()
        with pytest.raises(JournalError, match="journal is closed"):
            add(journal, "late")


def _open_in_child(path: str, n: int) -> None:
    j = Journal(path)
    j.open()
    for i in range(n):
        j.append("qa", f"{os.getpid()}-{i}", {}, Priority.LOW, (), None)
    j.close()


def test_many_processes_opening_one_new_journal_at_once_all_succeed(journal_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_open_in_child, args=(str(journal_path), 50)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 6
    j = Journal(journal_path)
    j.open()
    assert j.counts().pending == 300
    j.close()


def test_appends_of_different_sizes_store_each_payload_whole_as_a_checked_blob(journal: Journal) -> None:
    # append encodes into one reused buffer: a short row after a long one must not keep its tail.
    ops = [add(journal, text) for text in ("x" * 5000, "short", "y" * 300, "z")]
    conn = sqlite3.connect(journal.path)
    rows = conn.execute("SELECT id, typeof(payload), payload, crc FROM ops ORDER BY k").fetchall()
    conn.close()
    assert [r[0] for r in rows] == [op.id for op in ops]
    for (_, kind, payload, crc), op in zip(rows, ops, strict=True):
        assert kind == "blob" and zlib.crc32(payload) == crc
        assert decode_op(payload) == op


def test_ids_of_appends_from_many_threads_are_unique_and_increase(journal: Journal) -> None:
    # IdGenerator has no lock of its own: the journal draws ids under its writer lock.
    out: list[list[str]] = [[] for _ in range(4)]

    def work(i: int) -> None:
        out[i].extend(add(journal, f"t{i} {n}").id for n in range(500))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for part in out:
        assert part == sorted(part)
    all_ids = [i for part in out for i in part]
    assert len(set(all_ids)) == len(all_ids) == 2000


class TestOrderAndLeases:
    def test_lease_takes_higher_priorities_first_then_fifo(self, journal: Journal) -> None:
        ops = [
            add(journal, "m1", Priority.MEDIUM), add(journal, "l1", Priority.LOW),
            add(journal, "c1", Priority.CRITICAL), add(journal, "h1", Priority.HIGH),
            add(journal, "m2", Priority.MEDIUM), add(journal, "c2", Priority.CRITICAL),
        ]
        leased, bad = journal.lease(10)
        assert bad == []
        assert [g.op.content for g in leased] == ["c1", "c2", "h1", "m1", "m2", "l1"]
        assert {g.op.id for g in leased} == {o.id for o in ops}

    def test_a_leased_row_is_not_leased_again_until_the_lease_expires(self, two_consumers: Any) -> None:
        a, b, clock = two_consumers
        add(a, "x")
        assert len(a.lease(5)[0]) == 1
        assert b.lease(5)[0] == []
        clock.advance(a.config.lease_seconds + 1)
        assert [g.op.content for g in b.lease(5)[0]] == ["x"]

    def test_settle_acks_retries_dead_letters_and_releases(self, journal: Journal) -> None:
        for c in "abcd":
            add(journal, c)
        leased = {g.op.content: g for g in journal.lease(10)[0]}
        now = journal.clock()
        journal.settle(Settlement(
            acked=[leased["a"].key], retry=[(leased["b"].key, "boom", now + 5)],
            dead=[(leased["c"].key, "rejected: 422")], release=[leased["d"].key],
        ))
        counts = journal.counts()
        assert (counts.pending, counts.leased, counts.dead) == (2, 0, 1)
        assert journal.find(leased["a"].op.id) is None
        assert journal.dead_reason(leased["c"].op.id) == "rejected: 422"
        # b waits for its backoff; d is ready at once with no attempt used
        again = journal.lease(10)[0]
        assert [(g.op.content, g.attempts) for g in again] == [("d", 0)]
        journal.clock.advance(5)  # type: ignore[attr-defined]
        assert [(g.op.content, g.attempts) for g in journal.lease(10)[0]] == [("b", 1)]

    def test_a_claim_racing_another_consumer_takes_only_the_rows_still_free(self, two_consumers: Any) -> None:
        """The snapshot read may be stale: the claim re-checks each row under the write lock."""
        a, b, clock = two_consumers
        for c in "xyz":
            add(a, c)
        stale = sorted(a.lease(3)[0], key=lambda g: g.key)  # a holds all three...
        a.settle(Settlement(release=[g.key for g in stale]))  # ...then gives them back
        taken = b.lease(1)[0]  # b leases x meanwhile
        assert [g.op.content for g in taken] == ["x"]
        claimed = a._claim("ops", stale, clock())  # a claims from its stale snapshot
        assert claimed == {g.key for g in stale if g.op.content != "x"}

    def test_acks_retries_and_releases_settle_as_single_statements_on_own_leases(
        self, two_consumers: Any
    ) -> None:
        # The event loop runs these through write_now, so a retry settles like an ack:
        # no worker thread holds the writer lock while a collect waits for it.
        a, b, clock = two_consumers
        for c in "abcd":
            add(a, c)
        mine = {g.op.content: g for g in a.lease(3)[0]}
        theirs = b.lease(1)[0][0]  # "d", leased by the other consumer
        now = clock()
        statements = a.settle_statements(Settlement(
            acked=[mine["a"].key],
            retry=[(mine["b"].key, "SinkUnavailable: down \u2717", now + 5), (theirs.key, "not mine", now + 5)],
            release=[mine["c"].key, theirs.key],
        ))
        assert statements is not None
        assert [sql for sql, _, _ in statements] == [ACK_OPS, RETRY_OPS, RELEASE_OPS]
        assert [a.write_now(sql, params, removes=n) for sql, params, n in statements] == [1, 1, 1]
        state = "SELECT state, attempts, last_error, not_before, lease_owner FROM ops WHERE k = ?"
        assert a.read(state, (mine["a"].key,)) == []
        assert a.read(state, (mine["b"].key,)) == [(0, 1, "SinkUnavailable: down \u2717", now + 5, None)]
        assert a.read(state, (mine["c"].key,)) == [(0, 0, None, 0.0, None)]
        assert a.read(state, (theirs.key,)) == [(1, 0, None, 0.0, b.owner)]  # untouched
        assert a.counts().pending == 2
        # Moving rows between tables needs settle's one transaction.
        assert a.settle_statements(Settlement(dead=[(mine["b"].key, "rejected")])) is None
        assert a.settle_statements(Settlement(held=[(mine["b"].key, "fallback")])) is None

    def test_before_sqlite_3_33_a_retry_takes_the_transaction(
        self, journal: Journal, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(lease_module, "UPDATE_FROM", False)  # no UPDATE ... FROM there
        add(journal, "x")
        g = journal.lease(1)[0][0]
        s = Settlement(retry=[(g.key, "down", 0.0)])
        assert journal.settle_statements(s) is None
        journal.settle(s)
        assert [(h.op.content, h.attempts) for h in journal.lease(1)[0]] == [("x", 1)]

    def test_with_retention_an_ack_needs_the_transaction(self, journal_path: Path) -> None:
        from memwal import load_config

        j = Journal(journal_path, load_config({"journal": {"retention_seconds": 60}}, env={}).journal)
        j.open()
        add(j, "x")
        g = j.lease(1)[0][0]
        assert j.settle_statements(Settlement(acked=[g.key])) is None
        j.settle(Settlement(acked=[g.key]))
        assert j.read("SELECT count(*) FROM done", ())[0][0] == 1
        j.close()

    def test_retry_state_survives_reopening(self, journal_path: Path) -> None:
        j = Journal(journal_path)
        j.open()
        add(j, "x")
        g = j.lease(1)[0][0]
        j.settle(Settlement(retry=[(g.key, "SinkUnavailable: down", 0.0)]))
        j.close()
        j2 = Journal(journal_path)
        j2.open()
        again = j2.lease(1)[0][0]
        assert again.attempts == 1
        row = j2.read("SELECT last_error FROM ops WHERE k = ?", (again.key,))[0]
        assert row[0] == "SinkUnavailable: down"
        j2.close()

    def test_a_damaged_payload_is_dead_lettered_not_leased(self, journal: Journal) -> None:
        good = add(journal, "good")
        bad = add(journal, "bad")
        with sqlite3.connect(journal.path) as con:
            con.execute("UPDATE ops SET payload = CAST('{broken' AS BLOB) WHERE id = ?", (bad.id,))
        leased, dead = journal.lease(10)
        assert [g.op.id for g in leased] == [good.id]
        assert dead == [(bad.id, "checksum mismatch: the payload is damaged")]
        assert journal.dead_reason(bad.id) == "checksum mismatch: the payload is damaged"

    def test_leases_of_a_process_that_is_gone_are_recovered_at_once(self, journal: Journal) -> None:
        add(journal, "x")
        proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
        dead_owner = f"{os.uname().nodename}:{proc.stdout.strip()}:abcd"
        assert owner_is_gone(dead_owner)
        with sqlite3.connect(journal.path) as con:
            con.execute("UPDATE ops SET state = 1, lease_owner = ?, lease_until = 1e12", (dead_owner,))
        assert journal.lease(5)[0] == []
        assert journal.recover() == 1
        assert len(journal.lease(5)[0]) == 1

    def test_a_live_owner_is_not_considered_gone(self) -> None:
        assert not owner_is_gone(f"{os.uname().nodename}:{os.getpid()}:x")
        assert not owner_is_gone(f"other-host:{os.getpid() + 10**6}:x")


class TestSelectReadyNow:
    """select_ready_now: the event loop's read of ready rows, which must never wait or run long."""

    def test_it_reads_what_select_ready_reads(self, journal: Journal) -> None:
        for i in range(5):
            add(journal, f"op {i}", priority=Priority.LOW if i % 2 else Priority.HIGH)
        got = journal.select_ready_now(10)
        assert got is not None
        assert got[0] == journal.select_ready(10)[0] and len(got[0]) == 5

    def test_it_gives_up_past_its_budget_and_the_connection_stays_usable(self, journal: Journal) -> None:
        for i in range(300):
            add(journal, f"op {i}")
        assert journal.select_ready_now(300, budget=0) is None  # interrupted after 1,000 steps
        conn = journal._conn(journal._c)
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == int(journal.config.busy_timeout * 1000)
        got = journal.select_ready_now(300)
        assert got is not None and len(got[0]) == 300

    def test_it_gives_up_at_once_while_a_thread_of_this_process_reads(self, journal: Journal) -> None:
        add(journal, "a")
        with held_by_another_thread(journal._clock_c):
            assert journal.select_ready_now(10) is None

    def test_it_gives_up_at_once_while_another_connection_locks_the_journal(
        self, journal: Journal, journal_path: Path
    ) -> None:
        add(journal, "a")
        journal.close()  # so that the other connection can take the file exclusively
        other = sqlite3.connect(journal_path, isolation_level=None)
        other.execute("PRAGMA locking_mode=EXCLUSIVE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("SELECT count(*) FROM ops").fetchone()
        other.execute("COMMIT")  # exclusive mode keeps the lock after the transaction
        try:
            j = Journal(journal_path, config=journal.config)
            j._c = sqlite3.connect(journal_path, isolation_level=None, check_same_thread=False, timeout=30)
            result: list[Any] = []
            t = threading.Thread(target=lambda: result.append(j.select_ready_now(10)))
            t.start()
            t.join(10)  # busy at once, not after the connection's 30 s busy timeout
            assert result == [None]
            t.join()
        finally:
            other.close()


class TestWriteNow:
    """write_now: the event loop's way to claim and ack, which must never wait."""

    def _claim(self, j: Journal) -> tuple[str, tuple, list[int]]:
        rows, now = j.select_ready(10)
        good, _ = decode_rows(rows)
        return j.claim_statements("ops", good, now)[0]

    def test_it_writes_when_nothing_holds_the_lock(self, journal: Journal) -> None:
        add(journal, "a")
        sql, params, keys = self._claim(journal)
        assert journal.write_now(sql, params) == len(keys) == 1
        assert journal.counts().leased == 1

    def test_it_gives_up_at_once_while_a_thread_of_this_process_writes(self, journal: Journal) -> None:
        add(journal, "a")
        sql, params, _ = self._claim(journal)
        with held_by_another_thread(journal._wlock):
            assert journal.write_now(sql, params) is None
        assert journal.counts().leased == 0  # nothing was written

    def test_it_gives_up_at_once_while_another_connection_writes(self, journal: Journal, journal_path: Path) -> None:
        add(journal, "a")
        sql, params, _ = self._claim(journal)
        other = sqlite3.connect(journal_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            assert journal.write_now(sql, params) is None
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert journal.counts().leased == 0
        assert journal.write_now(sql, params) == 1


class TestFind:
    def test_find_returns_undelivered_ops_only(self, journal: Journal) -> None:
        op = add(journal, "x", Priority.LOW)
        assert journal.find(op.id) == op
        g = journal.lease(1)[0][0]
        assert journal.find(op.id) == op  # leased is still undelivered
        journal.settle(Settlement(acked=[g.key]))
        assert journal.find(op.id) is None
        assert journal.find("not-an-id") is None

    def test_any_upto_sees_every_priority(self, journal: Journal) -> None:
        low = add(journal, "old low", Priority.LOW)
        mark = journal.ids.last
        add(journal, "newer critical", Priority.CRITICAL)
        assert journal.any_upto(mark)
        g = next(g for g in journal.lease(10)[0] if g.op.id == low.id)
        journal.settle(Settlement(acked=[g.key]))
        assert not journal.any_upto(mark)
        assert journal.any_upto(journal.ids.last)  # the critical one is still there

    def test_an_id_already_present_cannot_be_appended_again(self, journal: Journal) -> None:
        op = add(journal, "x")
        for prio in Priority:
            with pytest.raises(InvalidOperation, match=rf"id: {op.id} is already in the journal \(ops\)"):
                journal.append("bug", "y", {}, prio, (), None, op_id=op.id)
        assert journal.counts().pending == 1

    def test_an_imported_id_keeps_its_id_and_order(self, journal: Journal) -> None:
        other = Journal(journal.path.with_name("other.journal"))
        other.open()
        op = add(other, "from elsewhere", Priority.LOW)
        other.close()
        got, _ = journal.append("bug", op.content, {}, Priority.LOW, (), None, op_id=op.id)
        assert got.id == op.id and journal.find(op.id) is not None


class TestBackPressure:
    def test_reject_raises_queue_full_and_writes_nothing(self, journal: Journal) -> None:
        for i in range(5):
            add(journal, str(i), limit=5)
        with pytest.raises(QueueFull, match="journal holds 5 undelivered operations, limit is 5"):
            add(journal, "one too many", limit=5)
        assert journal.counts().pending == 5

    def test_the_bound_counts_rows_of_other_processes_as_of_the_last_refresh(self, journal_path: Path) -> None:
        """Each process refreshes its count of the shared journal (the consumer does it every second)."""
        a, b = Journal(journal_path), Journal(journal_path)
        a.open()
        b.open()
        for i in range(5):
            add(b, str(i))
        a.refresh_depth()
        with pytest.raises(QueueFull):
            add(a, "x", limit=5)
        a.close()
        b.close()

    def test_near_the_bound_the_journal_is_counted_at_most_once_per_ttl(self, journal_path: Path) -> None:
        # A count scans the table; counting on every append near the bound made each
        # collect there cost milliseconds. Within a process the estimate stays exact.
        j = Journal(journal_path)
        j.open()
        counts: list[str] = []
        assert j._w is not None
        j._w.set_trace_callback(lambda sql: counts.append(sql) if "count(*)" in sql else None)
        started = time.monotonic()
        for i in range(95):  # the last 10% of the bound is where counting starts
            add(j, str(i), limit=100)
        with pytest.raises(QueueFull, match="journal holds 100 undelivered operations, limit is 100"):
            for i in range(10):
                add(j, f"more {i}", limit=100)
        elapsed = time.monotonic() - started
        assert j.counts().pending == 100
        assert len(counts) <= 1 + elapsed / EXACT_COUNT_TTL
        j.close()

    def test_another_processes_rows_count_once_the_last_count_is_stale(
        self, journal_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(append_module, "EXACT_COUNT_TTL", 3600.0)  # a's count at open stays trusted
        a, b = Journal(journal_path), Journal(journal_path)
        a.open()
        b.open()
        for i in range(95):
            add(a, str(i), limit=100)
        for i in range(5):
            add(b, f"b{i}")
        add(a, "within the trusted count", limit=100)  # a counted at open: b's rows unseen
        monkeypatch.setattr(append_module, "EXACT_COUNT_TTL", 0.0)  # as if the count aged
        with pytest.raises(QueueFull, match="journal holds 101 undelivered operations, limit is 100"):
            add(a, "one too many", limit=100)
        a.close()
        b.close()

    def test_drop_oldest_evicts_the_oldest_of_the_lowest_priority(self, journal: Journal) -> None:
        low1 = add(journal, "low1", Priority.LOW, limit=4)
        add(journal, "low2", Priority.LOW, limit=4)
        add(journal, "med", Priority.MEDIUM, limit=4)
        add(journal, "high", Priority.HIGH, limit=4)
        op, dropped = journal.append("bug", "new", {}, Priority.HIGH, (), None, limit=4, on_full="drop_oldest")
        assert dropped == low1.id
        assert journal.find(low1.id) is None and journal.find(op.id) == op
        assert journal.counts().pending == 4

    def test_drop_oldest_never_evicts_a_higher_priority(self, journal: Journal) -> None:
        add(journal, "c", Priority.CRITICAL, limit=2)
        add(journal, "h", Priority.HIGH, limit=2)
        with pytest.raises(QueueFull):
            journal.append("bug", "new", {}, Priority.LOW, (), None, limit=2, on_full="drop_oldest")
        assert journal.counts().pending == 2


class TestJournalErrors:
    def test_disk_full_raises_journal_error_and_nothing_is_collected(self, journal: Journal) -> None:
        assert journal._w is not None
        pages = journal._w.execute("PRAGMA page_count").fetchone()[0]
        journal._w.execute(f"PRAGMA max_page_count={pages}")
        with pytest.raises(JournalError, match=r"cannot append: database or disk is full"):
            for i in range(10_000):
                add(journal, f"{i}" * 500)
        n = journal.counts().pending
        journal._w.execute("PRAGMA max_page_count=1073741823")
        assert journal.counts().pending == n  # the failed append left nothing behind

    def test_a_read_only_journal_raises_journal_error(self, journal_path: Path) -> None:
        Journal(journal_path).open()
        j = Journal(journal_path)
        j.open()
        assert j._w is not None
        j._w.execute("PRAGMA query_only=1")  # the write connection refuses writes, as on a read-only file
        with pytest.raises(JournalError, match="cannot append: attempt to write a readonly database"):
            add(j, "x")
        j.close()
