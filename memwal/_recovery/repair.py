"""memwal-replay's repairs: verify every row (quarantining damaged ones) and compact the file."""

from __future__ import annotations

import functools
import logging
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from .._core.errors import JournalError
from .._core.records import id_to_seq
from .._journal.journal import Journal
from .._journal.rows import check_row, readable, row_damage, sanitize_rows
from .._journal.schema import APPLICATION_ID, MIGRATIONS, RANK_SHIFT, SCHEMA_VERSION, SEQ_MASK
from .inspect import PAGE, STATES, file_size

__all__ = ["CompactReport", "Problem", "SalvageReport", "VerifyReport", "compact", "salvage", "verify"]

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
        for r in journal.read("PRAGMA integrity_check")
        if r[0] != "ok"
    ]
    app_id = journal.read("PRAGMA application_id")[0][0]
    version = journal.read("PRAGMA user_version")[0][0]
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
        for k, op_id, crc, payload, reason, attempts in _scan(journal, table, where):
            checked += 1
            detail = _damage(k, op_id, crc, payload, attempts)
            if not detail:
                continue
            if state == "dead" and (detail in (reason or "") or _quarantined(reason)):
                quarantined += 1
                continue
            bad.append((state, k, readable(op_id), detail))
    fixed = _repair(journal, bad) if repair and bad else set()
    problems += [Problem(where=s, id=i, detail=d, repaired=k in fixed) for s, k, i, d in bad]
    return VerifyReport(checked=checked, problems=problems, quarantined=quarantined)


# Reasons a row was dead-lettered for damage (by a consumer's checks or by --repair):
# such a row stays damaged (its repair may even change how, a TEXT payload becoming a
# BLOB that fails its checksum), so it counts as quarantined, not as a new problem.
_DAMAGE_REASONS = ("damaged: ", "checksum ", "undecodable payload", "payload stored as ", "id column ",
                   "attempts stored as ")


def _quarantined(reason: Any) -> bool:
    return isinstance(reason, str) and reason.startswith(_DAMAGE_REASONS)


def _scan(journal: Journal, table: str, where: str) -> Iterator[tuple[Any, ...]]:
    reason = "reason" if table == "dead" else "NULL"
    attempts = "0" if table == "done" else "attempts"
    after = -1
    while rows := journal.read(
        f"SELECT k, id, crc, payload, {reason}, {attempts} FROM {table} WHERE {where} AND k > ? ORDER BY k LIMIT ?",
        (after, PAGE),
    ):
        yield from rows
        after = rows[-1][0]


def _damage(k: int, op_id: Any, crc: Any, payload: Any, attempts: Any) -> str:
    op, detail = check_row(payload, crc)
    if op is None:
        return detail
    if detail := row_damage(op, op_id, attempts):
        return detail
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
            sanitize_rows(c, table, [k])  # the dead letter must read back as text
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
    for i in range(0, len(bad), PAGE):
        part = bad[i : i + PAGE]
        fixed |= journal.transaction(functools.partial(txn, part=part))
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
    before = file_size(journal.path) + file_size(wal)
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
        bytes_after=file_size(journal.path) + file_size(wal),
        checkpoint_complete=not busy,
    )


# -- salvage -----------------------------------------------------------------------


class SalvageReport(msgspec.Struct, frozen=True, kw_only=True):
    """``saved`` rows copied; ``lost`` an estimate of the rows on unreadable pages
    (from the density of the keys around each gap); ``gaps`` the key ranges skipped."""

    saved: int
    lost: int
    gaps: list[tuple[str, int, int]]  # (table, first unreadable key bound, next readable key)
    errors: list[str]


_COLUMNS = {
    "ops": "k, state, attempts, not_before, lease_owner, lease_until, last_error, id, category, created_at, crc, payload",
    "dead": "k, attempts, reason, dead_at, id, category, created_at, crc, payload",
    "done": "k, delivered_at, id, category, created_at, crc, payload",
    "held": "k, holder, held_at, attempts, not_before, lease_owner, lease_until, last_error,"
    " id, category, created_at, crc, payload",
}
_MAX_KEY = (1 << 63) - 1


def salvage(source: str | Path, out: str | Path) -> SalvageReport:
    """Copy every row that can still be read from a damaged journal into a new one.

    Each table is read along its primary key in chunks; where a read fails (a page
    SQLite cannot parse), the smallest key from which reading works again is found by
    bisection, so only the rows on unreadable pages are lost. Leased rows are copied
    as pending (their leases belonged to the damaged file's consumers).

    Example:
        >>> salvage("agent.journal", "saved.journal").saved
        1990
    """
    out = Path(out)
    if out.exists():
        raise JournalError("the salvage target exists; name a new file", path=str(out))
    scratch = out.with_name(f".{out.name}.salvage-source")
    src = _open_source(Path(source), scratch)
    target = Journal(out)
    try:
        target.open()
        saved = lost = 0
        gaps: list[tuple[str, int, int]] = []
        errors: list[str] = []
        for table, cols in _COLUMNS.items():
            s, g, e = _copy_table(src, target, table, cols)
            saved += s
            gaps += [(table, lo, hi) for lo, hi, _ in g]
            lost += sum(n for _, _, n in g)
            errors += e
        return SalvageReport(saved=saved, lost=lost, gaps=gaps, errors=errors)
    finally:
        src.close()
        target.close()
        for leftover in (scratch, Path(f"{scratch}-wal"), Path(f"{scratch}-shm")):
            leftover.unlink(missing_ok=True)


def _open_source(path: Path, scratch: Path) -> sqlite3.Connection:
    """A connection to a copy of ``path`` (and its WAL) whose table definitions are
    rewritten from memwal's own DDL, so a damaged schema text does not hide the rows."""
    if not path.is_file():
        raise JournalError("no such journal file", path=str(path))
    try:
        shutil.copyfile(path, scratch)
        wal = Path(f"{path}-wal")
        if wal.exists():
            shutil.copyfile(wal, f"{scratch}-wal")
        src = sqlite3.connect(scratch, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise JournalError(f"cannot open for salvage: {exc}", path=str(path)) from exc
    try:
        src.execute("PRAGMA writable_schema=ON")
        for stmt in MIGRATIONS[1]:
            if stmt.startswith("CREATE TABLE"):
                name = stmt.split()[2]
                src.execute("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?", (stmt, name))
        src.execute("PRAGMA writable_schema=OFF")
    except sqlite3.Error as exc:
        log.warning("salvage: cannot rewrite the schema of the copy (%s); reading it as it is", exc)
    src.close()
    src = sqlite3.connect(scratch, isolation_level=None)
    src.text_factory = bytes  # a value that is not UTF-8 is copied as it is, for verify to judge
    return src


def _read_from(src: sqlite3.Connection, table: str, cols: str, after: int, n: int) -> list[Any]:
    return src.execute(f"SELECT {cols} FROM {table} WHERE k > ? ORDER BY k LIMIT ?", (after, n)).fetchall()


def _copy_table(
    src: sqlite3.Connection, target: Journal, table: str, cols: str
) -> tuple[int, list[tuple[int, int, int]], list[str]]:
    saved, after, n = 0, -1, PAGE
    gaps: list[tuple[int, int, int]] = []
    errors: list[str] = []
    recent: list[int] = []  # the last keys saved, for the key density around a gap
    gap: tuple[int, int] | None = None  # a gap waiting for the keys after it
    while after < _MAX_KEY:
        try:
            rows = _read_from(src, table, cols, after, n)
        except sqlite3.DatabaseError as exc:
            if after == -1 and "no such table" in str(exc):
                errors.append(f"{table}: {exc}")
                break
            if n > 1:  # a bad page lies within the next n rows: read up to it
                n //= 2
                continue
            nxt = _next_readable(src, table, cols, after)
            if nxt is None:
                errors.append(f"{table}: nothing readable after key {after}: {exc}")
                gaps.append((after, _MAX_KEY, _estimate(recent, [], after, after)))
                break
            gap, after, n = (after, nxt), nxt - 1, PAGE
            continue
        if gap is not None:
            gaps.append((*gap, _estimate(recent, rows, *gap)))
            gap = None
        if not rows:
            break
        _insert(target, table, cols, rows)
        saved += len(rows)
        after, n = int(rows[-1][0]), PAGE
        recent = [*recent, *(int(r[0]) for r in rows[-100:])][-100:]
    if gap is not None:
        gaps.append((*gap, _estimate(recent, [], *gap)))
    return saved, gaps, errors


def _next_readable(src: sqlite3.Connection, table: str, cols: str, after: int) -> int | None:
    """The smallest x > after such that reading from key x - 1 on works (bisection)."""

    def ok(x: int) -> bool:
        try:
            _read_from(src, table, cols, x - 1, 1)
            return True
        except sqlite3.DatabaseError:
            return False

    lo, hi = after + 1, _MAX_KEY
    if not ok(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _estimate(before: list[int], after_rows: list[Any], lo: int, hi: int) -> int:
    """Rows likely lost in the key gap (lo, hi): its width times the key density beside it."""
    keys = before + [int(r[0]) for r in after_rows[:100]]
    if hi <= lo:
        return 0
    if len(keys) < 2 or keys[-1] == keys[0]:
        return 1
    density = (len(keys) - 1) / (keys[-1] - keys[0])
    # At least one page of rows like its neighbours (a lost leaf): key density alone
    # undercounts when appends around the gap came at a different pace.
    sizes = [len(r[-1]) for r in after_rows[:100] if isinstance(r[-1], bytes)]
    per_page = _PAGE_BYTES // (sum(sizes) // len(sizes) + _CELL_OVERHEAD) if sizes else 1
    return max(1, per_page, round((hi - lo) * density))


_PAGE_BYTES = 4096  # SQLite's default page size, which memwal journals use
_CELL_OVERHEAD = 140  # a row's columns besides the payload, with cell and page headers, measured


def _insert(target: Journal, table: str, cols: str, rows: list[Any]) -> None:
    names = [c.strip() for c in cols.split(",")]
    values = [tuple(_text(v) if n in ("id", "category", "reason", "last_error", "lease_owner", "holder") else v
                    for n, v in zip(names, r, strict=True)) for r in rows]
    if table == "ops":  # leases of the damaged file's consumers mean nothing here
        values = [(*v[:1], 0, *v[2:4], None, None, *v[6:]) for v in values]
    sql = f"INSERT OR IGNORE INTO {table} ({cols}) VALUES ({', '.join('?' * len(names))})"
    target.transaction(lambda c: c.executemany(sql, values))


def _text(value: Any) -> Any:
    """Text read as bytes: back to str, keeping bytes that are not UTF-8 (verify will see them)."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("utf-8", "backslashreplace")
