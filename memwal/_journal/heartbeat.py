"""Collector liveness: each running consumer keeps a heartbeat row in the journal.

The consumer calls ``beat`` when it starts and from its housekeeping every
``INTERVAL`` seconds, and ``leave`` when it stops; ``memwal-replay status`` calls
``collectors``. A collector is alive when its row was refreshed within ``STALE``
seconds and, when it runs on this host, its process still exists: so a collector
idle for hours is alive, and one killed with SIGKILL is not (its row stays until
``STALE_ROW`` has passed, then the next beat of any collector removes it).
"""

from __future__ import annotations

import msgspec

from .journal import Journal, owner_is_gone

__all__ = ["INTERVAL", "STALE", "CollectorSeen", "beat", "collectors", "leave"]

INTERVAL = 2.0  # seconds between beats
STALE = 5 * INTERVAL  # a row older than this is not a live collector (its loop may be stuck)
STALE_ROW = 3600.0  # rows older than this are deleted by the next beat

_BEAT = (
    "INSERT INTO collectors (owner, started_at, seen_at) VALUES (?1, ?2, ?2)"
    " ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at"
)


class CollectorSeen(msgspec.Struct, frozen=True, kw_only=True):
    """One collector's heartbeat: ``owner`` is host:pid:nonce; times are Unix seconds."""

    owner: str
    started_at: float
    seen_at: float
    alive: bool


def beat(journal: Journal) -> None:
    """Record that this journal's collector is alive now (one short write).

    Example:
        >>> beat(journal)  # from the consumer's housekeeping
    """
    now = journal.clock()
    journal.write_one(_BEAT, (journal.owner, now))
    journal.write_one("DELETE FROM collectors WHERE seen_at < ?", (now - STALE_ROW,))


def leave(journal: Journal) -> None:
    """Remove this journal's heartbeat row (the collector is closing).

    Example:
        >>> leave(journal)
    """
    journal.write_one("DELETE FROM collectors WHERE owner = ?", (journal.owner,))


def collectors(journal: Journal) -> list[CollectorSeen]:
    """Every heartbeat row, newest first, each marked alive or not; reads only.

    Example:
        >>> [c.owner for c in collectors(journal) if c.alive]
        ['build-7:4242:1f2e3d4c']
    """
    now = journal.clock()
    rows = journal.read("SELECT owner, started_at, seen_at FROM collectors ORDER BY seen_at DESC")
    return [
        CollectorSeen(
            owner=owner,
            started_at=started,
            seen_at=seen,
            alive=seen >= now - STALE and not owner_is_gone(owner),
        )
        for owner, started, seen in rows
    ]
