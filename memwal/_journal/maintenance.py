"""Keeping the file small: WAL checkpoints (when and how) and purging kept deliveries past their retention."""

from __future__ import annotations

import sqlite3

from .._core.errors import JournalError
from .base import JournalBase
from .schema import (
    SCHEMA_VERSION,
)


class Maintenance(JournalBase):
    """Keeping the file small: WAL checkpoints (when and how) and purging kept deliveries past their retention."""

    def purge_done(self) -> int:
        """Delete delivered rows kept past ``retention_seconds``."""
        cutoff = self.clock() - self.config.retention_seconds
        return int(
            self.transaction(lambda c: c.execute("DELETE FROM done WHERE delivered_at < ?", (cutoff,)).rowcount)
        )

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        """Run a WAL checkpoint: (busy, wal frames, frames checkpointed)."""
        start = self.commits
        with self._clock_c:
            try:
                row = self._conn(self._c).execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            except sqlite3.Error as exc:
                raise JournalError(f"cannot checkpoint: {exc}", path=str(self.path)) from exc
        self._checkpointed_at = start
        return int(row[0]), int(row[1]), int(row[2])

    def checkpoint_and_restart(self) -> tuple[int, int, int]:
        """Checkpoint, then make the WAL start over from its beginning.

        A PASSIVE checkpoint copies pages without blocking anyone, but under a steady
        stream of writes from several connections the WAL is then never reused and
        grows without bound. So: PASSIVE for the bulk, then, holding this process's
        writer lock, RESTART for the rest (busy_timeout 0: if another process is
        reading or writing, it is simply tried again next time) and one small write
        that starts the new WAL, so the fsync of its header is paid here and not by
        a collect().
        """
        self.checkpoint()
        start = self.commits
        with self._clock_c, self._wlock, self._rlock:
            c = self._conn(self._c)
            try:
                c.execute("PRAGMA busy_timeout=0")
                try:
                    busy, frames, done = c.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                    if not busy:  # the new WAL's first frame, by the writer (keeps its page cache)
                        self._conn(self._w).execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                finally:
                    c.execute(f"PRAGMA busy_timeout={int(self.config.busy_timeout * 1000)}")
            except sqlite3.Error as exc:
                raise JournalError(f"cannot checkpoint: {exc}", path=str(self.path)) from exc
        self._checkpointed_at = start
        return int(busy), int(frames), int(done)

    @property
    def checkpoint_due(self) -> bool:
        """Has the WAL grown by ``checkpoint_pages`` commits since the last checkpoint?"""
        return self.commits - self._checkpointed_at >= self.config.checkpoint_pages

    def maybe_checkpoint(self, *, idle: bool) -> bool:
        """Checkpoint and restart the WAL when it has grown by ``checkpoint_pages`` commits;
        a plain checkpoint when collecting is idle (the next writer then restarts it).

        With ``durability: normal`` a checkpoint is what makes acknowledgements
        durable (it fsyncs the WAL): the consumer holds acks back and syncs the sink
        before calling this, so no durable ack ever precedes a durable delivery.
        """
        if self.checkpoint_due:
            self.checkpoint_and_restart()
            return True
        if idle and self.commits > self._checkpointed_at:
            self.checkpoint()
            return True
        return False

    def checkpoint_wanted(self, *, idle: bool) -> bool:
        """Would ``maybe_checkpoint(idle=idle)`` checkpoint now? (The consumer syncs the
        sink first, so it asks before paying for a sync that nothing follows.)"""
        return self.checkpoint_due or (idle and self.commits > self._checkpointed_at)
