"""The consumer's side: find ready rows, claim them, settle each batch's outcome (ack, retry, dead-letter, hold, release) and recover leases of processes that are gone."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from .._core.errors import JournalError
from .base import JournalBase
from .rows import (
    CHUNK,
    LEASE_SELECT_ALL,
    SELECT_NOW_STEPS,
    UPDATE_FROM,
    LeasedOp,
    Settlement,
    decode_rows,
    fetch_all,
    log,
    move_dead,
    owner_is_gone,
    sanitize_rows,
)
from .schema import (
    ACK_OPS,
    CLAIMED,
    LEASE_CLAIM_HELD,
    LEASE_CLAIM_OPS,
    LEASE_HELD,
    LEASE_SELECT,
    RELEASE_OPS,
    RETRY_OPS,
)


class Leases(JournalBase):
    """The consumer's side: find ready rows, claim them, settle each batch's outcome (ack, retry, dead-letter, hold, release) and recover leases of processes that are gone."""

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
            move_dead(c, [(k, r) for k, _, r in bad], now, table="ops", add_attempt=0)

        self.transaction(txn)

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
        if s.dead or s.held or (s.acked and self.config.retention_seconds > 0) or (s.retry and not UPDATE_FROM):
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
            self.transaction(lambda c: c.executemany("DELETE FROM held WHERE k = ?", [(k,) for k, _, _ in bad]))
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
                move_dead(c, s.dead, now, table="ops", add_attempt=1)
            if s.held:
                c.executemany(
                    "INSERT OR IGNORE INTO held (k, holder, held_at, id, category, created_at, crc, payload)"
                    " SELECT k, ?, ?, id, category, created_at, crc, payload FROM ops WHERE k = ?",
                    [(holder, now, k) for k, holder in s.held],
                )
                c.executemany("DELETE FROM ops WHERE k = ?", [(k,) for k, _ in s.held])

        removed = [*s.acked, *(k for k, _ in s.dead), *(k for k, _ in s.held)]
        self.transaction(txn)
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

        self.transaction(txn)

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

        n: int = self.transaction(txn)
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
            return int(self.transaction(txn))
        except JournalError as exc:
            log.warning("cannot release leases at shutdown (%s); they return to pending when they expire", exc)
            return 0
