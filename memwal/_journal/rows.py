"""Journal rows and their codec: leased operations, settlements, counts, the checksum and decoding of stored payloads, lease owners, and the journal's tuning constants."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from .._core.errors import JournalError
from .._core.records import (
    MemoryOperation,
    Priority,
    decode_op,
)
from .schema import (
    LEASE_SELECT,
    RANK_SHIFT,
)

log = logging.getLogger("memwal")


# Rows per claim or ack statement (the write lock is held for one statement).
CHUNK = 128


# RETRY_OPS is an UPDATE ... FROM, which SQLite reads since 3.33; older ones retry in settle.
UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)


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


def owner() -> str:
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


_encoder = msgspec.json.Encoder()  # the same encoding as records.encode_op
encode = _encoder.encode
# Encodes into a caller's bytearray (resized to the message): the append path reuses one
# buffer under the writer lock instead of allocating a bytes object per operation;
# SQLite copies a bound BLOB, so the buffer is free again once the INSERT returns.
encode_into = _encoder.encode_into


RANK_KEY = {p: p.rank << RANK_SHIFT for p in Priority}


crc32 = zlib.crc32


def check_row(payload: Any, crc: Any) -> tuple[MemoryOperation | None, str]:
    """The row's operation, or None and why not. Never raises: any stored value is checked."""
    if type(payload) is not bytes or type(crc) is not int:
        if type(payload) is not bytes:
            return None, f"payload stored as {sql_type(payload)}, not BLOB"
        return None, f"checksum stored as {sql_type(crc)}, not INTEGER"
    if zlib.crc32(payload) != crc:
        return None, "checksum mismatch: the payload is damaged"
    try:
        return decode_op(payload), ""
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return None, f"undecodable payload: {exc}"


def sql_type(value: Any) -> str:
    return {str: "TEXT", int: "INTEGER", float: "REAL", bytes: "BLOB", type(None): "NULL"}.get(type(value), "?")


def readable(text: Any) -> str:
    """A stored id or category as printable text: bytes that were not UTF-8 as ``\\xNN``."""
    if isinstance(text, str):
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    return repr(text)


def row_damage(op: MemoryOperation, op_id: Any, attempts: Any) -> str:
    """What is wrong with a row whose payload decoded (its other columns), or ""."""
    if op.id != op_id:
        if isinstance(op_id, str) and not op_id.isascii() and readable(op_id) != op_id:
            return f"id column is not valid UTF-8 ({readable(op_id)!r}; the payload says {op.id})"
        return f"id column {readable(op_id)!r} does not match the payload's id {op.id}"
    if type(attempts) is not int:
        return f"attempts stored as {sql_type(attempts)}, not INTEGER"
    return ""


def decode_rows(rows: list[Any]) -> tuple[list[LeasedOp], list[tuple[int, str, str]]]:
    """Check and decode ``select_ready`` rows: (leasable ops, ``(key, id, reason)`` of damaged rows).

    A row is damaged when its checksum or payload is bad or a column holds the wrong
    type or an id other than its payload's (bytes that are not UTF-8, for one).
    """
    good: list[LeasedOp] = []
    bad: list[tuple[int, str, str]] = []
    for key, op_id, attempts, crc, payload in rows:
        op, reason = check_row(payload, crc)
        if op is not None and (op.id != op_id or type(attempts) is not int):
            reason = row_damage(op, op_id, attempts)
            op = None
        if op is None:
            bad.append((key, readable(op_id), reason))
        else:
            good.append(LeasedOp(key, op, attempts))
    return good, bad


def rollback(c: sqlite3.Connection) -> None:
    """Roll back if a transaction is open: SQLite ends one itself on some errors (a full
    disk), and a ROLLBACK then would hide the real error behind "no transaction is active"."""
    if c.in_transaction:
        try:
            c.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("rollback failed: %s", exc)


def is_full(exc: sqlite3.Error) -> bool:
    return "full" in str(exc)


def explain(exc: sqlite3.Error | OSError, path: Path) -> str:
    """SQLite's message, naming a full disk when that is the cause (creating the WAL
    index on a full disk reports only "disk I/O error")."""
    try:
        free = os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize
    except OSError:
        return str(exc)
    if "full" not in str(exc) and free < (64 << 10):
        return f"disk is full ({free} bytes free; SQLite: {exc})"
    return f"disk is full (SQLite: {exc})" if "full" in str(exc) else str(exc)


def is_damage(exc: sqlite3.Error) -> bool:
    return "malformed" in str(exc)


def damaged(exc: sqlite3.Error, path: Path) -> JournalError:
    """One line for a file SQLite cannot parse, with the way out."""
    return JournalError(
        f"the journal file is damaged (SQLite: {exc}); `memwal-replay verify --salvage NEW.journal"
        f" {path}` copies every row that can still be read into a new journal",
        path=str(path),
    )


def lenient(raw: bytes) -> str:
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
    c.text_factory = lenient
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


def move_dead(
    c: sqlite3.Connection, items: Sequence[tuple[int, str]], now: float, *, table: str, add_attempt: int
) -> None:
    c.executemany(
        "INSERT OR REPLACE INTO dead (k, attempts, reason, dead_at, id, category, created_at, crc, payload)"
        f" SELECT k, attempts + ?, ?, ?, id, category, created_at, crc, payload FROM {table} WHERE k = ?",
        [(add_attempt, reason, now, k) for k, reason in items],
    )
    c.executemany(f"DELETE FROM {table} WHERE k = ?", [(k,) for k, _ in items])


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

