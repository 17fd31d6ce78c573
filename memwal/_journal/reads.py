"""Reading the journal: counts by state, what a flush waits for, read-your-writes look-ups of undelivered operations."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from .._core.errors import JournalError
from .._core.records import (
    MemoryOperation,
    id_to_seq,
)
from .base import JournalBase, inherited
from .rows import (
    JournalCounts,
    check_row,
)
from .schema import (
    RANK_SHIFT,
    SEQ_MASK,
)


class Reads(JournalBase):
    """Reading the journal: counts by state, what a flush waits for, read-your-writes look-ups of undelivered operations."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Idle connections for own_snapshot (list.pop/append: no lock needed)
        self._snapshot_pool: list[sqlite3.Connection] = []

    def pool_snapshot_conn(self, c: sqlite3.Connection) -> None:
        """Keep an idle snapshot connection for the next ``own_snapshot`` (closed if the journal is)."""
        if self._closed:
            c.close()
        else:
            self._snapshot_pool.append(c)

    def forget_after_fork(self) -> None:
        """As JournalBase's; the parent's idle snapshot connections are dropped unused too."""
        super().forget_after_fork()
        pool, self._snapshot_pool = self._snapshot_pool, []
        if pool:
            inherited.append(tuple(pool))  # never closed nor collected here (see base.inherited)

    def _close_conns(self) -> None:
        super()._close_conns()
        pool, self._snapshot_pool = self._snapshot_pool, []
        for c in pool:
            c.close()

    def counts(self) -> JournalCounts:
        """Rows by state across every process using this journal."""
        ops = dict(self.read("SELECT state, count(*) FROM ops GROUP BY state"))
        (dead,), (done,), (held,) = (
            self.read(f"SELECT count(*) FROM {t}")[0] for t in ("dead", "done", "held")
        )
        return JournalCounts(
            pending=ops.get(0, 0), leased=ops.get(1, 0), dead=dead, delivered=done, held=held
        )

    def own_snapshot(self) -> OwnSnapshot:
        """Take a read snapshot of the journal now, for ``OwnSnapshot.count``.

        Cheap enough for an event loop (no scan): a pooled connection begins a read
        transaction holding the writer lock, so no append of this journal is half
        done in it. Opens a connection only when the pool is empty (the first time).
        """
        pool = self._snapshot_pool
        try:
            c = pool.pop() if pool else self._connect()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read: {exc}", path=str(self.path)) from exc
        try:
            if c.in_transaction:  # a COMMIT that failed last time
                c.execute("ROLLBACK")
            c.execute("BEGIN")
            with self._wlock:
                if self._closed:
                    raise JournalError("journal is closed", path=str(self.path))
                c.execute("SELECT 1 FROM ops LIMIT 1").fetchall()  # WAL: the first read takes the snapshot
                mark = max(self.ids.last, (time.time_ns() // 1000) << 8 | 0xFF)
        except BaseException as exc:
            c.close()
            if isinstance(exc, sqlite3.Error):
                raise JournalError(f"cannot read: {exc}", path=str(self.path)) from exc
            raise
        return OwnSnapshot(self, c, mark)

    def any_upto(self, seq: int) -> bool:
        """Is any undelivered row's sequence at most ``seq``? One index seek per priority."""
        sql = " UNION ALL ".join(["SELECT 1 FROM (SELECT 1 FROM ops WHERE k BETWEEN ? AND ? LIMIT 1)"] * 4)
        params: list[int] = []
        for rank in range(4):
            params += [rank << RANK_SHIFT, (rank << RANK_SHIFT) | (seq & SEQ_MASK)]
        return bool(self.read(sql, params))

    def oldest_pending(self) -> float | None:
        """``created_at`` of the oldest undelivered operation, or None."""
        row = self.read("SELECT min(created_at) FROM ops")[0]
        return None if row[0] is None else float(row[0])

    def find(self, op_id: str) -> MemoryOperation | None:
        """The undelivered operation with this id, or None (read-your-writes)."""
        try:
            seq = id_to_seq(op_id)
        except ValueError:
            return None
        keys = [(r << RANK_SHIFT) | seq for r in range(4)]
        rows = self.read("SELECT crc, payload FROM ops WHERE k IN (?, ?, ?, ?)", keys)
        for crc, payload in rows:
            op, _ = check_row(payload, crc)
            if op is not None and op.id == op_id:
                return op
        return None

    def dead_reason(self, op_id: str) -> str | None:
        """Why the operation with this id was dead-lettered, or None if it was not."""
        rows = self.read("SELECT reason FROM dead WHERE id = ?", (op_id,))
        return str(rows[0][0]) if rows else None

    def undelivered(self, *, category: str | None = None, limit: int = 1000) -> list[MemoryOperation]:
        """Undelivered operations, newest first (merged into reads).

        Each priority's rows are read backwards along the primary key (time order
        within a priority) and the four runs merged, so no read sorts the journal.
        """
        cat = "AND category = ?" if category else ""
        sql = f"SELECT created_at, crc, payload FROM ops WHERE k >= ? AND k < ? {cat} ORDER BY k DESC LIMIT ?"
        rows: list[Any] = []
        for rank in range(4):
            params = [rank << RANK_SHIFT, (rank + 1) << RANK_SHIFT, *([category] if category else []), limit]
            rows += self.read(sql, params)
        rows.sort(key=lambda r: r[0], reverse=True)
        rows = [(c, p) for _, c, p in rows[:limit]]
        return [op for op in (check_row(p, c)[0] for c, p in rows) if op is not None]


class OwnSnapshot:
    """A read snapshot of the journal taken by ``Journal.own_snapshot``.

    ``mark``: every operation committed before the snapshot (by any process) has a
    sequence at most ``mark`` (ids are time-ordered). ``count()`` (a scan: call it off
    the event loop) says how many operations this journal object appended are
    undelivered in the snapshot, pending or leased by any process; own rows are told
    by the random suffix every id of this journal's generator ends with. Then the
    snapshot ends and its connection goes back to the pool.
    """

    __slots__ = ("_conn", "_journal", "mark")

    def __init__(self, journal: Reads, conn: sqlite3.Connection, mark: int) -> None:
        self._journal = journal
        self._conn: sqlite3.Connection | None = conn
        self.mark = mark

    def count(self) -> int:
        """Own undelivered operations in the snapshot (once; then ``close``)."""
        c = self._conn
        if c is None:
            raise RuntimeError("snapshot already used")
        try:
            sql = "SELECT count(*) FROM ops WHERE substr(id, 22) = ?"
            return int(c.execute(sql, (self._journal.ids.suffix,)).fetchone()[0])
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read: {exc}", path=str(self._journal.path)) from exc
        finally:
            self.close()

    def close(self) -> None:
        """End the snapshot; the connection returns to the journal's pool."""
        c, self._conn = self._conn, None
        if c is None:
            return
        try:
            c.execute("COMMIT")
        except sqlite3.Error:
            c.close()
            return
        self._journal.pool_snapshot_conn(c)
