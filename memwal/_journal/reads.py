"""Reading the journal: counts by state, what a flush waits for, read-your-writes look-ups of undelivered operations."""

from __future__ import annotations

import sqlite3
from typing import Any

from .._core.errors import JournalError
from .._core.records import (
    MemoryOperation,
    id_to_seq,
)
from .base import JournalBase
from .rows import (
    JournalCounts,
    RemovalWatch,
    check_row,
)
from .schema import (
    RANK_SHIFT,
    SEQ_MASK,
)


class Reads(JournalBase):
    """Reading the journal: counts by state, what a flush waits for, read-your-writes look-ups of undelivered operations."""

    def counts(self) -> JournalCounts:
        """Rows by state across every process using this journal."""
        ops = dict(self.read("SELECT state, count(*) FROM ops GROUP BY state"))
        (dead,), (done,), (held,) = (
            self.read(f"SELECT count(*) FROM {t}")[0] for t in ("dead", "done", "held")
        )
        return JournalCounts(
            pending=ops.get(0, 0), leased=ops.get(1, 0), dead=dead, delivered=done, held=held
        )

    def remaining_upto(self, seq: int, watch: RemovalWatch | None = None) -> int:
        """Undelivered rows whose sequence is at most ``seq`` (what a flush waits for),
        plus the rows ``watch`` saw this journal remove, both as of one snapshot.

        The snapshot is taken holding the writer lock, so each removal by this process
        is either committed before it (and in ``watch``) or after it (and counted).
        """
        sql = " + ".join(["(SELECT count(*) FROM ops WHERE k BETWEEN ? AND ?)"] * 4)
        params: list[int] = []
        for rank in range(4):
            params += [rank << RANK_SHIFT, (rank << RANK_SHIFT) | (seq & SEQ_MASK)]
        with self._flock:
            try:
                if self._fc is None and self.is_open:
                    self._fc = self._connect()
                c = self._conn(self._fc)
                if c.in_transaction:  # a COMMIT that failed last time
                    c.execute("ROLLBACK")
                c.execute("BEGIN")
                try:
                    with self._wlock:
                        c.execute("SELECT 1 FROM ops LIMIT 1").fetchall()  # WAL: the first read takes the snapshot
                        removed = 0 if watch is None else watch.removed
                    return int(c.execute(f"SELECT {sql}", params).fetchone()[0]) + removed
                finally:
                    c.execute("COMMIT")  # ends the read transaction
            except sqlite3.Error as exc:
                raise JournalError(f"cannot read: {exc}", path=str(self.path)) from exc

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
