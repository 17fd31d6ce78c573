"""The consumer's decisions, as plain functions (no I/O, no loop): tests call them directly.

- ``when_to_lease``: what the lease loop does next (lease, or wait for what and how long);
- ``plan``: each leased row's fate from a delivery's outcome (ack, retry, dead letter,
  hold, release);
- ``group_by_category``: a lease cut into batches of one category;
- ``journal_unusable``: whether a journal error may pass or stops the collector.
"""

from __future__ import annotations

import random
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import NamedTuple

from .._core.config import AsyncCollectionConfig
from .._core.errors import CircuitOpen, JournalError, SinkRejected, SinkUnavailable
from .._journal.journal import LeasedOp, Settlement
from .._policy.retry import next_attempt_at
from .._sinks.base import DeliveryReport

__all__ = ["LeaseView", "group_by_category", "journal_unusable", "plan", "plan_with", "when_to_lease"]


class LeaseView(NamedTuple):
    """What the lease loop knows when it decides, all in plain values."""

    fatal: bool  # the journal is unusable: lease nothing until closed
    inflight: int  # batches being delivered now
    max_inflight: int  # performance.max_inflight_batches (0: another process delivers)
    urgent: bool  # a flush or a blocking collect waits
    batch_waits: bool  # a whole batch is ready, or the journal is at its bound
    linger_left: float  # seconds until batch_linger since the last lease ends (<= 0: over)
    breaker_wait: float  # seconds until a breaker lets a call through (0: now)
    poll: float  # journal.poll_interval


def when_to_lease(v: LeaseView) -> tuple[str, float]:
    """The lease loop's next step: ``("lease", 0)``, or a wait and its longest length.

    Waits: ``"nap"`` (a wake or the time ends it), ``"progress"`` (a settle ends it),
    ``"gather"`` (a nap while rows gather for a batch: a whole batch also ends it).

    Example:
        >>> when_to_lease(LeaseView(False, 0, 4, False, False, 0.0, 0.0, 0.05))
        ('lease', 0.0)
    """
    if v.fatal:
        return "nap", v.poll
    if v.inflight >= v.max_inflight:  # 0: another process delivers
        return "progress", v.poll
    if v.inflight and not v.urgent and not v.batch_waits:
        # Nagle for batches: while one is in flight, rows gather for the next instead
        # of leaving in tiny batches; each batch costs two journal transactions and
        # thread hops whatever its size. Under light load nothing is in flight and a
        # single row is leased at once.
        return "gather", v.poll
    if v.linger_left > 0 and not v.urgent and not v.batch_waits:
        # Rows keep arriving: the last lease began under ``batch_linger`` ago, so let
        # this batch fill a little longer. With a fast sink, leasing at every settle
        # made batches of a few dozen rows, and that churn (a read on a worker thread,
        # claims and acks on the loop) slowed collect: p50 1.70x the floor against
        # 1.58x with a 10 ms linger. After a quiet spell the last lease is old and a
        # lone row is leased at once.
        return "gather", v.linger_left
    if v.breaker_wait > 0:
        return "nap", min(v.breaker_wait, v.poll)
    return "lease", 0.0


def plan(
    group: Sequence[LeasedOp],
    outcome: DeliveryReport | BaseException | None,
    *,
    max_retries: int,
    retry_delay: float,
    max_retry_delay: float,
    now: float,
    rng: Callable[[], float] = random.random,
) -> Settlement:
    """Decide each leased row's fate from a delivery outcome (no I/O).

    ``outcome`` is None (all delivered), a DeliveryReport, or the exception the sink
    call raised. CircuitOpen releases rows without using an attempt; SinkRejected
    dead-letters; anything else is transient and retried with backoff until
    ``max_retries`` retries are used, then dead-lettered with the last error.
    """
    s = Settlement(acked=[], retry=[], dead=[], held=[], release=[])
    if isinstance(outcome, CircuitOpen):
        s.release.extend(g.key for g in group)
        return s
    for g in group:
        err: BaseException | None
        if isinstance(outcome, BaseException):
            err = outcome
        else:
            err = outcome.failed.get(g.op.id) if outcome is not None else None
            holder = outcome.held.get(g.op.id) if outcome is not None else None
            if err is None:
                (s.held.append((g.key, holder)) if holder else s.acked.append(g.key))
                continue
        if isinstance(err, SinkRejected):
            s.dead.append((g.key, f"rejected: {err}"))
        elif isinstance(err, CircuitOpen):
            s.release.append(g.key)
        elif g.attempts >= max_retries:
            s.dead.append((g.key, f"gave up after {g.attempts + 1} attempts: {describe(err)}"))
        else:
            retry_after = err.retry_after if isinstance(err, SinkUnavailable) else None
            when = next_attempt_at(now, g.attempts, retry_delay, max_retry_delay, retry_after, rng)
            s.retry.append((g.key, describe(err), when))
    return s


def plan_with(
    group: Sequence[LeasedOp], outcome: DeliveryReport | BaseException | None, ac: AsyncCollectionConfig, now: float
) -> Settlement:
    """``plan`` with the retry policy of ``async_collection`` (the consumer's and replay's rule)."""
    return plan(
        group, outcome, max_retries=ac.max_retries, retry_delay=ac.retry_delay,
        max_retry_delay=ac.max_retry_delay, now=now,
    )


def describe(err: BaseException) -> str:
    """An exception as a dead letter or retry reason: its type and message."""
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# SQLite's primary result codes that no retry can cure: the file is damaged or not a database.
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def journal_unusable(exc: BaseException) -> str | None:
    """Why the journal cannot be used any more, or None when ``exc`` may pass (no I/O).

    Unusable: SQLite says the file is corrupt or not a database, or memwal's tables are
    gone. Locks, a full disk, I/O hiccups and a closing journal may pass: retried.
    """
    cause = exc.__cause__ if isinstance(exc, JournalError) else exc
    if not isinstance(cause, sqlite3.DatabaseError):
        return None
    code = (getattr(cause, "sqlite_errorcode", 0) or 0) & 0xFF
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "no such table" in str(cause):
        return str(cause)
    return None


def group_by_category(leased: Sequence[LeasedOp], size: int) -> list[list[LeasedOp]]:
    """Batches of at most ``size`` operations of one category, in lease order."""
    by_cat: dict[str, list[LeasedOp]] = defaultdict(list)
    for item in leased:
        by_cat[item.op.category].append(item)
    return [ops[i : i + size] for ops in by_cat.values() for i in range(0, len(ops), size)]
