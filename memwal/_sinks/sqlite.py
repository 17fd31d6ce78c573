"""SQLiteSink: the durable local memory store, with an FTS5 index kept in the same transaction."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import anyio
import msgspec

from .._core.errors import InvalidOperation, JournalError, SinkUnavailable
from .._core.records import Memory, MemoryOperation, Priority
from .base import Sink

if TYPE_CHECKING:
    from .._core.config import Config

if TYPE_CHECKING:
    import aiosqlite

__all__ = ["SQLiteSink"]

SCHEMA_VERSION = 1
_DDL = (
    """CREATE TABLE IF NOT EXISTS memories (
        id TEXT PRIMARY KEY,
        category TEXT NOT NULL,
        content TEXT NOT NULL,
        metadata TEXT NOT NULL,
        priority TEXT NOT NULL,
        tags TEXT NOT NULL,
        project TEXT,
        created_at REAL NOT NULL,
        stored_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS memories_created ON memories(created_at)",
    "CREATE INDEX IF NOT EXISTS memories_category ON memories(category, created_at)",
    """CREATE VIRTUAL TABLE IF NOT EXISTS memories_fts USING fts5(
        content, tags, category UNINDEXED, content='memories', content_rowid='rowid')""",
    """CREATE TRIGGER IF NOT EXISTS memories_ai AFTER INSERT ON memories BEGIN
        INSERT INTO memories_fts(rowid, content, tags, category)
        VALUES (new.rowid, new.content, new.tags, new.category); END""",
)
_COLUMNS = "id, category, content, metadata, priority, tags, project, created_at, stored_at"
# Rows arrive as one JSON array of 9-element arrays in _COLUMNS order; metadata and
# tags come out of json_extract as compact JSON text, null as NULL.
_INSERT_BATCH = f"""INSERT OR IGNORE INTO memories ({_COLUMNS})
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
           json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'),
           json_extract(value, '$[6]'), json_extract(value, '$[7]'), json_extract(value, '$[8]')
    FROM json_each(?)"""
_INSERT_ROW = f"INSERT OR IGNORE INTO memories ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_enc = msgspec.json.Encoder()
_meta = msgspec.json.Decoder(dict[str, Any])
_tags = msgspec.json.Decoder(tuple[str, ...])


def _plain(r: tuple[Any, ...]) -> tuple[Any, ...]:
    """A batch row for _INSERT_ROW: metadata and tags as the JSON text json_extract would give."""
    return (*r[:3], _enc.encode(r[3]).decode(), r[4], _enc.encode(r[5]).decode(), *r[6:])


def _row(r: sqlite3.Row | tuple[Any, ...]) -> Memory:
    return Memory(
        id=r[0],
        category=r[1],
        content=r[2],
        metadata=_meta.decode(r[3]),
        priority=Priority(r[4]),
        tags=_tags.decode(r[5]),
        project=r[6],
        created_at=r[7],
        stored_at=r[8],
    )


class _Pending:
    """One deliver() call's rows, waiting to be written by whichever call holds the lock."""

    __slots__ = ("done", "error", "rows")

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.done = False
        self.error: BaseException | None = None


def _fts_query(query: str) -> str:
    # Each word becomes a quoted FTS5 string, so user text never parses as syntax.
    words = [w.replace('"', '""') for w in query.split()]
    return " ".join(f'"{w}"' for w in words if w)


class SQLiteSink(Sink):
    """The durable memory store: one SQLite file, separate from the journal.

    Stores each operation once (a redelivered id is ignored), one transaction per
    batch. Usable on its own for reading.

    ``durability``: ``"full"`` commits each delivery with an fsync (it survives
    power loss once ``deliver`` returns); ``"normal"`` commits without one and
    ``sync()`` makes the deliveries durable. None (the default) follows the
    collector's ``journal.durability`` once bound (``normal`` until then). Either
    way a collector never loses an acknowledged memory to a power cut: it awaits
    ``sync()`` before the journal's acknowledgement becomes durable.

    Example:
        >>> async with SQLiteSink("memories.db") as store:
        ...     print(await store.count("bug"))
    """

    def __init__(self, path: str | os.PathLike[str], *, durability: Literal["normal", "full"] | None = None) -> None:
        if durability not in (None, "normal", "full"):
            raise InvalidOperation("durability", f"must be 'normal', 'full' or None, not {durability!r}")
        self.path = Path(path)
        self._explicit = durability
        self.durability: Literal["normal", "full"] = durability or "normal"
        self._applied = ""  # the synchronous setting the connection has
        self._unsynced = False  # a commit since the last sync() was not fsynced
        self._db: aiosqlite.Connection | None = None
        self._closed = False
        self._lock = anyio.Lock()  # one transaction at a time on the shared connection
        self._pending: list[_Pending] = []  # batches waiting for the next transaction

    def __repr__(self) -> str:
        return f"<SQLiteSink {str(self.path)!r}>"

    def check_path(self) -> None:
        """Raise JournalError naming the store when its directory does not exist.

        A collector whose sink this is calls it at start. Inside a FallbackSink a
        missing store is an outage the fallback covers, so nothing calls it there.

        Example:
            >>> SQLiteSink("/no/such/dir/memories.db").check_path()
            Traceback (most recent call last):
            JournalError: cannot open memory store /no/such/dir/memories.db: ...
        """
        if str(self.path) != ":memory:" and not self.path.parent.is_dir():
            raise JournalError(
                f"cannot open memory store {self.path}: the directory {self.path.parent} does not exist"
            )

    async def _conn(self) -> aiosqlite.Connection:
        if self._closed:
            raise SinkUnavailable(f"SQLiteSink {self.path} is closed")
        if self._db is None:
            async with self._lock:
                if self._db is None:
                    self._db = await self._open()
        return self._db

    async def _open(self) -> aiosqlite.Connection:
        try:
            import aiosqlite  # here, not at import: `import memwal` stays light

            db = await aiosqlite.connect(self.path, timeout=5.0, isolation_level=None)
            try:
                await self._setup(db)
            except BaseException:
                await db.close()
                raise
        except sqlite3.OperationalError as exc:
            raise SinkUnavailable(f"cannot open memory store {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"not a memwal memory store ({exc})", path=str(self.path)) from exc
        return db

    def bind(self, config: Config, clock: Any) -> None:
        """Follow the journal's durability, unless the constructor was told one."""
        if self._explicit is None:
            self.durability = config.journal.durability

    async def _apply_durability(self, db: aiosqlite.Connection) -> None:
        # Called holding the lock, before a write: bind() may come after the connection.
        want = "FULL" if self.durability == "full" else "NORMAL"
        if self._applied != want:
            await db.execute(f"PRAGMA synchronous={want}")
            self._applied = want

    async def _setup(self, db: aiosqlite.Connection) -> None:
        await db.execute("PRAGMA journal_mode=WAL")
        self._applied = ""  # a new connection starts at SQLite's default
        await self._apply_durability(db)
        (version,) = await (await db.execute("PRAGMA user_version")).fetchone()  # type: ignore[misc]
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"memory store schema version {version} is newer than this memwal reads ({SCHEMA_VERSION})",
                path=str(self.path),
            )
        await db.execute("BEGIN IMMEDIATE")
        for stmt in _DDL:
            await db.execute(stmt)
        await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        await db.execute("COMMIT")

    async def __aenter__(self) -> Self:
        await self._conn()
        return self

    async def deliver(self, ops: Sequence[MemoryOperation]) -> None:
        """Store ``ops`` (an id already stored is ignored) with their FTS5 entries.

        Group commit: batches delivered while a transaction is running wait for the
        lock and are then written together in the next one, each caller still told its
        own outcome. FTS5 flushes a segment per transaction, so a few larger
        transactions cost far less per memory than many small ones.
        """
        db = await self._conn()
        now = time.time()
        mine = _Pending([
            (op.id, op.category, op.content, op.metadata, op.priority.value, op.tags, op.project, op.created_at, now)
            for op in ops
        ])
        self._pending.append(mine)
        async with self._lock:
            if not mine.done:
                group, self._pending = self._pending, []
                try:
                    await self._write(db, [row for p in group for row in p.rows])
                except BaseException as exc:
                    error = exc if isinstance(exc, SinkUnavailable) else SinkUnavailable(
                        f"memory store {self.path}: the shared write was interrupted"
                    )
                    for p in group:
                        p.done, p.error = True, error
                    raise
                for p in group:
                    p.done = True
        if mine.error is not None:
            raise mine.error

    async def _write(self, db: aiosqlite.Connection, rows: list[tuple[Any, ...]]) -> None:
        # The whole batch is one JSON array bound to one statement: one encode and
        # one SQLite call instead of a Python round trip (and GIL hand-off) per row.
        # One statement in autocommit mode is one transaction, FTS5 trigger included.
        batch = _enc.encode(rows)
        nul: list[tuple[Any, ...]] = []
        if b"\\u0000" in batch:  # json_extract cuts text at a NUL: such rows go in as plain values
            nul = [_plain(r) for r in rows if "\x00" in r[2] or (r[6] is not None and "\x00" in r[6])]
            batch = _enc.encode([r for r in rows if "\x00" not in r[2] and (r[6] is None or "\x00" not in r[6])])
        try:
            await self._apply_durability(db)
            await db.execute(_INSERT_BATCH, (batch,))
            if nul:  # a second transaction: a retry after a failure between the two re-inserts nothing twice
                await db.executemany(_INSERT_ROW, nul)
        except sqlite3.Error as exc:
            # busy, locked, disk full, I/O: all may pass; the consumer retries.
            raise SinkUnavailable(f"memory store {self.path}: {exc}") from exc
        if self._applied != "FULL":
            self._unsynced = True

    async def sync(self) -> None:
        """Make every stored delivery durable: one fsynced commit, only if one was not.

        A commit with ``synchronous=FULL`` fsyncs the whole WAL, so the unsynced
        commits before it become durable too (SQLite's recovery replays every
        committed frame of a synced WAL). A no-op after ``full`` commits or when
        nothing was delivered since the last sync.
        """
        if not self._unsynced or self._db is None:
            return
        db = await self._conn()
        async with self._lock:
            if not self._unsynced:
                return  # a sync that held the lock before us covered our writes
            try:
                await db.execute("PRAGMA synchronous=FULL")
                self._applied = "FULL"
                # Rewriting the schema version is the smallest commit: one page.
                await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._unsynced = False
            except sqlite3.Error as exc:
                raise SinkUnavailable(f"memory store {self.path}: cannot sync: {exc}") from exc

    async def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        db = await self._conn()
        try:
            return list(await db.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise SinkUnavailable(f"memory store {self.path}: {exc}") from exc

    async def get(self, op_id: str) -> Memory | None:
        rows = await self._query(f"SELECT {_COLUMNS} FROM memories WHERE id = ?", (op_id,))
        return _row(rows[0]) if rows else None

    async def count(self, category: str | None = None) -> int:
        """How many memories are stored (of one category)."""
        if category is None:
            rows = await self._query("SELECT count(*) FROM memories")
        else:
            rows = await self._query("SELECT count(*) FROM memories WHERE category = ?", (category,))
        return int(rows[0][0])

    async def recent(self, category: str | None = None, *, limit: int = 100) -> list[Memory]:
        if category is None:
            sql, params = f"SELECT {_COLUMNS} FROM memories ORDER BY created_at DESC LIMIT ?", (limit,)
        else:
            sql = f"SELECT {_COLUMNS} FROM memories WHERE category = ? ORDER BY created_at DESC LIMIT ?"
            params = (category, limit)  # type: ignore[assignment]
        return [_row(r) for r in await self._query(sql, params)]

    async def search(
        self,
        query: str,
        *,
        category: str | None = None,
        tags: Sequence[str] | None = None,
        project: str | None = None,
        limit: int = 10,
    ) -> list[Memory]:
        """Full-text search ranked by bm25, filtered by category, tags and project."""
        match = _fts_query(query)
        if not match:
            return []
        where, params = ["memories_fts MATCH ?"], [match]
        if category is not None:
            where.append("m.category = ?")
            params.append(category)
        if project is not None:
            where.append("m.project = ?")
            params.append(project)
        for tag in tags or ():
            where.append("EXISTS (SELECT 1 FROM json_each(m.tags) WHERE value = ?)")
            params.append(tag)
        sql = (
            f"SELECT {', '.join('m.' + c.strip() for c in _COLUMNS.split(','))} FROM memories_fts"
            f" JOIN memories m ON m.rowid = memories_fts.rowid WHERE {' AND '.join(where)}"
            " ORDER BY bm25(memories_fts) LIMIT ?"
        )
        return [_row(r) for r in await self._query(sql, [*params, limit])]

    async def aclose(self) -> None:
        self._closed = True
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()
