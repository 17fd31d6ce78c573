"""memwal-replay's redelivery: journal rows to a sink through lease, deliver, plan, settle."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, cast

import anyio
import msgspec

from .._core.config import Config
from .._core.errors import CircuitOpen, ConfigError, InvalidOperation, SinkUnavailable
from .._delivery.plan import group_by_category, plan_with
from .._journal.journal import Journal, owner_is_gone
from .._policy.breaker import breaker_for
from .._policy.throttle import TokenBucket
from .._sinks.base import Sink
from .._sinks.call import Outcome, call_sink, deliver_isolating, is_unexpected
from .inspect import PAGE, requeue

__all__ = ["ReplayProgress", "ReplayReport", "replay", "sink_from_uri"]

log = logging.getLogger("memwal")


def sink_from_uri(
    uri: str,
    *,
    user_id: str | None = None,
    agent_id: str | None = None,
    run_id: str | None = None,
    api_key: str | None = None,
    env: dict[str, str] | os._Environ[str] = os.environ,
) -> Sink:
    """``sqlite:PATH``, ``mem0+oss://host:port`` or ``mem0+platform://host`` as a Sink.

    mem0 entity ids and the API key come from the arguments, else ``MEMWAL_MEM0_*``.

    Example:
        >>> sink_from_uri("sqlite:memories.db")
        <SQLiteSink 'memories.db'>
    """
    scheme, _, rest = uri.partition(":")
    if scheme == "sqlite" and rest:
        path = Path(rest)
        if not path.parent.is_dir():
            raise ConfigError(f"directory {str(path.parent)!r} does not exist", path="--sink")
        if path.exists() and not path.is_file():
            raise ConfigError(f"{str(path)!r} is not a file", path="--sink")
        from .._sinks.sqlite import SQLiteSink

        return SQLiteSink(path)
    if scheme in ("mem0+oss", "mem0+platform") and rest.startswith("//") and len(rest) > 2:
        try:
            from .._sinks.mem0 import Mem0Sink  # type: ignore[import-not-found, unused-ignore]
        except ImportError as exc:
            raise ConfigError(
                f"the mem0 sink is not available in this memwal ({exc})", path="--sink"
            ) from exc
        api = scheme.partition("+")[2]
        base = ("http://" if api == "oss" else "https://") + rest[2:]
        sink: Sink = Mem0Sink(
            base,
            api=cast("Literal['oss', 'platform']", api),  # Mem0Sink checks it
            api_key=api_key or env.get("MEMWAL_MEM0_API_KEY"),
            user_id=user_id or env.get("MEMWAL_MEM0_USER_ID"),
            agent_id=agent_id or env.get("MEMWAL_MEM0_AGENT_ID"),
            run_id=run_id or env.get("MEMWAL_MEM0_RUN_ID"),
            lookup_first=True,  # a replayed operation may have reached mem0 before it was given up on
        )
        return sink
    raise ConfigError(
        f"{uri!r} is not sqlite:PATH, mem0+oss://HOST:PORT or mem0+platform://HOST", path="--sink"
    )


class ReplayProgress(msgspec.Struct, frozen=True, kw_only=True):
    """Counts so far; ``total`` is the selection at the start (it can grow)."""

    total: int
    delivered: int
    retried: int
    dead: int


class ReplayReport(msgspec.Struct, frozen=True, kw_only=True):
    """One replay run. ``waiting``: selected rows still in backoff after a failure;
    ``live_leased``: rows a running collector has leased (never touched); ``failed``:
    ids this run tried that are not delivered (waiting or dead); ``remaining``: the
    selected rows still undelivered in the journal when the run ended (tried or not,
    ``live_leased`` included); ``last_error``: the sink's last failure, if any."""

    dry_run: bool
    selected: int
    requeued: int
    delivered: int
    retried: int
    dead: int
    waiting: int
    live_leased: int
    by_category: dict[str, int]
    failed: list[str]
    stopped: str | None = None
    remaining: int = 0
    last_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and self.stopped is None


def _selection(journal: Journal, category: str | None, include_dead: bool) -> tuple[dict[str, int], int, int]:
    """(ready rows by category, rows in backoff, rows under a live lease); reads only."""
    now = journal.clock()
    where, params = ("WHERE category = ?", [category]) if category is not None else ("", [])
    ready: dict[str, int] = {}
    waiting = live = 0
    for cat, state, owner, fresh, later, n in journal.read(
        "SELECT category, state, lease_owner, lease_until >= ?, not_before > ?, count(*)"
        f" FROM ops {where} GROUP BY 1, 2, 3, 4, 5",
        [now, now, *params],
    ):
        if state == 1 and fresh and not owner_is_gone(owner):
            live += n
        else:
            waiting += n if state == 0 and later else 0
            ready[cat] = ready.get(cat, 0) + n
    if include_dead:
        for cat, n in journal.read(f"SELECT category, count(*) FROM dead {where} GROUP BY 1", params):
            ready[cat] = ready.get(cat, 0) + n
    return ready, waiting, live


async def replay(
    journal: Journal,
    sink: Sink,
    *,
    category: str | None = None,
    include_dead: bool = False,
    rate: float | None = None,
    dry_run: bool = False,
    batch_size: int = 100,
    config: Config | None = None,
    progress: Callable[[ReplayProgress], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ReplayReport:
    """Deliver the selected operations to ``sink`` as the consumer would.

    Leases of processes that are gone are taken over; with ``include_dead`` matching
    dead rows are requeued first; rows in backoff are made ready. Each leased batch
    goes through deliver -> ``plan`` -> ``settle``; failed rows get their backoff and
    are tried again while ready. The run ends when no selected row is ready, or when
    the sink's circuit breaker opens.

    Example:
        >>> async with SQLiteSink("memories.db") as sink:
        ...     report = await replay(open_journal("agent.journal"), sink, include_dead=True)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidOperation("batch_size", f"must be an int of at least 1, got {batch_size!r}")
    if rate is not None and not rate > 0:  # also refuses NaN
        raise InvalidOperation("rate", f"must be above 0 operations per second, got {rate!r}")
    config = config or Config()
    ready, _, live = _selection(journal, category, include_dead)
    if dry_run:
        return ReplayReport(
            dry_run=True,
            selected=sum(ready.values()),
            requeued=0,
            delivered=0,
            retried=0,
            dead=0,
            waiting=0,
            live_leased=live,
            by_category=ready,
            failed=[],
        )
    journal.recover()
    requeued = requeue(journal, category=category)[0] if include_dead else []
    _make_ready(journal, category)
    sink.bind_journal(journal.path)
    sink.bind(config, clock)
    run = _Run(journal, sink, config, batch_size, rate, sleep, clock, progress)
    run.total = sum(_selection(journal, category, False)[0].values())
    try:
        await run.drain(category)
    finally:  # interrupted or not, no row stays leased by this run
        journal.release_mine()
    failed = set(run.dead_ids) | _ids_in_ops(journal, sorted(run.failed))
    left, waiting, live = _selection(journal, category, False)
    return ReplayReport(
        dry_run=False,
        selected=run.total,
        requeued=len(requeued),
        delivered=run.delivered,
        retried=run.retried,
        dead=len(run.dead_ids),
        waiting=waiting,
        live_leased=live,
        by_category=ready,
        failed=sorted(failed),
        stopped=run.stopped,
        remaining=sum(left.values()) + live,
        last_error=run.last_error,
    )


def _ids_in_ops(journal: Journal, keys: list[int]) -> set[str]:
    out: set[str] = set()
    for i in range(0, len(keys), PAGE):
        part = keys[i : i + PAGE]
        out |= {
            r[0] for r in journal.read(f"SELECT id FROM ops WHERE k IN ({', '.join('?' * len(part))})", part)
        }
    return out


def _make_ready(journal: Journal, category: str | None) -> None:
    # The operator asked for delivery now: backoff from earlier failures is waived.
    extra, params = (" AND category = ?", [category]) if category is not None else ("", [])
    journal.transaction(
        lambda c: c.execute(
            f"UPDATE ops SET not_before = 0 WHERE state = 0 AND not_before > 0{extra}", params
        )
    )


class _Run:
    """The mutable state of one replay run: lease, deliver groups, settle, repeat."""

    def __init__(
        self,
        journal: Journal,
        sink: Sink,
        config: Config,
        batch_size: int,
        rate: float | None,
        sleep: Callable[[float], Awaitable[None]],
        clock: Callable[[], float],
        progress: Callable[[ReplayProgress], None] | None,
    ) -> None:
        self.journal, self.sink, self.config = journal, sink, config
        self.sleep, self.progress = sleep, progress
        self.bucket = TokenBucket(rate, clock=clock)
        self.breaker = breaker_for(sink, config.circuit_breaker, clock=clock)
        # Keep a lease's rate-limit wait well inside the lease, so no consumer takes it over.
        lease = journal.config.lease_seconds
        self.lease_n = batch_size if rate is None else max(1, min(batch_size, int(rate * lease / 4)))
        self.batch_size = batch_size
        self.total = self.delivered = self.retried = 0
        self.failed: set[int] = set()
        self.dead_ids: list[str] = []
        self.stopped: str | None = None
        self.last_error: str | None = None  # the sink's, for the operator (never a breaker refusal)

    async def drain(self, category: str | None) -> None:
        while True:
            if self.breaker is not None and not self.breaker.allow():
                self.stopped = (
                    f"{self.sink.name} failed {self.config.circuit_breaker.failure_threshold} times in a row"
                )
                return
            leased, bad = self.journal.lease(self.lease_n, category=category)
            for op_id, reason in bad:
                log.error("operation %s dead-lettered: %s", op_id, reason)
                self.dead_ids.append(op_id)
            if not leased:
                return
            parts: list[tuple[Any, Any]] = []
            async with anyio.create_task_group() as tg:
                for group in group_by_category(leased, self.batch_size):
                    tg.start_soon(self._deliver, group, parts)
            if any(not isinstance(o, BaseException) for _, o in parts):
                # The durability chain: no ack before the sink's copies are durable.
                err = await _sync(self.sink, self.config.performance.operation_timeout)
                if err is not None:
                    parts = [(g, o if isinstance(o, BaseException) else err) for g, o in parts]
            for group, outcome in parts:
                self._settle(group, outcome)

    async def _deliver(self, group: list[Any], parts: list[tuple[Any, Any]]) -> None:
        parts.extend(await deliver_isolating(self._call, group))

    async def _call(self, group: list[Any]) -> Outcome:
        delay = self.bucket.delay(len(group))
        if delay:
            await self.sleep(delay)
        outcome = await call_sink(self.sink.deliver, [g.op for g in group], name=self.sink.name,
                                  timeout=self.config.performance.operation_timeout, breaker=self.breaker)
        if is_unexpected(outcome):
            log.error("unexpected error from %s delivering %d operations: %r", self.sink.name, len(group), outcome)
        return outcome

    def _settle(self, group: list[Any], outcome: Any) -> None:
        s = plan_with(group, outcome, self.config.async_collection, self.journal.clock())
        self.journal.settle(s)
        ids = {g.key: g.op.id for g in group}
        self.delivered += len(s.acked) + len(s.held)
        self.retried += len(s.retry)
        self.failed -= set(s.acked) | {k for k, _ in s.held}
        self.failed |= {k for k, _, _ in s.retry}
        for k, reason in s.dead:
            log.error("operation %s dead-lettered: %s", ids[k], reason)
            self.failed.discard(k)
            self.dead_ids.append(ids[k])
        for k, err, _ in s.retry:
            log.info("operation %s not delivered, will retry: %s", ids[k], err)
        if not isinstance(outcome, CircuitOpen):
            self.last_error = next((e for _, e, _ in reversed(s.retry)), None) or next(
                (r for _, r in reversed(s.dead)), self.last_error
            )
        if self.progress is not None:
            self.progress(
                ReplayProgress(
                    total=max(self.total, self.delivered),
                    delivered=self.delivered,
                    retried=self.retried,
                    dead=len(self.dead_ids),
                )
            )


async def _sync(sink: Sink, timeout: float) -> SinkUnavailable | None:
    """``sink.sync()``; the error as SinkUnavailable (the batch is retried) if it failed."""
    try:
        with anyio.fail_after(timeout):
            await sink.sync()
    except Exception as exc:  # noqa: BLE001  (the rows stay in the journal and are retried)
        return exc if isinstance(exc, SinkUnavailable) else SinkUnavailable(f"{sink.name} sync: {exc!r}")
    return None

