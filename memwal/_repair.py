"""memwal-replay's repairs: verify every row (quarantining damaged ones) and compact the file."""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from ._errors import JournalError
from ._journal import Journal, _check_row
from ._records import id_to_seq
from ._recovery import _PAGE, STATES, _size
from ._schema import APPLICATION_ID, RANK_SHIFT, SCHEMA_VERSION, SEQ_MASK

__all__ = ["CompactReport", "Problem", "VerifyReport", "compact", "verify"]

log = logging.getLogger("memwal")


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    where: str  # "integrity", "schema" or a state name
    id: str | None
    detail: str
    repaired: bool = False


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """``quarantined``: damaged rows already in dead with the damage as their reason."""

    checked: int
    problems: list[Problem]
    quarantined: int

    @property
    def ok(self) -> bool:
        return all(p.repaired for p in self.problems)


def verify(journal: Journal, *, repair: bool = False) -> VerifyReport:
    """SQLite's integrity check, the schema identity, and every row's payload checked.

    With ``repair`` damaged rows move to dead with the damage as the reason (dead rows
    get that reason), so no consumer ever leases them again.

    Example:
        >>> verify(open_journal("agent.journal"), repair=True).ok
        True
    """
    problems = [
        Problem(where="integrity", id=None, detail=str(r[0]))
        for r in journal._read("PRAGMA integrity_check")
        if r[0] != "ok"
    ]
    app_id = journal._read("PRAGMA application_id")[0][0]
    version = journal._read("PRAGMA user_version")[0][0]
    if app_id != APPLICATION_ID or version != SCHEMA_VERSION:
        problems.append(
            Problem(
                where="schema",
                id=None,
                detail=f"application_id {app_id:#x}, schema version {version} (want {SCHEMA_VERSION})",
            )
        )
    checked = quarantined = 0
    bad: list[tuple[str, int, str, str]] = []  # state, key, id, detail
    for state, (table, where, _) in STATES.items():
        for k, op_id, crc, payload, reason in _scan(journal, table, where):
            checked += 1
            detail = _damage(k, op_id, crc, payload)
            if not detail:
                continue
            if state == "dead" and detail in (reason or ""):
                quarantined += 1
                continue
            bad.append((state, k, op_id, detail))
    fixed = _repair(journal, bad) if repair and bad else set()
    problems += [Problem(where=s, id=i, detail=d, repaired=k in fixed) for s, k, i, d in bad]
    return VerifyReport(checked=checked, problems=problems, quarantined=quarantined)


def _scan(journal: Journal, table: str, where: str) -> Iterator[tuple[Any, ...]]:
    reason = "reason" if table == "dead" else "NULL"
    after = -1
    while rows := journal._read(
        f"SELECT k, id, crc, payload, {reason} FROM {table} WHERE {where} AND k > ? ORDER BY k LIMIT ?",
        (after, _PAGE),
    ):
        yield from rows
        after = rows[-1][0]


def _damage(k: int, op_id: str, crc: int, payload: bytes) -> str:
    op, detail = _check_row(payload, crc)
    if op is None:
        return detail
    if op.id != op_id:
        return f"payload id {op.id} does not match the row's id"
    try:
        seq = id_to_seq(op.id)
    except ValueError:
        return f"payload id {op.id!r} is not a memwal id"
    if (k & SEQ_MASK) != seq or (k >> RANK_SHIFT) != op.priority.rank:
        return "row key does not match the operation's id and priority"
    return ""


_TO_DEAD = (
    "INSERT OR REPLACE INTO dead (k, attempts, reason, dead_at, id, category, created_at, crc, payload)"
    " SELECT k, {attempts}, ?, ?, id, category, created_at, crc, payload FROM {table} WHERE k = ?"
)


def _repair(journal: Journal, bad: list[tuple[str, int, str, str]]) -> set[int]:
    now = journal.clock()

    def txn(c: sqlite3.Connection, part: list[tuple[str, int, str, str]]) -> set[int]:
        for state, k, _, detail in part:
            table = STATES[state][0]
            if table == "dead":
                c.execute(
                    "UPDATE dead SET reason = ? || '; was: ' || reason WHERE k = ?", (f"damaged: {detail}", k)
                )
                continue
            attempts = "0" if table == "done" else "attempts"
            c.execute(
                _TO_DEAD.format(attempts=attempts, table=table), (f"damaged: {detail} (was {state})", now, k)
            )
            c.execute(f"DELETE FROM {table} WHERE k = ?", (k,))
        return {k for _, k, _, _ in part}

    fixed: set[int] = set()
    for i in range(0, len(bad), _PAGE):
        part = bad[i : i + _PAGE]
        removes = [k for state, k, _, _ in part if STATES[state][0] == "ops"]  # a flush counts them
        fixed |= journal._write(functools.partial(txn, part=part), removes=removes)
        for state, _, op_id, detail in part:
            log.error("verify: operation %s (%s) quarantined in dead letters: %s", op_id, state, detail)
    journal.refresh_depth()
    return fixed


# -- compact -----------------------------------------------------------------------


class CompactReport(msgspec.Struct, frozen=True, kw_only=True):
    """Bytes are the journal file plus its WAL, before and after."""

    purged: int
    bytes_before: int
    bytes_after: int
    checkpoint_complete: bool

    @property
    def reclaimed(self) -> int:
        return self.bytes_before - self.bytes_after


def compact(journal: Journal) -> CompactReport:
    """Delete delivered rows past the journal's retention, checkpoint, VACUUM.

    VACUUM holds the write lock while it copies the live rows, so collectors on the
    same journal wait (up to their busy timeout) for a moment proportional to its size.

    Example:
        >>> compact(open_journal("agent.journal", retention=3600)).reclaimed
        1835008
    """
    wal = Path(f"{journal.path}-wal")
    before = _size(journal.path) + _size(wal)
    purged = journal.purge_done()
    journal.checkpoint("TRUNCATE")
    try:
        conn = sqlite3.connect(journal.path, timeout=journal.config.busy_timeout, isolation_level=None)
        try:
            conn.execute("VACUUM")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise JournalError(f"cannot vacuum: {exc}", path=str(journal.path)) from exc
    busy, _, _ = journal.checkpoint("TRUNCATE")
    return CompactReport(
        purged=purged,
        bytes_before=before,
        bytes_after=_size(journal.path) + _size(wal),
        checkpoint_complete=not busy,
    )
