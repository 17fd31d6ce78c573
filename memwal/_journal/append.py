"""The producer's side of the journal: append on the caller's thread, and the depth estimate behind back-pressure (``on_full``)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from .._core.errors import InvalidOperation, JournalError, QueueFull
from .._core.records import (
    MemoryOperation,
    Priority,
    id_to_seq,
)
from .base import JournalBase
from .rows import (
    EXACT_COUNT_TTL,
    LARGE_ROW,
    RANK_KEY,
    crc32,
    encode_into,
)
from .schema import (
    INSERT_OP,
    RANK_SHIFT,
)


class Appender(JournalBase):
    """The producer's side of the journal: append on the caller's thread, and the depth estimate behind back-pressure (``on_full``)."""

    def open(self) -> None:
        """Open the journal (see JournalBase.open) and count it for back-pressure."""
        self._payload = bytearray(1024)  # reused by append under _wlock
        super().open()
        try:
            self.refresh_depth()
        except JournalError:
            self._close_conns()
            raise


    def append(
        self,
        category: str,
        content: str,
        metadata: dict[str, Any],
        priority: Priority,
        tags: tuple[str, ...],
        project: str | None,
        limit: int = 1 << 62,
        on_full: str = "reject",
        *,
        op_id: str | None = None,
    ) -> tuple[MemoryOperation, str | None]:
        """Insert one validated operation in its own committed transaction.

        Returns the operation and the id of an operation evicted by ``drop_oldest``.
        Raises QueueFull when the journal holds ``limit`` undelivered rows (nothing is
        written) and JournalError when the write fails.
        """
        rank_key = RANK_KEY[priority]
        next_id = self.ids.next
        soft_limit = limit - (limit // 10 or 1)  # below it, the estimate decides alone
        collisions = 0
        while True:
            try:
                # The id is drawn under the writer lock, which orders ids and commits
                # alike (IdGenerator has no lock of its own).
                with self._wlock:
                    cur = self._wc
                    if cur is None or self._closed:
                        raise JournalError("journal is closed", path=str(self.path))
                    new_id, seq = next_id() if op_id is None else (op_id, id_to_seq(op_id))
                    created_at = (seq >> 8) / 1e6
                    op = MemoryOperation(
                        id=new_id, category=category, content=content, metadata=metadata,
                        priority=priority, tags=tags, project=project, created_at=created_at,
                    )
                    payload = self._payload
                    encode_into(op, payload)
                    if len(payload) > LARGE_ROW:
                        self.large_appended = True
                    row = (rank_key | seq, new_id, category, created_at, crc32(payload), payload)
                    if op_id is not None:
                        self._append_known_id(cur.connection, row, seq)
                        return op, None
                    depth = self._depth_base + self._depth_delta
                    if depth < soft_limit or (depth < limit and self._count_is_fresh()):
                        cur.execute(INSERT_OP, row)
                        self._depth_delta += 1
                        self.commits += 1
                        return op, None
                    return op, self._append_exact(cur.connection, row, priority, limit, on_full)
            except sqlite3.IntegrityError:
                collisions += 1  # another process took the same key in the same microsecond
                if collisions == 8:
                    raise JournalError("cannot append: key collisions persisted", path=str(self.path)) from None
            except sqlite3.Error as exc:
                self.note_failure(exc)  # a full disk: health says so until a write commits
                raise JournalError(f"cannot append: {exc}", path=str(self.path)) from exc

    def _append_exact(
        self, w: sqlite3.Connection, row: tuple[Any, ...], priority: Priority, limit: int, on_full: str
    ) -> str | None:
        # Near the limit: count the journal (other processes' rows too), unless a count
        # younger than EXACT_COUNT_TTL already says it is full. A count scans the whole
        # table (~6 ms at 90,000 rows), so counting on every append there would make
        # each collect that slow just when the consumer needs the time most.
        fresh = self._count_is_fresh()
        if fresh and on_full != "drop_oldest":
            raise QueueFull(self._depth_base + self._depth_delta, limit)
        w.execute("BEGIN IMMEDIATE")
        try:
            depth = self._depth_base + self._depth_delta if fresh else w.execute("SELECT count(*) FROM ops").fetchone()[0]
            full = depth >= limit
            evicted = self._evict(w, priority) if full and on_full == "drop_oldest" else None
            dropped = None if evicted is None else evicted[1]
            if full and dropped is None:
                w.execute("ROLLBACK")
            else:
                w.execute(INSERT_OP, row)
                w.execute("COMMIT")
                self.commits += 1
        except BaseException:
            w.execute("ROLLBACK")
            raise
        if not fresh:
            self._set_depth(depth)
        if full and dropped is None:
            raise QueueFull(depth, limit)
        if dropped is None:
            self._depth_delta += 1
        return dropped

    def _count_is_fresh(self) -> bool:
        return time.monotonic() - self._counted_at < EXACT_COUNT_TTL

    def _set_depth(self, n: int) -> None:
        """Record an exact count (the caller holds _wlock or owns the journal alone)."""
        self._depth_base, self._depth_delta, self._counted_at = n, 0, time.monotonic()

    def _append_known_id(self, w: sqlite3.Connection, row: tuple[Any, ...], seq: int) -> None:
        # Imports keep their ids: refuse one present in any table under any priority.
        keys = [(r << RANK_SHIFT) | seq for r in range(4)]
        w.execute("BEGIN IMMEDIATE")
        try:
            for table in ("ops", "dead", "done", "held"):
                if w.execute(f"SELECT 1 FROM {table} WHERE k IN (?, ?, ?, ?)", keys).fetchone():
                    raise InvalidOperation("id", f"{row[1]} is already in the journal ({table})")
            w.execute(INSERT_OP, row)
            w.execute("COMMIT")
        except BaseException:
            w.execute("ROLLBACK")
            raise
        self.commits += 1
        self._depth_delta += 1

    @staticmethod
    def _evict(w: sqlite3.Connection, priority: Priority) -> tuple[int, str] | None:
        # The oldest pending row of the lowest priority, never above the new one's.
        for rank in range(3, priority.rank - 1, -1):
            row = w.execute(
                "SELECT k, id FROM ops WHERE k >= ? AND k < ? AND state = 0 ORDER BY k LIMIT 1",
                (rank << RANK_SHIFT, (rank + 1) << RANK_SHIFT),
            ).fetchone()
            if row is not None:
                w.execute("DELETE FROM ops WHERE k = ?", (row[0],))
                return int(row[0]), str(row[1])
        return None

    @property
    def depth_estimate(self) -> int:
        """Undelivered rows (pending and leased), estimated without a query."""
        return self._depth_base + self._depth_delta

    def refresh_depth(self) -> int:
        """Count undelivered rows exactly and reset the back-pressure estimate."""
        n = int(self.read("SELECT count(*) FROM ops")[0][0])
        with self._wlock:
            self._set_depth(n)
        return n
