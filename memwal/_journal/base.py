"""The connection holder under every job of the journal: opening (schema, migrations, pragmas), the locks that order this process's writers, the write paths and the tally of removals a flush watches.

The WAL journal: append on the caller's thread; lease, settle and recover for consumers.

Every method is synchronous and runs one short transaction whole, so no SQLite lock
is ever held across an await: the async consumer calls the consumer-side methods on a
worker thread, except ``write_now``, which never waits and so may run on the event
loop. One in-process lock (``_wlock``) orders this process's writers, so a
``collect`` waiting on the consumer's transaction wakes as soon as it commits instead
of sleeping in SQLite's busy handler; other processes are ordered by SQLite's lock."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .._core.config import JournalConfig
from .._core.errors import JournalError
from .._core.records import (
    IdGenerator,
)
from .rows import (
    damaged,
    explain,
    fetch_all,
    fsync_dir,
    is_damage,
    is_full,
    log,
    owner,
    rollback,
)
from .schema import (
    APPLICATION_ID,
    MIGRATIONS,
    SCHEMA_VERSION,
)


class JournalBase:
    """The connections, locks and write paths every job of the journal shares."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: JournalConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.config = config or JournalConfig()
        self.clock = clock
        self.owner = owner()
        self.ids = IdGenerator()
        self._wlock = threading.Lock()  # orders this process's writers
        self._clock_c = threading.Lock()  # guards the consumer connection
        self._rlock = threading.Lock()  # guards the read connection
        # The one connection this process writes with: appends and the consumer's
        # claims, acks and settlements alike (they are ordered by _wlock anyway). A
        # commit by another connection resets this one's page cache, so the next
        # append would re-read the B-tree pages it needs; with one writer, only
        # another process's commits do (see benchmarks/README.md, issue 19).
        self._w: sqlite3.Connection | None = None
        self._wc: sqlite3.Cursor | None = None  # the producer's INSERT reuses one cursor
        self._c: sqlite3.Connection | None = None  # the consumer's reads and checkpoints
        self._r: sqlite3.Connection | None = None
        self._closed = False
        # Depth estimate for back-pressure: the last exact count plus what this process
        # added since, minus what it removed. Exact counting happens near the limit.
        self._depth_base = 0
        self._depth_delta = 0
        self._counted_at = float("-inf")  # monotonic time of the last exact count
        # Commits since the last checkpoint, this process's (a proxy for WAL pages).
        self.commits = 0
        self.large_appended = False  # a payload over LARGE_ROW was appended since the consumer last looked
        self._checkpointed_at = 0
        # ``commits`` when a write last failed for lack of space: the disk is full while
        # no commit has succeeded since (see ``disk_full``), at no cost to the hot path.
        self.full_at: int | None = None
        # Group commit (durability full): the writer commits with synchronous=NORMAL
        # and callers wait in sync_upto, where one fdatasync of the WAL covers every
        # commit made before it began (see sync_upto).
        self.group_commit = self.config.durability == "full"
        self._wal_fd: int | None = None
        self._sync_lock = threading.Lock()
        self.synced = 0  # every commit up to this ``commits`` value is on disk
        journals.add(self)

    def forget_after_fork(self) -> None:
        """In a child after fork(): fresh locks (a parent thread may have held one at the
        fork), the parent's connections dropped unused, and an open journal closed here."""
        self._wlock, self._clock_c, self._rlock, self._sync_lock = (threading.Lock() for _ in range(4))
        self.owner = owner()
        conns = (self._w, self._c, self._r)
        if any(c is not None for c in conns):
            inherited.append(conns)
            self._w = self._c = self._r = None
            if self._wal_fd is not None:  # the child's copy of the parent's descriptor
                os.close(self._wal_fd)
                self._wal_fd = None
            self._wc = None
            self._closed = True

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._w else "unopened"
        return f"<Journal {str(self.path)!r} {state}>"

    def open(self) -> None:
        """Create or check the schema and open the connections; JournalError names the path."""
        if self._w is not None:
            return
        if self._closed:
            raise JournalError("journal is closed", path=str(self.path))
        if not self.path.parent.is_dir():
            raise JournalError("cannot open: the directory does not exist", path=str(self.path))
        deadline = time.monotonic() + self.config.busy_timeout
        while True:
            try:
                self._c = self._connect()
                self._migrate(self._c)
                break
            except sqlite3.OperationalError as exc:
                # Switching to WAL or creating the schema while another process does the
                # same can fail with "locked" outside the busy handler: retry, bounded.
                self._close_conns()
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise JournalError(f"cannot open: {explain(exc, self.path)}", path=str(self.path)) from exc
                if time.monotonic() > deadline:
                    raise JournalError(f"cannot open: {exc} past busy_timeout", path=str(self.path)) from exc
                time.sleep(0.01)
            except sqlite3.DatabaseError as exc:
                self._close_conns()
                if is_damage(exc):
                    raise damaged(exc, self.path) from exc
                raise JournalError(f"not a memwal journal ({exc})", path=str(self.path)) from exc
            except BaseException:
                self._close_conns()
                raise
        try:
            self._w = self._connect()
            self._wc = self._w.cursor()
            if self.group_commit:
                self._w.execute("PRAGMA synchronous=NORMAL")  # sync_upto makes its commits durable
                self._wal_fd = os.open(f"{self.path}-wal", os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
                fsync_dir(self.path.parent)  # the WAL file's own entry survives power loss
            self._r = self._connect()
            self._r.execute("PRAGMA query_only=1")
        except (sqlite3.Error, OSError) as exc:
            self._close_conns()
            raise JournalError(f"cannot open: {explain(exc, self.path)}", path=str(self.path)) from exc

    def close(self) -> None:
        """Checkpoint and close; closing twice is a no-op."""
        if self._closed:
            return
        if self.group_commit and self._wal_fd is not None:
            try:
                self.sync_upto(self.commits)  # commits whose callers did not wait (fire and forget)
            except JournalError as exc:
                log.warning("sync at close failed: %s", exc)
        self._closed = True
        # The order every other holder takes them in, bounded: a KeyboardInterrupt that
        # lands between a lock's acquire and its ``with`` block leaves it held for good,
        # and closing at exit must not hang on it (the connections close all the same).
        held = [lk for lk in (self._clock_c, self._wlock) if lk.acquire(timeout=self.config.busy_timeout)]
        try:
            if len(held) < 2:
                log.warning("journal %s: a lock is still held (an interrupted writer?); closing"
                            " without a checkpoint", self.path)
            elif self._c is not None:
                try:
                    self._c.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.warning("checkpoint at close failed: %s (journal %s)", exc, self.path)
            self._close_conns()
        finally:
            for lk in reversed(held):
                lk.release()

    @property
    def is_open(self) -> bool:
        return self._w is not None and not self._closed

    @property
    def disk_full(self) -> bool:
        """True while this process's last write failed for lack of space and none has
        committed since (health reports it as a reason)."""
        return self.full_at is not None and self.full_at == self.commits

    def note_failure(self, exc: sqlite3.Error) -> None:
        """Remember a write that failed for lack of space (for ``disk_full``)."""
        if is_full(exc):
            self.full_at = self.commits

    def _close_conns(self) -> None:
        for conn in (self._w, self._c, self._r):
            if conn is not None:
                conn.close()
        self._w = self._c = self._r = None
        self._wc = None
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.config.busy_timeout
        )
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            conn.close()
            raise JournalError(f"cannot switch to WAL mode (got {mode})", path=str(self.path))
        sync = "FULL" if self.config.durability == "full" else "NORMAL"
        conn.execute(f"PRAGMA synchronous={sync}")
        # No connection checkpoints inside its COMMIT (that would hold the writer lock
        # through fsyncs); the consumer checkpoints on its own schedule.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id != APPLICATION_ID and (tables or version):
                raise JournalError("not a memwal journal (no memwal application_id)", path=str(self.path))
            if version > SCHEMA_VERSION:
                raise JournalError(
                    f"schema version {version} is newer than this memwal reads ({SCHEMA_VERSION});"
                    " upgrade memwal",
                    path=str(self.path),
                )
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[v]:
                    conn.execute(stmt)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise

    def _conn(self, which: sqlite3.Connection | None) -> sqlite3.Connection:
        if which is None or self._closed:
            raise JournalError("journal is closed", path=str(self.path))
        return which

    def read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """One read statement on the read connection (a row that is not UTF-8 is read
        leniently, never raising); JournalError names the file."""
        with self._rlock:
            try:
                return fetch_all(self._conn(self._r), sql, tuple(params))
            except sqlite3.Error as exc:
                if is_damage(exc):
                    raise damaged(exc, self.path) from exc
                raise JournalError(f"cannot read: {exc}", path=str(self.path)) from exc

    def sync_upto(self, ticket: int) -> None:
        """Return once every commit up to ``ticket`` (a ``commits`` value) is on disk.

        Group commit: the first caller to find its commit unsynced becomes the leader
        and fdatasyncs the WAL once, covering every commit made before it started;
        callers queued behind it find their commit covered and return without an
        fsync of their own. A no-op unless ``durability`` is ``full``.
        """
        if not self.group_commit or self.synced >= ticket:
            return
        with self._sync_lock:
            if self.synced >= ticket:
                return
            target = self.commits  # commits finished so far; later ones wait for the next sync
            fd = self._wal_fd
            if fd is None or self._closed:
                raise JournalError("journal is closed", path=str(self.path))
            try:
                os.fdatasync(fd)
            except OSError as exc:
                raise JournalError(f"cannot sync the journal: {exc}", path=str(self.path)) from exc
            self.synced = max(self.synced, target)

    def transaction(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """``fn`` in one write transaction.

        On a full disk it checkpoints and truncates the WAL, then runs ``fn`` once more
        (as ``write_one`` does), so dead letters, held rows and retention drain too."""
        with self._clock_c, self._wlock:
            c = self._conn(self._w)
            if self.disk_full:  # as in write_one: make room before taking any
                self._reclaim(self._conn(self._c))
            try:
                result = self._txn(c, fn)
            except sqlite3.Error as exc:
                self.note_failure(exc)
                if not (is_full(exc) and self._reclaim(self._conn(self._c))):
                    raise JournalError(f"cannot write: {exc}", path=str(self.path)) from exc
                try:  # once more, into the WAL the checkpoint just emptied
                    result = self._txn(c, fn)
                except sqlite3.Error as again:
                    self.note_failure(again)
                    raise JournalError(f"cannot write: {again}", path=str(self.path)) from again
            ticket = self.commits
        self.sync_upto(ticket)
        return result

    def _txn(self, c: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        c.execute("BEGIN IMMEDIATE")  # the caller holds _wlock
        try:
            result = fn(c)
            c.execute("COMMIT")
        except BaseException:
            rollback(c)
            raise
        self.commits += 1
        return result

    def write_one(self, sql: str, params: Any, *, removes: Sequence[int] = ()) -> int:
        """One statement in its own (autocommit) transaction; returns rows changed.

        ``removes`` are the keys of the undelivered rows it deletes (for the depth
        estimate).
        """
        with self._clock_c, self._wlock:
            w = self._conn(self._w)
            if self.disk_full:
                # The last write found no room: checkpoint first, before this write's
                # frames take the space just freed and leave none for the checkpoint.
                self._reclaim(self._conn(self._c))
            try:
                n = self._run_one(w, sql, params, removes)
            except sqlite3.Error as exc:
                self.note_failure(exc)
                if not (is_full(exc) and self._reclaim(self._conn(self._c))):
                    raise JournalError(f"cannot write: {exc}", path=str(self.path)) from exc
                try:  # once more, into the WAL the checkpoint just emptied
                    n = self._run_one(w, sql, params, removes)
                except sqlite3.Error as again:
                    self.note_failure(again)
                    raise JournalError(f"cannot write: {again}", path=str(self.path)) from again
            ticket = self.commits
        self.sync_upto(ticket)
        return n

    def _reclaim(self, c: sqlite3.Connection) -> bool:
        """After a write failed on a full disk: copy the WAL into the main file and
        truncate it, so the space it held can take the next writes (the caller holds
        ``_wlock``). True if the WAL is now empty."""
        try:
            busy, _, _ = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("cannot checkpoint to make room on a full disk: %s (journal %s)", exc, self.path)
            return False
        if not busy:
            self._checkpointed_at = self.commits
            log.warning("disk full: checkpointed and truncated the WAL to make room (journal %s)", self.path)
        return not busy

    def _run_one(self, c: sqlite3.Connection, sql: str, params: Any, removes: Sequence[int]) -> int:
        n = int(c.execute(sql, params).rowcount)  # the caller holds _wlock
        self.commits += 1
        self._depth_delta -= len(removes)
        return n

    def write_now(self, sql: str, params: Any, *, removes: Sequence[int] = ()) -> int | None:
        """``write_one`` if it can run at once, else None (nothing written).

        It never waits: not for this process's writer lock, not for another
        process's SQLite lock (busy_timeout 0 on its connection). So an event loop
        may call it: the statement runs whole, no lock is held across an await, and
        a busy journal sends the caller to ``write_one`` on a worker thread.
        """
        if self.disk_full or not self._wlock.acquire(blocking=False):
            return None  # a full disk: write_one checkpoints before writing
        try:
            w = self._conn(self._w)
            try:
                w.execute("PRAGMA busy_timeout=0")
                try:
                    n = self._run_one(w, sql, params, removes)
                    ticket = self.commits
                finally:
                    w.execute(f"PRAGMA busy_timeout={int(self.config.busy_timeout * 1000)}")
            except sqlite3.OperationalError as exc:
                # A full disk too: write_one, on a worker thread, makes room and retries.
                if "locked" in str(exc) or "busy" in str(exc) or is_full(exc):
                    self.note_failure(exc)
                    return None
                raise JournalError(f"cannot write: {exc}", path=str(self.path)) from exc
            except sqlite3.Error as exc:
                raise JournalError(f"cannot write: {exc}", path=str(self.path)) from exc
        finally:
            self._wlock.release()
        self.sync_upto(ticket)  # durability full: as before, this write's fsync is paid here
        return n


# Journals of this process, so a child after fork() can make each one safe to touch.
journals: weakref.WeakSet[JournalBase] = weakref.WeakSet()


# The parent's connections, kept referenced in a child: SQLite forbids using or closing
# a connection carried across fork().
inherited: list[Any] = []


def after_fork_in_child() -> None:
    for j in list(journals):
        j.forget_after_fork()


os.register_at_fork(after_in_child=after_fork_in_child)
