"""The journal's SQL as data: pragmas, DDL, numbered migrations and SCHEMA_VERSION.

Layout: ``ops`` holds undelivered operations (pending and leased) keyed by
``k = priority rank << 60 | seq``, so the table's own B-tree is the lease order and an
append writes exactly one B-tree. Rows leave ``ops`` for ``dead`` (dead letters),
``done`` (delivered, kept for ``retention_seconds``) or ``held`` (delivered to a
fallback sink, waiting to be reconciled to the primary). ``collectors`` holds one
heartbeat row per running collector.
"""

from __future__ import annotations

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "STATE_LEASED", "STATE_PENDING"]

APPLICATION_ID = 0x4D57414C  # "MWAL"
SCHEMA_VERSION = 2

# ops.state values; dead, delivered and held rows live in their own tables.
STATE_PENDING = 0
STATE_LEASED = 1

RANK_SHIFT = 60
SEQ_MASK = (1 << RANK_SHIFT) - 1

_COMMON = """
    id TEXT NOT NULL,
    category TEXT NOT NULL,
    created_at REAL NOT NULL,
    crc INTEGER NOT NULL,
    payload BLOB NOT NULL
"""

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        f"""CREATE TABLE ops (
            k INTEGER PRIMARY KEY,
            state INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            not_before REAL NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_until REAL,
            last_error TEXT,
            {_COMMON})""",
        f"""CREATE TABLE dead (
            k INTEGER PRIMARY KEY,
            attempts INTEGER NOT NULL,
            reason TEXT NOT NULL,
            dead_at REAL NOT NULL,
            {_COMMON})""",
        f"""CREATE TABLE done (
            k INTEGER PRIMARY KEY,
            delivered_at REAL NOT NULL,
            {_COMMON})""",
        f"""CREATE TABLE held (
            k INTEGER PRIMARY KEY,
            holder TEXT NOT NULL,
            held_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            not_before REAL NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_until REAL,
            last_error TEXT,
            {_COMMON})""",
        "CREATE INDEX done_delivered_at ON done(delivered_at)",
    ),
    # One row per running collector, refreshed by its consumer's housekeeping and
    # removed at close, so ``memwal-replay status`` can tell a live idle collector
    # from none (see _heartbeat).
    2: (
        """CREATE TABLE collectors (
            owner TEXT PRIMARY KEY,
            started_at REAL NOT NULL,
            seen_at REAL NOT NULL)""",
    ),
}

INSERT_OP = "INSERT INTO ops (k, id, category, created_at, crc, payload) VALUES (?, ?, ?, ?, ?, ?)"

LEASE_SELECT = """
    SELECT k, id, attempts, crc, payload FROM ops
    WHERE ((state = 0 AND not_before <= :now) OR (state = 1 AND lease_until < :now)) {extra}
    ORDER BY k LIMIT :n
"""

LEASE_HELD = """
    SELECT k, id, attempts, crc, payload FROM held
    WHERE not_before <= :now AND (lease_owner IS NULL OR lease_until < :now)
    ORDER BY k LIMIT :n
"""

# A claim re-checks readiness by primary key: a row another consumer leased after
# our snapshot read does not match, so it is never delivered twice while a lease is
# valid. One statement, so it needs no BEGIN/COMMIT; when fewer rows changed than
# asked for (a race), CLAIMED_* tells which ones are ours.
LEASE_CLAIM_OPS = """
    UPDATE ops SET state = 1, lease_owner = ?1, lease_until = ?2
    WHERE k IN (SELECT value FROM json_each(?3))
      AND ((state = 0 AND not_before <= ?4) OR (state = 1 AND lease_until < ?4))
"""

LEASE_CLAIM_HELD = """
    UPDATE held SET lease_owner = ?1, lease_until = ?2
    WHERE k IN (SELECT value FROM json_each(?3))
      AND not_before <= ?4 AND (lease_owner IS NULL OR lease_until < ?4)
"""

CLAIMED = """
    SELECT k FROM {table} WHERE k IN (SELECT value FROM json_each(?3))
      AND lease_owner = ?1 AND lease_until = ?2
"""

ACK_OPS = "DELETE FROM ops WHERE k IN (SELECT value FROM json_each(?))"
# A failed delivery's rows, one JSON array of [k, error, not_before] per statement.
RETRY_OPS = """UPDATE ops SET state = 0, attempts = attempts + 1, last_error = json_extract(r.value, '$[1]'),
    not_before = json_extract(r.value, '$[2]'), lease_owner = NULL, lease_until = NULL
    FROM json_each(?1) AS r WHERE ops.k = json_extract(r.value, '$[0]') AND ops.lease_owner = ?2"""
RELEASE_OPS = """UPDATE ops SET state = 0, lease_owner = NULL, lease_until = NULL
    WHERE k IN (SELECT value FROM json_each(?1)) AND lease_owner = ?2"""
