"""The WAL journal: append on the caller's thread; lease, settle and recover for consumers.

Every method is synchronous and runs one short transaction whole, so no SQLite lock
is ever held across an await: the async consumer calls the consumer-side methods on a
worker thread, except ``write_now``, which never waits and so may run on the event
loop. One in-process lock (``_wlock``) orders this process's writers, so a
``collect`` waiting on the consumer's transaction wakes as soon as it commits instead
of sleeping in SQLite's busy handler; other processes are ordered by SQLite's lock.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from .._core.config import JournalConfig
from .._core.errors import InvalidOperation, JournalError, QueueFull
from .._core.records import (
    IdGenerator,
    MemoryOperation,
    Priority,
    decode_op,
    id_to_seq,
)
from .schema import (
    ACK_OPS,
    APPLICATION_ID,
    CLAIMED,
    INSERT_OP,
    LEASE_CLAIM_HELD,
    LEASE_CLAIM_OPS,
    LEASE_HELD,
    LEASE_SELECT,
    MIGRATIONS,
    RANK_SHIFT,
    RELEASE_OPS,
    RETRY_OPS,
    SCHEMA_VERSION,
    SEQ_MASK,
)

__all__ = ["Journal", "JournalCounts", "LeasedOp", "Settlement", "decode_rows"]

log = logging.getLogger("memwal")

# Rows per claim or ack statement (the write lock is held for one statement).
CHUNK = 128
# RETRY_OPS is an UPDATE ... FROM, which SQLite reads since 3.33; older ones retry in settle.
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)
# Near the bound, how long an exact count of the journal is trusted (seconds).
EXACT_COUNT_TTL = 0.1
# select_ready_now gives up past this many thousand SQLite VM steps (about 1.5 ms).
# Measured: 500 ready rows take 6k steps and 0.6 ms; behind 2,000 leased rows
# (4 in-flight batches of 500), 23k steps and about as long.
SELECT_NOW_STEPS = 50
# A payload this large sets ``large_appended``: the next lease reads off the loop.
LARGE_ROW = 16 << 10
LEASE_SELECT_ALL = LEASE_SELECT.format(extra="")


class LeasedOp(NamedTuple):
    """An operation leased to one consumer: its journal key and prior attempts."""

    key: int
    op: MemoryOperation
    attempts: int


class Settlement(msgspec.Struct, kw_only=True):
    """What to do with each leased row, applied in one transaction by ``settle``.

    ``retry`` holds ``(key, error, not_before)``; ``dead`` ``(key, reason)``;
    ``held`` ``(key, holder)`` for rows a fallback sink now holds; ``release`` gives
    rows back without using an attempt (breaker open, shutdown).
    """

    acked: list[int] = []
    retry: list[tuple[int, str, float]] = []
    dead: list[tuple[int, str]] = []
    held: list[tuple[int, str]] = []
    release: list[int] = []


class RemovalWatch:
    """Counts the rows with a sequence at most ``upto`` that this journal removes
    from ``ops`` (acknowledged, dead-lettered, held, evicted) while it is registered."""

    __slots__ = ("removed", "upto")

    def __init__(self, upto: int) -> None:
        self.upto = upto & SEQ_MASK
        self.removed = 0


class JournalCounts(msgspec.Struct, frozen=True, kw_only=True):
    """Rows by state, read from the journal (so every process is counted).

    Example:
        >>> collector.journal.counts().pending
        3
    """

    pending: int = 0
    leased: int = 0
    dead: int = 0
    delivered: int = 0
    held: int = 0


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def owner_is_gone(owner: str) -> bool:
    """True when ``owner`` names a process on this host that no longer exists."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# Journals of this process, so a child after fork() can make each one safe to touch.
_journals: weakref.WeakSet[Journal] = weakref.WeakSet()
# The parent's connections, kept referenced in a child: SQLite forbids using or closing
# a connection carried across fork().
_inherited: list[Any] = []


def _after_fork_in_child() -> None:
    for j in list(_journals):
        j._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Journal:
    """A memwal journal file.

    Example:
        >>> j = Journal("memories.journal"); j.open()
        >>> op = j.append("bug", "NPE in parser", {}, Priority.HIGH, (), None)
        >>> j.close()
    """

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
        self.owner = _owner()
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
        self._fc: sqlite3.Connection | None = None  # flush counts' snapshots, opened on first use
        self._flock = threading.Lock()  # guards _fc
        self._watches: list[RemovalWatch] = []  # replaced, never mutated (read without a lock)
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
        # Group commit (durability full): the writer commits with synchronous=NORMAL
        # and callers wait in sync_upto, where one fdatasync of the WAL covers every
        # commit made before it began (see sync_upto).
        self.group_commit = self.config.durability == "full"
        self._wal_fd: int | None = None
        self._sync_lock = threading.Lock()
        self.synced = 0  # every commit up to this ``commits`` value is on disk
        _journals.add(self)

    def _forget_after_fork(self) -> None:
        """In a child after fork(): fresh locks (a parent thread may have held one at the
        fork), the parent's connections dropped unused, and an open journal closed here."""
        self._wlock, self._clock_c, self._rlock, self._flock, self._sync_lock = (threading.Lock() for _ in range(5))
        self.owner = _owner()
        conns = (self._w, self._c, self._r, self._fc)
        if any(c is not None for c in conns):
            _inherited.append(conns)
            self._w = self._c = self._r = self._fc = None
            if self._wal_fd is not None:  # the child's copy of the parent's descriptor
                os.close(self._wal_fd)
                self._wal_fd = None
            self._wc = None
            self._closed = True

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._w else "unopened"
        return f"<Journal {str(self.path)!r} {state}>"

    # -- lifecycle ---------------------------------------------------------------

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
                    raise JournalError(f"cannot open: {_explain(exc, self.path)}", path=str(self.path)) from exc
                if time.monotonic() > deadline:
                    raise JournalError(f"cannot open: {exc} past busy_timeout", path=str(self.path)) from exc
                time.sleep(0.01)
            except sqlite3.DatabaseError as exc:
                self._close_conns()
                if _is_damage(exc):
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
                _fsync_dir(self.path.parent)  # the WAL file's own entry survives power loss
            self._r = self._connect()
            self._r.execute("PRAGMA query_only=1")
        except (sqlite3.Error, OSError) as exc:
            self._close_conns()
            raise JournalError(f"cannot open: {_explain(exc, self.path)}", path=str(self.path)) from exc
        try:
            self.refresh_depth()
        except JournalError:
            self._close_conns()
            raise

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
        with self._flock, self._clock_c, self._wlock:  # the order every other holder takes them in
            if self._c is not None:
                try:
                    self._c.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.warning("checkpoint at close failed: %s (journal %s)", exc, self.path)
            self._close_conns()

    @property
    def is_open(self) -> bool:
        return self._w is not None and not self._closed

    def _close_conns(self) -> None:
        for conn in (self._w, self._c, self._r, self._fc):
            if conn is not None:
                conn.close()
        self._w = self._c = self._r = self._fc = None
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
            _rollback(conn)
            raise

    def _conn(self, which: sqlite3.Connection | None) -> sqlite3.Connection:
        if which is None or self._closed:
            raise JournalError("journal is closed", path=str(self.path))
        return which

    # -- producer ----------------------------------------------------------------

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
        rank_key = _RANK_KEY[priority]
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
                    payload = _encode(op)
                    if len(payload) > LARGE_ROW:
                        self.large_appended = True
                    row = (rank_key | seq, new_id, category, created_at, _crc32(payload), payload)
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
        if evicted is not None:
            self._removed((evicted[0],))
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
        n = int(self._read("SELECT count(*) FROM ops")[0][0])
        with self._wlock:
            self._set_depth(n)
        return n

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

    # -- consumer ----------------------------------------------------------------

    def _write(self, fn: Callable[[sqlite3.Connection], Any], removes: Sequence[int] = ()) -> Any:
        """``fn`` in one write transaction; ``removes``: the keys it takes out of ``ops``."""
        with self._clock_c, self._wlock:
            c = self._conn(self._w)
            try:
                c.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise JournalError(f"cannot write: {exc}", path=str(self.path)) from exc
            try:
                result = fn(c)
                c.execute("COMMIT")
                self.commits += 1
                self._removed(removes)
                ticket = self.commits
            except sqlite3.Error as exc:
                _rollback(c)
                raise JournalError(f"cannot write: {exc}", path=str(self.path)) from exc
            except BaseException:
                _rollback(c)
                raise
        self.sync_upto(ticket)
        return result

    def lease(self, n: int, *, category: str | None = None) -> tuple[list[LeasedOp], list[tuple[str, str]]]:
        """Lease up to ``n`` ready rows in priority then FIFO order.

        The scan for ready rows is a snapshot read; only the claim (an UPDATE by
        primary key that re-checks readiness) holds the write lock, so a long scan
        never stalls collect(). Rows whose checksum fails or that cannot be decoded
        are dead-lettered and returned as ``(id, reason)`` pairs, never leased.
        """
        rows, now = self.select_ready(n, category=category)
        if not rows:
            return [], []
        good, bad = decode_rows(rows)
        if bad:
            self.dead_letter(bad, now)
        claimed = self._claim("ops", good, now)
        return [g for g in good if g.key in claimed], [(i, r) for _, i, r in bad]

    def select_ready(self, n: int, *, category: str | None = None) -> tuple[list[Any], float]:
        """Up to ``n`` ready rows, undecoded, and the time they were ready at (a snapshot read).

        The consumer's half of ``lease``: it decodes with ``decode_rows`` and claims
        with ``claim_statements``, each where it costs collect() least.
        """
        now = self.clock()
        sql = LEASE_SELECT.format(extra="AND category = :cat" if category is not None else "")
        with self._clock_c:
            try:
                rows = fetch_all(self._conn(self._c), sql, {"now": now, "n": n, "cat": category})
            except sqlite3.Error as exc:
                raise JournalError(f"cannot read: {exc}", path=str(self.path)) from exc
        return rows, now

    def select_ready_now(self, n: int, *, budget: int = SELECT_NOW_STEPS) -> tuple[list[Any], float] | None:
        """``select_ready`` if it runs at once and short, else None (nothing read).

        For an event loop, like ``write_now``: it never waits for the consumer
        connection (another thread holds it), for another process's SQLite lock
        (busy_timeout 0 meanwhile), nor past ``budget`` thousand SQLite VM steps (a
        scan over many rows that are not ready: leased, backing off). On any SQLite
        error it returns None too: the caller then runs ``select_ready`` on a worker
        thread, which waits as usual and reports a real error. On the loop, the read
        does not trade the GIL with collect() row by row, as a worker thread's does.
        """
        if not self._clock_c.acquire(blocking=False):
            return None
        try:
            c = self._conn(self._c)
            # The budget counter is C code (no Python frame runs, so no signal
            # handler can run inside it and have its exception swallowed by sqlite3):
            # zero ``budget`` times, then StopIteration, which interrupts the query.
            tick = itertools.repeat(0, budget).__next__
            now = self.clock()
            try:
                c.execute("PRAGMA busy_timeout=0")
                c.set_progress_handler(tick, 1000)
                return c.execute(LEASE_SELECT_ALL, {"now": now, "n": n}).fetchall(), now
            except sqlite3.Error:
                return None
            finally:
                c.set_progress_handler(None, 0)
                c.execute(f"PRAGMA busy_timeout={int(self.config.busy_timeout * 1000)}")
        except sqlite3.Error:
            return None
        finally:
            self._clock_c.release()

    def dead_letter(self, bad: Sequence[tuple[int, str, str]], now: float) -> None:
        """Move rows that failed their checksum or decode (``(key, id, reason)``) to dead."""
        def txn(c: sqlite3.Connection) -> None:
            sanitize_rows(c, "ops", [k for k, _, _ in bad])
            _move_dead(c, [(k, r) for k, _, r in bad], now, table="ops", add_attempt=0)

        self._write(txn, removes=[k for k, _, _ in bad])

    def claim_statements(self, table: str, good: Sequence[LeasedOp], now: float) -> list[tuple[str, tuple[Any, ...], list[int]]]:
        """``(sql, params, keys)`` per chunk: each leases its keys that are still ready."""
        sql = LEASE_CLAIM_OPS if table == "ops" else LEASE_CLAIM_HELD
        until = now + self.config.lease_seconds
        out = []
        for i in range(0, len(good), CHUNK):
            keys = [g.key for g in good[i : i + CHUNK]]
            out.append((sql, (self.owner, until, json.dumps(keys), now), keys))
        return out

    def claimed_keys(self, table: str, params: tuple[Any, ...]) -> list[int]:
        """After a claim changed fewer rows than asked (a race): which keys are ours."""
        return [r[0] for r in self._read_c(CLAIMED.format(table=table), params[:3])]

    def settle_statements(self, s: Settlement) -> list[tuple[str, tuple[Any, ...], list[int]]] | None:
        """``s`` as single statements ``(sql, params, keys it removes)``, or None.

        Acknowledgements, retries and releases each change a row in one statement, so
        they need no shared transaction: a crash between two statements leaves each row
        settled or still leased (its lease expires and it is delivered again). Dead
        letters, held rows and retention move rows between tables: None, use ``settle``.
        """
        if s.dead or s.held or (s.acked and self.config.retention_seconds > 0) or (s.retry and not _UPDATE_FROM):
            return None

        def chunks(rows: Sequence[Any]) -> list[Any]:
            return [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]

        return [
            *((ACK_OPS, (json.dumps(keys),), keys) for keys in chunks(s.acked)),
            *((RETRY_OPS, (json.dumps(rows), self.owner), []) for rows in chunks(s.retry)),
            *((RELEASE_OPS, (json.dumps(keys), self.owner), []) for keys in chunks(s.release)),
        ]

    def _claim(self, table: str, good: list[LeasedOp], now: float) -> set[int]:
        """Lease ``good`` rows that are still ready: one statement per chunk."""
        claimed: set[int] = set()
        for sql, params, keys in self.claim_statements(table, good, now):
            if self.write_one(sql, params) == len(keys):
                claimed.update(keys)
            else:
                claimed.update(self.claimed_keys(table, params))
        return claimed

    def write_one(self, sql: str, params: Any, *, removes: Sequence[int] = ()) -> int:
        """One statement in its own (autocommit) transaction; returns rows changed.

        ``removes`` are the keys of the undelivered rows it deletes (for the depth
        estimate and flush_queue's count).
        """
        with self._clock_c, self._wlock:
            w = self._conn(self._w)
            try:
                n = self._run_one(w, sql, params, removes)
            except sqlite3.Error as exc:
                if not (_is_full(exc) and self._reclaim(self._conn(self._c))):
                    raise JournalError(f"cannot write: {exc}", path=str(self.path)) from exc
                try:  # once more, into the WAL the checkpoint just emptied
                    n = self._run_one(w, sql, params, removes)
                except sqlite3.Error as again:
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
        if removes:
            self._removed(removes, n)
        return n

    def _removed(self, keys: Sequence[int], deleted: int | None = None) -> None:
        """Count committed removals from ``ops`` into the watches (the caller holds _wlock).

        ``deleted``: how many of ``keys`` the statement found (fewer when another
        consumer acknowledged some first); None when all were ours to remove.
        """
        for w in self._watches:
            upto = w.upto
            mine = sum(1 for k in keys if k & SEQ_MASK <= upto)
            # Short of rows: exact when the keys are all on one side of the mark (a
            # batch usually is), else at most what was deleted.
            w.removed += mine if deleted is None or deleted >= len(keys) else min(mine, deleted)

    def watch_removals(self, upto: int) -> RemovalWatch:
        """From now until ``unwatch``, count this journal's removals of rows whose
        sequence is at most ``upto`` (``remaining_upto`` adds them to its count)."""
        w = RemovalWatch(upto)
        with self._wlock:  # removals committed before this are not counted, later ones are
            self._watches = [*self._watches, w]
        return w

    def unwatch(self, w: RemovalWatch) -> None:
        with self._wlock:
            self._watches = [x for x in self._watches if x is not w]

    def write_now(self, sql: str, params: Any, *, removes: Sequence[int] = ()) -> int | None:
        """``write_one`` if it can run at once, else None (nothing written).

        It never waits: not for this process's writer lock, not for another
        process's SQLite lock (busy_timeout 0 on its connection). So an event loop
        may call it: the statement runs whole, no lock is held across an await, and
        a busy journal sends the caller to ``write_one`` on a worker thread.
        """
        if not self._wlock.acquire(blocking=False):
            return None
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
                if "locked" in str(exc) or "busy" in str(exc):
                    return None
                raise JournalError(f"cannot write: {exc}", path=str(self.path)) from exc
            except sqlite3.Error as exc:
                raise JournalError(f"cannot write: {exc}", path=str(self.path)) from exc
        finally:
            self._wlock.release()
        self.sync_upto(ticket)  # durability full: as before, this write's fsync is paid here
        return n

    def _read_c(self, sql: str, params: Any) -> list[Any]:
        with self._clock_c:
            try:
                return fetch_all(self._conn(self._c), sql, params)
            except sqlite3.Error as exc:
                raise JournalError(f"cannot read: {exc}", path=str(self.path)) from exc

    def lease_held(self, n: int) -> list[LeasedOp]:
        """Lease rows a fallback holds, for reconciliation to the primary."""
        now = self.clock()
        with self._clock_c:
            rows = fetch_all(self._conn(self._c), LEASE_HELD, {"now": now, "n": n})
        if not rows:
            return []
        good, bad = decode_rows(rows)
        if bad:  # the fallback already has these; a damaged copy here cannot be re-sent
            self._write(lambda c: c.executemany("DELETE FROM held WHERE k = ?", [(k,) for k, _, _ in bad]))
        claimed = self._claim("held", good, now)
        for _, op_id, reason in bad:
            log.error("held operation %s cannot be reconciled: %s", op_id, reason)
        return [g for g in good if g.key in claimed]

    def settle(self, s: Settlement) -> None:
        """Apply a batch's outcomes: statement by statement when ``settle_statements``
        allows, else in one transaction."""
        now = self.clock()
        keep = self.config.retention_seconds > 0
        statements = self.settle_statements(s)
        if statements is not None:  # the common case: one statement per chunk
            for sql, params, removed in statements:
                self.write_one(sql, params, removes=removed)
            return

        def txn(c: sqlite3.Connection) -> None:
            if s.acked:
                if keep:
                    c.executemany(
                        "INSERT OR IGNORE INTO done (k, delivered_at, id, category, created_at, crc, payload)"
                        " SELECT k, ?, id, category, created_at, crc, payload FROM ops WHERE k = ?",
                        [(now, k) for k in s.acked],
                    )
                c.execute(ACK_OPS, (json.dumps(s.acked),))
            if s.retry:
                c.executemany(
                    "UPDATE ops SET state = 0, attempts = attempts + 1, last_error = ?, not_before = ?,"
                    " lease_owner = NULL, lease_until = NULL WHERE k = ? AND lease_owner = ?",
                    [(err, nb, k, self.owner) for k, err, nb in s.retry],
                )
            if s.release:
                c.executemany(
                    "UPDATE ops SET state = 0, lease_owner = NULL, lease_until = NULL"
                    " WHERE k = ? AND lease_owner = ?",
                    [(k, self.owner) for k in s.release],
                )
            if s.dead:
                _move_dead(c, s.dead, now, table="ops", add_attempt=1)
            if s.held:
                c.executemany(
                    "INSERT OR IGNORE INTO held (k, holder, held_at, id, category, created_at, crc, payload)"
                    " SELECT k, ?, ?, id, category, created_at, crc, payload FROM ops WHERE k = ?",
                    [(holder, now, k) for k, holder in s.held],
                )
                c.executemany("DELETE FROM ops WHERE k = ?", [(k,) for k, _ in s.held])

        removed = [*s.acked, *(k for k, _ in s.dead), *(k for k, _ in s.held)]
        self._write(txn, removes=removed)
        if removed:
            with self._wlock:
                self._depth_delta -= len(removed)

    def settle_held(
        self, acked: Sequence[int], retry: Sequence[tuple[int, str, float]], release: Sequence[int]
    ) -> None:
        """Outcomes of reconciling held rows to the primary sink."""

        def txn(c: sqlite3.Connection) -> None:
            c.executemany("DELETE FROM held WHERE k = ?", [(k,) for k in acked])
            c.executemany(
                "UPDATE held SET attempts = attempts + 1, last_error = ?, not_before = ?,"
                " lease_owner = NULL, lease_until = NULL WHERE k = ? AND lease_owner = ?",
                [(err, nb, k, self.owner) for k, err, nb in retry],
            )
            c.executemany(
                "UPDATE held SET lease_owner = NULL, lease_until = NULL WHERE k = ? AND lease_owner = ?",
                [(k, self.owner) for k in release],
            )

        self._write(txn)

    def recover(self) -> int:
        """Return rows leased by processes that are gone (on this host) to pending."""

        def txn(c: sqlite3.Connection) -> int:
            n = 0
            for table, reset in (("ops", "state = 0, "), ("held", "")):
                owners = [
                    r[0]
                    for r in c.execute(
                        f"SELECT DISTINCT lease_owner FROM {table} WHERE lease_owner IS NOT NULL"
                    )
                ]
                for owner in owners:
                    if owner != self.owner and owner_is_gone(owner):
                        cur = c.execute(
                            f"UPDATE {table} SET {reset}lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
                            (owner,),
                        )
                        n += cur.rowcount
            return n

        n: int = self._write(txn)
        if n:
            log.info("recovered %d operations leased by processes that are gone (journal %s)", n, self.path)
        return n

    def release_mine(self) -> int:
        """Give back every lease this journal object holds (at shutdown).

        Never raises: when the journal cannot be written (a full disk) the leases are
        left to expire (``lease_seconds``), or to ``recover`` once this process is gone,
        so a shutdown never fails on them.
        """

        def txn(c: sqlite3.Connection) -> int:
            a = c.execute(
                "UPDATE ops SET state = 0, lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
                (self.owner,),
            ).rowcount
            b = c.execute(
                "UPDATE held SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?", (self.owner,)
            ).rowcount
            return int(a + b)

        try:
            return int(self._write(txn))
        except JournalError as exc:
            log.warning("cannot release leases at shutdown (%s); they return to pending when they expire", exc)
            return 0

    def purge_done(self) -> int:
        """Delete delivered rows kept past ``retention_seconds``."""
        cutoff = self.clock() - self.config.retention_seconds
        return int(
            self._write(lambda c: c.execute("DELETE FROM done WHERE delivered_at < ?", (cutoff,)).rowcount)
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

    def checkpoint_wanted(self, *, idle: bool) -> bool:
        """Would ``maybe_checkpoint(idle=idle)`` checkpoint now? (The consumer syncs the
        sink first, so it asks before paying for a sync that nothing follows.)"""
        return self.checkpoint_due or (idle and self.commits > self._checkpointed_at)

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

    # -- reads -------------------------------------------------------------------

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        with self._rlock:
            try:
                return fetch_all(self._conn(self._r), sql, tuple(params))
            except sqlite3.Error as exc:
                if _is_damage(exc):
                    raise damaged(exc, self.path) from exc
                raise JournalError(f"cannot read: {exc}", path=str(self.path)) from exc

    def counts(self) -> JournalCounts:
        """Rows by state across every process using this journal."""
        ops = dict(self._read("SELECT state, count(*) FROM ops GROUP BY state"))
        (dead,), (done,), (held,) = (
            self._read(f"SELECT count(*) FROM {t}")[0] for t in ("dead", "done", "held")
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
        return bool(self._read(sql, params))

    def oldest_pending(self) -> float | None:
        """``created_at`` of the oldest undelivered operation, or None."""
        row = self._read("SELECT min(created_at) FROM ops")[0]
        return None if row[0] is None else float(row[0])

    def find(self, op_id: str) -> MemoryOperation | None:
        """The undelivered operation with this id, or None (read-your-writes)."""
        try:
            seq = id_to_seq(op_id)
        except ValueError:
            return None
        keys = [(r << RANK_SHIFT) | seq for r in range(4)]
        rows = self._read("SELECT crc, payload FROM ops WHERE k IN (?, ?, ?, ?)", keys)
        for crc, payload in rows:
            op, _ = _check_row(payload, crc)
            if op is not None and op.id == op_id:
                return op
        return None

    def dead_reason(self, op_id: str) -> str | None:
        """Why the operation with this id was dead-lettered, or None if it was not."""
        rows = self._read("SELECT reason FROM dead WHERE id = ?", (op_id,))
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
            rows += self._read(sql, params)
        rows.sort(key=lambda r: r[0], reverse=True)
        rows = [(c, p) for _, c, p in rows[:limit]]
        return [op for op in (_check_row(p, c)[0] for c, p in rows) if op is not None]


_encode = msgspec.json.Encoder().encode  # the same encoding as _records.encode_op
_RANK_KEY = {p: p.rank << RANK_SHIFT for p in Priority}
_crc32 = zlib.crc32


def _check_row(payload: Any, crc: Any) -> tuple[MemoryOperation | None, str]:
    """The row's operation, or None and why not. Never raises: any stored value is checked."""
    if type(payload) is not bytes or type(crc) is not int:
        if type(payload) is not bytes:
            return None, f"payload stored as {_sql_type(payload)}, not BLOB"
        return None, f"checksum stored as {_sql_type(crc)}, not INTEGER"
    if zlib.crc32(payload) != crc:
        return None, "checksum mismatch: the payload is damaged"
    try:
        return decode_op(payload), ""
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return None, f"undecodable payload: {exc}"


def _sql_type(value: Any) -> str:
    return {str: "TEXT", int: "INTEGER", float: "REAL", bytes: "BLOB", type(None): "NULL"}.get(type(value), "?")


def readable(text: Any) -> str:
    """A stored id or category as printable text: bytes that were not UTF-8 as ``\\xNN``."""
    if isinstance(text, str):
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    return repr(text)


def _row_damage(op: MemoryOperation, op_id: Any, attempts: Any) -> str:
    """What is wrong with a row whose payload decoded (its other columns), or ""."""
    if op.id != op_id:
        if isinstance(op_id, str) and not op_id.isascii() and readable(op_id) != op_id:
            return f"id column is not valid UTF-8 ({readable(op_id)!r}; the payload says {op.id})"
        return f"id column {readable(op_id)!r} does not match the payload's id {op.id}"
    if type(attempts) is not int:
        return f"attempts stored as {_sql_type(attempts)}, not INTEGER"
    return ""


def decode_rows(rows: list[Any]) -> tuple[list[LeasedOp], list[tuple[int, str, str]]]:
    """Check and decode ``select_ready`` rows: (leasable ops, ``(key, id, reason)`` of damaged rows).

    A row is damaged when its checksum or payload is bad or a column holds the wrong
    type or an id other than its payload's (bytes that are not UTF-8, for one).
    """
    good: list[LeasedOp] = []
    bad: list[tuple[int, str, str]] = []
    for key, op_id, attempts, crc, payload in rows:
        op, reason = _check_row(payload, crc)
        if op is not None and (op.id != op_id or type(attempts) is not int):
            reason = _row_damage(op, op_id, attempts)
            op = None
        if op is None:
            bad.append((key, readable(op_id), reason))
        else:
            good.append(LeasedOp(key, op, attempts))
    return good, bad


def _rollback(c: sqlite3.Connection) -> None:
    """Roll back if a transaction is open: SQLite ends one itself on some errors (a full
    disk), and a ROLLBACK then would hide the real error behind "no transaction is active"."""
    if c.in_transaction:
        try:
            c.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("rollback failed: %s", exc)


def _is_full(exc: sqlite3.Error) -> bool:
    return "full" in str(exc)


def _explain(exc: sqlite3.Error | OSError, path: Path) -> str:
    """SQLite's message, naming a full disk when that is the cause (creating the WAL
    index on a full disk reports only "disk I/O error")."""
    try:
        free = os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize
    except OSError:
        return str(exc)
    if "full" not in str(exc) and free < (64 << 10):
        return f"disk is full ({free} bytes free; SQLite: {exc})"
    return f"disk is full (SQLite: {exc})" if "full" in str(exc) else str(exc)


def _is_damage(exc: sqlite3.Error) -> bool:
    return "malformed" in str(exc)


def damaged(exc: sqlite3.Error, path: Path) -> JournalError:
    """One line for a file SQLite cannot parse, with the way out."""
    return JournalError(
        f"the journal file is damaged (SQLite: {exc}); `memwal-replay verify --salvage NEW.journal"
        f" {path}` copies every row that can still be read into a new journal",
        path=str(path),
    )


def _lenient(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def fetch_all(c: sqlite3.Connection, sql: str, params: Any = ()) -> list[Any]:
    """``c.execute(sql, params).fetchall()``, reading text that is not UTF-8 too.

    sqlite3 fails the whole query on one such value; then the query runs again
    decoding with surrogateescape, so the rows' checks (``decode_rows``) find the
    damaged one (its id no longer matches its payload) and quarantine it.
    """
    try:
        return c.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "decode" not in str(exc):
            raise
    c.text_factory = _lenient
    try:
        return c.execute(sql, params).fetchall()
    finally:
        c.text_factory = str


def sanitize_rows(c: sqlite3.Connection, table: str, keys: Sequence[int]) -> None:
    """Before damaged rows move to dead: ids and categories as readable text, payloads as BLOBs,
    so every later read of the dead letters (status, list, show) works."""
    for k in keys:
        row = c.execute(
            f"SELECT CAST(id AS BLOB), CAST(category AS BLOB), typeof(payload), typeof(crc) FROM {table} WHERE k = ?",
            (k,),
        ).fetchone()
        if row is None:
            continue
        op_id, cat = readable(row[0] or b""), readable(row[1] or b"")
        c.execute(
            f"UPDATE {table} SET id = ?, category = ?, payload = CAST(payload AS BLOB),"
            " crc = CASE WHEN typeof(crc) = 'integer' THEN crc ELSE -1 END WHERE k = ?",
            (op_id, cat, k),
        )


def _move_dead(
    c: sqlite3.Connection, items: Sequence[tuple[int, str]], now: float, *, table: str, add_attempt: int
) -> None:
    c.executemany(
        "INSERT OR REPLACE INTO dead (k, attempts, reason, dead_at, id, category, created_at, crc, payload)"
        f" SELECT k, attempts + ?, ?, ?, id, category, created_at, crc, payload FROM {table} WHERE k = ?",
        [(add_attempt, reason, now, k) for k, reason in items],
    )
    c.executemany(f"DELETE FROM {table} WHERE k = ?", [(k,) for k, _ in items])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
