"""The library behind memwal-replay: open, inspect, export, import and requeue.

One function per subcommand; each returns a frozen report that the CLI prints. Every
write is a short transaction through ``Journal._write`` and every read one statement
through ``Journal._read``, so the tool is safe beside a running collector. Repair and
compaction live in ``_repair``, redelivery in ``_redrive``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import msgspec

from .._core.config import JournalConfig
from .._core.errors import InvalidOperation, JournalError
from .._core.records import ANY_CATEGORY, PRIORITY_BY_RANK, MemoryOperation, encode_op, id_to_seq, validate
from .._journal.heartbeat import CollectorSeen, collectors
from .._journal.journal import Journal, owner_is_gone
from .._journal.rows import check_row
from .._journal.schema import APPLICATION_ID, INSERT_OP, RANK_SHIFT, SCHEMA_VERSION, SEQ_MASK

__all__ = [
    "STATES",
    "UNDELIVERED",
    "ImportProgress",
    "ImportReport",
    "OpRow",
    "StatusReport",
    "count_ops",
    "export_ops",
    "import_ops",
    "list_ops",
    "open_journal",
    "requeue",
    "show_op",
    "status",
]

log = logging.getLogger("memwal")

# state name -> (table, extra WHERE, columns as one uniform row). Columns:
# k, id, category, created_at, crc, payload, attempts, last_error, reason,
# lease_owner, lease_until, not_before, at (dead/delivered/held time), holder.
_BASE = "k, id, category, created_at, crc, payload"
STATES: dict[str, tuple[str, str, str]] = {
    "pending": (
        "ops",
        "state = 0",
        f"{_BASE}, attempts, last_error, NULL, lease_owner, lease_until, not_before, NULL, NULL",
    ),
    "leased": (
        "ops",
        "state = 1",
        f"{_BASE}, attempts, last_error, NULL, lease_owner, lease_until, not_before, NULL, NULL",
    ),
    "dead": ("dead", "1", f"{_BASE}, attempts, NULL, reason, NULL, NULL, NULL, dead_at, NULL"),
    "delivered": ("done", "1", f"{_BASE}, NULL, NULL, NULL, NULL, NULL, NULL, delivered_at, NULL"),
    "held": (
        "held",
        "1",
        f"{_BASE}, attempts, last_error, NULL, lease_owner, lease_until, not_before, held_at, holder",
    ),
}
UNDELIVERED = ("pending", "leased", "dead", "held")
PAGE = 500  # rows per read or write transaction: short enough to never stall a collector


# -- opening -----------------------------------------------------------------------


def open_journal(
    path: str | os.PathLike[str], *, busy_timeout: float = 5.0, retention: float = 0.0, create: bool = False
) -> Journal:
    """Open an existing journal for the tool; JournalError names the file otherwise.

    Unlike ``Journal.open`` it never creates a file (unless ``create``) and checks the
    file is a memwal journal before anything writes to it.

    Example:
        >>> j = open_journal("agent.journal", busy_timeout=1.0)
    """
    p = Path(path)
    if not p.exists():
        if not create:
            raise JournalError("no such journal file", path=str(p))
    elif not p.is_file():
        raise JournalError("not a journal file (it is a directory or device)", path=str(p))
    else:
        _precheck(p, busy_timeout)
    journal = Journal(p, JournalConfig(busy_timeout=busy_timeout, retention_seconds=retention))
    try:
        journal.open()
    except JournalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise JournalError(
                f"journal is locked by another process past the busy timeout ({busy_timeout:g}s)", path=str(p)
            ) from exc
        raise
    return journal


def _precheck(p: Path, busy_timeout: float) -> None:
    # Read the identity with a plain connection first: Journal.open would switch a
    # foreign database to WAL mode, or turn an empty file into a journal.
    try:
        conn = sqlite3.connect(p, timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open: {exc}", path=str(p)) from exc
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise JournalError(
                f"journal is locked by another process past the busy timeout ({busy_timeout:g}s)", path=str(p)
            ) from exc
        raise JournalError(f"cannot open: {exc}", path=str(p)) from exc
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"not a memwal journal ({exc})", path=str(p)) from exc
    finally:
        conn.close()
    if app_id != APPLICATION_ID:
        raise JournalError("not a memwal journal (no memwal application_id)", path=str(p))
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"schema version {version} is newer than this memwal reads ({SCHEMA_VERSION}); upgrade memwal",
            path=str(p),
        )


def _keys(op_id: str) -> list[int]:
    """The four keys an id can have (one per priority); InvalidOperation if it is not an id."""
    try:
        seq = id_to_seq(op_id)
    except ValueError as exc:
        raise InvalidOperation("id", str(exc)) from None
    return [(rank << RANK_SHIFT) | seq for rank in range(4)]


def _priority(k: int) -> str:
    return PRIORITY_BY_RANK[k >> RANK_SHIFT].value


# -- status ------------------------------------------------------------------------


class StatusReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a journal holds. ``recoverable``: leased rows whose lease is expired or
    whose owner process is gone; ``live_leases``: rows a running collector has leased;
    ``collectors``: the heartbeat of every collector seen recently, alive or not."""

    journal: str
    schema_version: int
    pending: int
    leased: int
    recoverable: int
    live_leases: int
    consumer_running: bool  # a collector's heartbeat is fresh, or a live process holds leases
    collectors: list[CollectorSeen]
    dead: int
    delivered: int
    held: int
    undelivered: int
    oldest_pending_age_seconds: float | None
    categories: dict[str, dict[str, int]]
    priorities: dict[str, dict[str, int]]
    dead_by_reason: dict[str, int]
    journal_bytes: int
    wal_bytes: int


_COUNT_SQL = " UNION ALL ".join(
    f"SELECT '{name}', category, k >> {RANK_SHIFT}, count(*) FROM {table} WHERE {where} GROUP BY 2, 3"
    for name, (table, where, _) in STATES.items()
)


def status(journal: Journal) -> StatusReport:
    """Count the journal's rows by state, category and priority; nothing is written.

    Example:
        >>> status(open_journal("agent.journal")).pending
        12
    """
    now = journal.clock()
    totals = dict.fromkeys(STATES, 0)
    cats: dict[str, dict[str, int]] = {}
    prios: dict[str, dict[str, int]] = {p.value: dict.fromkeys(STATES, 0) for p in PRIORITY_BY_RANK}
    for state, cat, rank, n in journal.read(_COUNT_SQL):  # one statement: one snapshot
        totals[state] += n
        cats.setdefault(cat, dict.fromkeys(STATES, 0))[state] += n
        prios[PRIORITY_BY_RANK[rank].value][state] += n
    live = recoverable = 0
    running = False
    for table, owner, fresh, n in journal.read(
        "SELECT 'ops', lease_owner, sum(lease_until >= ?), count(*) FROM ops WHERE state = 1 GROUP BY 2"
        " UNION ALL SELECT 'held', lease_owner, sum(lease_until >= ?), count(*) FROM held"
        " WHERE lease_owner IS NOT NULL GROUP BY 2",
        (now, now),
    ):
        alive = owner is not None and not owner_is_gone(owner)
        running = running or (alive and fresh > 0)
        if table == "ops":
            live += fresh if alive else 0
            recoverable += n - (fresh if alive else 0)
    seen = collectors(journal)
    running = running or any(c.alive for c in seen)
    oldest = journal.oldest_pending()
    reasons = dict(journal.read("SELECT reason, count(*) FROM dead GROUP BY reason ORDER BY 2 DESC, 1"))
    version = journal.read("PRAGMA user_version")[0][0]
    return StatusReport(
        journal=str(journal.path),
        schema_version=int(version),
        pending=totals["pending"],
        leased=totals["leased"],
        recoverable=recoverable,
        live_leases=live,
        consumer_running=running,
        collectors=seen,
        dead=totals["dead"],
        delivered=totals["delivered"],
        held=totals["held"],
        undelivered=totals["pending"] + totals["leased"],
        oldest_pending_age_seconds=None if oldest is None else max(0.0, now - oldest),
        categories=dict(sorted(cats.items())),
        priorities=prios,
        dead_by_reason=reasons,
        journal_bytes=file_size(journal.path),
        wal_bytes=file_size(Path(f"{journal.path}-wal")),
    )


def file_size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


# -- list, show, export ------------------------------------------------------------


class OpRow(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One journal row: the operation (None when its payload is damaged) and its state."""

    state: str
    id: str
    category: str
    priority: str
    created_at: float
    op: MemoryOperation | None
    damage: str | None = None
    attempts: int | None = None
    last_error: str | None = None
    reason: str | None = None
    lease_owner: str | None = None
    lease_until: float | None = None
    not_before: float | None = None
    at: float | None = None
    holder: str | None = None


def _row(state: str, r: Sequence[Any]) -> OpRow:
    k, op_id, category, created_at, crc, payload = r[:6]
    op, damage = check_row(payload, crc)
    return OpRow(
        state=state,
        id=op_id,
        category=category,
        priority=_priority(k),
        created_at=created_at,
        op=op,
        damage=damage or None,
        attempts=r[6],
        last_error=r[7],
        reason=r[8],
        lease_owner=r[9],
        lease_until=r[10],
        not_before=r[11],
        at=r[12],
        holder=r[13],
    )


def _iter_rows(
    journal: Journal, states: Sequence[str], category: str | None = None, page: int = PAGE
) -> Iterator[OpRow]:
    """Rows of ``states`` in key order, read a page per statement."""
    for state in states:
        table, where, cols = STATES[state]
        extra = " AND category = ?" if category is not None else ""
        after = -1
        while True:
            params: list[Any] = [after, *([category] if category is not None else []), page]
            rows = journal.read(
                f"SELECT {cols} FROM {table} WHERE {where} AND k > ?{extra} ORDER BY k LIMIT ?", params
            )
            for r in rows:
                yield _row(state, r)
            if len(rows) < page:
                break
            after = rows[-1][0]


def list_ops(
    journal: Journal, *, states: Sequence[str] = UNDELIVERED, category: str | None = None, limit: int = 100
) -> list[OpRow]:
    """Up to ``limit`` rows of ``states`` (of one category), each state in lease order.

    Example:
        >>> [r.id for r in list_ops(journal, states=["dead"], limit=5)]
    """
    out: list[OpRow] = []
    for row in _iter_rows(journal, states, category, page=min(limit, PAGE) or 1):
        if len(out) >= limit:
            break
        out.append(row)
    return out


def count_ops(journal: Journal, *, states: Sequence[str] = UNDELIVERED, category: str | None = None) -> int:
    """How many rows of ``states`` (of one category) there are: what ``list_ops`` would
    return without a limit. One statement, so one snapshot.

    Example:
        >>> count_ops(journal, states=["dead"])
        3
    """
    extra, params = (" AND category = ?", [category]) if category is not None else ("", [])
    sql = " UNION ALL ".join(
        f"SELECT count(*) FROM {STATES[s][0]} WHERE {STATES[s][1]}{extra}" for s in states
    )
    return sum(int(n) for (n,) in journal.read(sql, params * len(states))) if states else 0


def show_op(journal: Journal, op_id: str) -> OpRow | None:
    """The row holding operation ``op_id`` in any state, or None.

    Example:
        >>> show_op(journal, "0190a5c1-...").state
        'dead'
    """
    keys = _keys(op_id)
    for state, (table, where, cols) in STATES.items():
        rows = journal.read(
            f"SELECT {cols} FROM {table} WHERE {where} AND k IN (?, ?, ?, ?) AND id = ?", [*keys, op_id]
        )
        if rows:
            return _row(state, rows[0])
    return None


_json = msgspec.json.Encoder()


def export_ops(
    journal: Journal, out: IO[bytes], *, states: Sequence[str] = UNDELIVERED, category: str | None = None
) -> tuple[int, list[OpRow]]:
    """Write JSON Lines (the operation's fields plus ``state``, ``attempts``,
    ``last_error``, ``reason``); return (rows written, damaged rows not written).

    Example:
        >>> with open("backup.jsonl", "wb") as f:
        ...     written, damaged = export_ops(journal, f, states=["dead"])
    """
    written, damaged = 0, []
    for row in _iter_rows(journal, states, category):
        if row.op is None:
            log.error("export: operation %s (%s) not exported: %s", row.id, row.state, row.damage)
            damaged.append(row)
            continue
        obj = msgspec.to_builtins(row.op)
        obj.update(state=row.state, attempts=row.attempts, last_error=row.last_error, reason=row.reason)
        out.write(_json.encode(obj) + b"\n")
        written += 1
    return written, damaged


# -- import ------------------------------------------------------------------------


class ImportReport(msgspec.Struct, frozen=True, kw_only=True):
    """``errors`` holds ``(line number, message)`` for lines that wrote nothing."""

    imported: int
    skipped: list[str]  # ids already in the journal
    errors: list[tuple[int, str]]


class ImportProgress(msgspec.Struct, frozen=True, kw_only=True):
    """Counts so far; ``read_bytes`` of the input (``total_bytes`` when known)."""

    read_bytes: int
    total_bytes: int | None
    imported: int
    skipped: int
    errors: int


_line_decoder = msgspec.json.Decoder(dict[str, Any])
# Every table's rows under an id's four keys (one per priority): present, or a key clash.
# (json_each drives: one primary-key probe per key, no temporary index of the keys.)
_PRESENT = " UNION ALL ".join(
    f"SELECT t.k, t.id FROM json_each(?1) AS j CROSS JOIN {t} AS t ON t.k = j.value"
    for t in ("ops", "dead", "done", "held")
)


def import_ops(
    journal: Journal,
    lines: IO[bytes],
    *,
    max_content_bytes: int = 1 << 20,
    total_bytes: int | None = None,
    progress: Callable[[ImportProgress], None] | None = None,
) -> ImportReport:
    """Append each JSON line's operation as pending, keeping its id.

    An id already in the journal (in any state) is skipped; a bad line is reported
    with its number and writes nothing. Lines are written ``PAGE`` to a
    transaction (an interrupted import keeps whole pages; importing again skips
    them); ``progress`` is called after each page.

    Example:
        >>> with open("backup.jsonl", "rb") as f:
        ...     import_ops(journal, f).imported
    """
    imported, skipped, errors = 0, [], []
    page: list[tuple[int, str, int, tuple[Any, ...]]] = []
    read = 0

    def flush() -> None:
        nonlocal imported
        done, present, clashes = journal.transaction(functools.partial(_insert_page, page))
        imported += done
        skipped.extend(present)
        errors.extend(clashes)
        page.clear()
        if progress is not None:
            progress(ImportProgress(read_bytes=read, total_bytes=total_bytes, imported=imported,
                                    skipped=len(skipped), errors=len(errors)))

    for n, line in enumerate(lines, 1):
        read += len(line)
        if not line.strip():
            continue
        try:
            page.append((n, *_parse_line(line, max_content_bytes)))
        except InvalidOperation as exc:
            errors.append((n, str(exc)))
            continue
        if len(page) >= PAGE:
            flush()
    flush()
    journal.refresh_depth()
    errors.sort()
    return ImportReport(imported=imported, skipped=skipped, errors=errors)


def _insert_page(
    page: Sequence[tuple[int, str, int, tuple[Any, ...]]], c: sqlite3.Connection
) -> tuple[int, list[str], list[tuple[int, str]]]:
    """Insert a page of parsed lines in the caller's transaction: (inserted, present ids, clashes)."""
    keys = json.dumps([(rank << RANK_SHIFT) | seq for _, _, seq, _ in page for rank in range(4)])
    # The ids already under any of the page's keys, in any table: one statement per table.
    taken: dict[int, set[str]] = {}
    for k, op_id in c.execute(_PRESENT, (keys,)):
        taken.setdefault(k & SEQ_MASK, set()).add(op_id)
    rows, present, clashes = [], [], []
    for n, op_id, seq, (category, content, metadata, priority, tags, project) in page:
        ids = taken.setdefault(seq, set())
        if op_id in ids:
            present.append(op_id)
            continue
        if ids:  # another id under one of this id's keys: same microsecond and random bits
            clashes.append((n, f"id: {op_id} has the journal key of another operation"))
            continue
        created_at = (seq >> 8) / 1e6
        payload = encode_op(
            MemoryOperation(
                id=op_id, category=category, content=content, metadata=metadata, priority=priority,
                tags=tags, project=project, created_at=created_at,
            )
        )
        rows.append(((priority.rank << RANK_SHIFT) | seq, op_id, category, created_at, zlib.crc32(payload), payload))
        ids.add(op_id)
    # No key clashes inside the page (taken says so) and none from outside (the caller's
    # BEGIN IMMEDIATE holds the write lock): one statement for the page.
    c.executemany(INSERT_OP, rows)
    return len(rows), present, clashes


def _parse_line(line: bytes, max_content_bytes: int) -> tuple[str, int, tuple[Any, ...]]:
    """(id, its sequence number, validated fields) of one exported line; InvalidOperation names the field."""
    try:
        obj = _line_decoder.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidOperation("line", f"not a JSON object: {exc}") from None
    op_id = obj.get("id")
    if not isinstance(op_id, str):
        raise InvalidOperation("id", f"must be a memwal operation id, got {op_id!r}")
    try:
        seq = id_to_seq(op_id)
    except ValueError as exc:
        raise InvalidOperation("id", str(exc)) from None
    if "category" not in obj or "content" not in obj:
        raise InvalidOperation("category" if "category" not in obj else "content", "is missing")
    fields = validate(
        obj["category"],
        obj["content"],
        obj.get("metadata"),
        obj.get("priority"),
        obj.get("tags"),
        obj.get("project"),
        max_content_bytes=max_content_bytes,
        categories=ANY_CATEGORY,  # an exported row was accepted once; a typo check here would strand it
    )
    return op_id, seq, fields


# -- requeue -----------------------------------------------------------------------


def requeue(
    journal: Journal, *, category: str | None = None, ids: Sequence[str] = (), reason: str | None = None
) -> tuple[list[str], list[str]]:
    """Move matching dead rows back to pending with attempts reset.

    Returns (requeued ids, ids given that are not dead letters). Works in pages of
    short transactions.

    Example:
        >>> requeue(journal, reason="503")[0]
        ['0190a5c1-...']
    """
    where: list[str] = ["1"]
    params: list[Any] = []
    if category is not None:
        where.append("category = ?")
        params.append(category)
    if reason is not None:
        where.append("instr(reason, ?) > 0")
        params.append(reason)
    if ids:
        keys = [k for i in ids for k in _keys(i)]
        where.append(f"k IN ({', '.join('?' * len(keys))}) AND id IN ({', '.join('?' * len(ids))})")
        params += [*keys, *ids]
    select = f"SELECT k, id FROM dead WHERE {' AND '.join(where)} ORDER BY k LIMIT {PAGE}"

    def txn(c: sqlite3.Connection) -> list[str]:
        rows = c.execute(select, params).fetchall()
        c.executemany(
            "INSERT OR IGNORE INTO ops (k, id, category, created_at, crc, payload)"
            " SELECT k, id, category, created_at, crc, payload FROM dead WHERE k = ?",
            [(k,) for k, _ in rows],
        )
        c.executemany("DELETE FROM dead WHERE k = ?", [(k,) for k, _ in rows])
        return [str(i) for _, i in rows]

    done: list[str] = []
    while batch := journal.transaction(txn):
        done += batch
        journal.refresh_depth()
    for op_id in done:
        log.info("operation %s requeued from dead letters", op_id)
    return done, [i for i in ids if i not in set(done)]
