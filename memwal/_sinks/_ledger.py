"""SendLedger: which operations a remote sink may already have sent, across processes and crashes.

mem0 has no idempotency key, so after an attempt whose outcome is unknown the sink
must ask mem0 whether the memory is there before sending it again; and it must not
ask for an operation that was never sent (a look-up costs the server as much as an
add). The ledger says which is which. Before a request leaves, its operation id is
written here (a write-ahead mark); once mem0 answered that it stored it, the mem0 id
is written beside it; an attempt that certainly did not reach mem0 removes the mark.
So an operation with a mark and no mem0 id may be in mem0 (a process killed
mid-request, a timeout, another process's lease that ran out), one with a mem0 id is
there, and one without a mark was never sent.

The file is SQLite in WAL mode, shared by every process that delivers from the same
journal (by default it sits beside the journal; see ``Mem0Sink.bind_journal``). It is
opened on first use (in the worker thread that first touches it, never on the event
loop). One delivery costs at most two commits (the marks before sending; the mem0 ids
and the unsent after), so well under one commit per memory at any batch size above 2. Writes do not wait for fsync (``synchronous=OFF``): a
process crash keeps them (the OS has them); an OS crash may lose the last ones, as it
may lose the journal's unsynced writes. Rows with a mem0 id are pruned after
``retention`` seconds; rows whose outcome is unknown stay until resolved.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence

__all__ = ["SendLedger"]

_SCHEMA = "CREATE TABLE IF NOT EXISTS sent (id TEXT PRIMARY KEY, mem0_id TEXT, at REAL NOT NULL) WITHOUT ROWID"
CHUNK = 500  # ids per statement (SQLite's variable limit is 32766; small statements keep locks short)


class SendLedger:
    """Write-ahead marks of sent operations in a SQLite file (``path``) or in memory (None).

    Example:
        >>> ledger = SendLedger("agent.journal.mem0-ledger")
        >>> ledger.mark(["0190..."])             # before sending
        >>> ledger.stored({"0190...": "5dc6..."})  # mem0 answered with its id
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, retention: float = 86400.0) -> None:
        self.path = None if path is None else os.fspath(path)
        self.retention = retention
        # In memory (one process) a stored mark is dropped at once: the sink's own map of
        # mem0 ids covers a redelivery there. In a file it is kept for other processes.
        self.keep_stored = self.path is not None
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._pruned = 0.0
        self.commits = 0  # write transactions committed (the cost measured per memory)

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection, opened on first use (callers hold ``_lock``)."""
        if self._conn is None:
            if self._closed:
                raise sqlite3.ProgrammingError(f"send ledger {self.path or ':memory:'} is closed")
            db = sqlite3.connect(self.path or ":memory:", isolation_level=None, check_same_thread=False,
                                 timeout=30.0)
            if self.path is not None:
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            db.execute(_SCHEMA)
            self._conn = db
        return self._conn

    @property
    def used(self) -> bool:
        """True once the ledger was opened (read or written)."""
        return self._conn is not None

    def state(self, ids: Sequence[str]) -> dict[str, tuple[str | None, float]]:
        """The marked ones among ``ids``: id -> (mem0 id or None if the outcome is unknown, time of the mark)."""
        out: dict[str, tuple[str | None, float]] = {}
        with self._lock:
            for i in range(0, len(ids), CHUNK):
                part = list(ids[i : i + CHUNK])
                marks = ",".join("?" * len(part))
                rows = self._db.execute(f"SELECT id, mem0_id, at FROM sent WHERE id IN ({marks})", part).fetchall()
                out.update((k, (m, at)) for k, m, at in rows)
        return out

    def mark(self, ids: Iterable[str]) -> None:
        """Before sending: these may reach mem0 from now on (a mark with a mem0 id is kept as it is)."""
        now = time.time()
        self._write("INSERT INTO sent (id, mem0_id, at) VALUES (?, NULL, ?)"
                    " ON CONFLICT (id) DO UPDATE SET at = excluded.at WHERE mem0_id IS NULL", [(i, now) for i in ids])

    def stored(self, mem0_ids: dict[str, str]) -> None:
        """mem0 answered that it stored these (memwal id -> mem0 id)."""
        self.settle(mem0_ids, ())

    def unsent(self, ids: Iterable[str]) -> None:
        """These certainly did not reach mem0 (and were not marked by an earlier attempt)."""
        self.settle({}, ids)

    def settle(self, mem0_ids: dict[str, str], unsent: Iterable[str]) -> None:
        """``stored(mem0_ids)`` and ``unsent(unsent)`` in one transaction (one commit per delivery)."""
        if self.keep_stored:
            now = time.time()
            stored: tuple[str, list[tuple[object, ...]]] = (
                "INSERT OR REPLACE INTO sent (id, mem0_id, at) VALUES (?, ?, ?)",
                [(k, v, now) for k, v in mem0_ids.items()])
        else:
            stored = ("DELETE FROM sent WHERE id = ?", [(k,) for k in mem0_ids])
        self._write_many([stored, ("DELETE FROM sent WHERE id = ? AND mem0_id IS NULL", [(i,) for i in unsent])])

    def prune(self, now: float | None = None) -> int:
        """Forget stored operations older than ``retention``; at most once a minute unless ``now`` is given."""
        t = time.time() if now is None else now
        if now is None and t - self._pruned < 60:
            return 0
        self._pruned = t
        with self._lock:
            cur = self._db.execute("DELETE FROM sent WHERE mem0_id IS NOT NULL AND at < ?", (t - self.retention,))
            self.commits += 1
        return cur.rowcount

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM sent").fetchone()[0])

    def _write(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        self._write_many([(sql, rows)])

    def _write_many(self, parts: list[tuple[str, list[tuple[object, ...]]]]) -> None:
        """Each (statement, rows) with rows, in one transaction; none at all writes nothing."""
        parts = [(sql, rows) for sql, rows in parts if rows]
        if not parts:
            return
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in parts:
                    db.executemany(sql, rows)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            self.commits += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
