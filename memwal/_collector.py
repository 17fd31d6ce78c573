"""AsyncMemoryCollector: collect into the journal, deliver in the background, read back."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import anyio.from_thread

from ._adaptive import apply_changes
from ._cache import QUEUE_CHECK_MASK, MemoryCache
from ._config import Config
from ._consumer import Consumer
from ._errors import JournalError, QueueFull, SinkRejected
from ._health import AlertCallback, Health, HealthMonitor
from ._journal import Journal
from ._reads import Reader
from ._records import Memory, MemoryCategory, Priority, validate
from ._sinks.base import Sink
from ._stats import CollectorStats, Counters, snapshot

__all__ = ["AsyncMemoryCollector"]

log = logging.getLogger("memwal")
_debug_on = log.isEnabledFor  # collect() skips building its DEBUG record when nobody listens
_perf_ns = time.perf_counter_ns
_DEBUG = logging.DEBUG

Category = str | MemoryCategory
Meta = Mapping[str, Any] | None
Prio = Priority | str | None


class AsyncMemoryCollector:
    """Collect memories without waiting for the backend; nothing collected is lost.

    ``collect``/``collect_async`` append to the journal file in one committed SQLite
    transaction on the caller's thread; a background consumer delivers to ``sink``.

    Example:
        >>> async with AsyncMemoryCollector("agent.journal", SQLiteSink("memories.db")) as c:
        ...     op_id = await c.collect_async("bug", "parser fails on empty input")
        ...     await c.flush_queue(timeout=10)
    """

    def __init__(
        self,
        journal: str | os.PathLike[str],
        sink: Sink,
        *,
        config: Config | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        if not isinstance(sink, Sink):
            raise TypeError(f"sink must be a memwal.Sink, got {type(sink).__name__}")
        self.config = config or Config()
        self.sink = sink
        self.journal = Journal(journal, self.config.journal)
        self.clock = clock
        self.counters = Counters(metrics=self.config.health.metrics)
        self.monitor = HealthMonitor(self, clock=clock)
        self._consumer: Consumer | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self.cache = MemoryCache.from_config(self.config.cache, timer=clock) if self.config.cache.enabled else None
        self._reader = Reader(self.journal, sink, self.cache, self.counters,
                              timeout=self.config.performance.operation_timeout)
        self._state = "new"
        # collect()'s settings, fixed for the collector's life (configure() cannot change them)
        ac = self.config.async_collection
        self._max_content = self.config.journal.max_content_bytes
        self._limit = ac.max_queue_size
        self._block = ac.on_full == "block"
        self._on_full = "reject" if self._block else ac.on_full  # what an append does at once
        self._enabled = ac.enabled
        self._record_collect_us = self.counters.collect_us.add
        self._queue_scope = None if self.cache is None else self.cache.queue_scope

    def __repr__(self) -> str:
        c = self.counters
        return (
            f"<AsyncMemoryCollector {str(self.journal.path)!r} {self._state}"
            f" collected={c.collected} delivered={c.delivered} dead={c.dead}>"
        )

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Open the journal and start the consumer (enter and leave in the same task)."""
        if self._state != "new":
            if self._state == "closed":
                raise JournalError("collector is closed", path=str(self.journal.path))
            return
        await anyio.to_thread.run_sync(self.journal.open)
        self.sink.bind(self.config, self.clock)
        self._consumer = Consumer(self.journal, self.sink, self.config, counters=self.counters, clock=self.clock)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            await tg.start(self._consumer.run)
            tg.start_soon(self.monitor.run)
        except BaseException:
            await tg.__aexit__(None, None, None)
            await anyio.to_thread.run_sync(self.journal.close)
            raise
        self._tg = tg
        self._state = "running"

    async def aclose(self) -> None:
        """Flush within the shutdown timeout, release leases, checkpoint and close.

        Whatever is not delivered stays in the journal for the next start. Closing
        twice is a no-op; collect after close raises JournalError.
        """
        if self._state in ("closed", "new"):
            self._state = "closed"
            return
        self._state = "closed"
        assert self._consumer is not None and self._tg is not None
        deadline = self.clock() + self.config.journal.shutdown_timeout
        try:
            with anyio.move_on_after(self.config.journal.shutdown_timeout, shield=True):
                await self._flush_all()
            await self._consumer.stop(max(0.0, deadline - self.clock()))
        finally:
            self.monitor.stop()
            await self._tg.__aexit__(None, None, None)
            with anyio.CancelScope(shield=True):
                await self.sink.aclose()
                await anyio.to_thread.run_sync(self.journal.close)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- collecting --------------------------------------------------------------

    def _append(self, category: Any, content: Any, metadata: Any, priority: Any, tags: Any, project: Any,
                on_full: str) -> str:
        t0 = _perf_ns()
        if self._state != "running":
            raise JournalError(f"collector is {self._state}", path=str(self.journal.path))
        cat, text, meta, prio, tag_t, proj = validate(
            category, content, metadata, priority, tags, project, self._max_content
        )
        op, dropped = self.journal.append(cat, text, meta, prio, tag_t, proj, self._limit, on_full)
        c = self.counters
        c.collected = n = c.collected + 1
        # Before collect returns, the cache learns of the op: the next read must see it.
        if dropped is None:
            if self._queue_scope is not None:
                self._queue_scope((cat, proj))
                if not n & QUEUE_CHECK_MASK:  # every 512 collects: the bound is 1024 queued
                    self.cache.bound_queue()  # type: ignore[union-attr]  # set with _queue_scope
        else:
            if self.cache is not None:
                self.cache.invalidate(op, dropped, True)
            c.drops["queue_full_drop_oldest"] += 1
            log.warning("operation %s dropped to make room (on_full=drop_oldest) for %s", dropped, op.id)
        self._record_collect_us((_perf_ns() - t0) / 1000)
        if _debug_on(_DEBUG):
            log.debug("operation %s collected (%s, %s)", op.id, cat, prio.value)
        self._consumer.collected()  # type: ignore[union-attr]  # running: the consumer exists
        return op.id

    def collect(
        self,
        category: Category,
        content: str,
        metadata: Meta = None,
        priority: Prio = None,
        *,
        tags: Sequence[str] = (),
        project: str | None = None,
    ) -> str:
        """Append one operation and return its id; for loop code that cannot await.

        With ``on_full: block`` a full journal raises QueueFull at once here (blocking
        the event loop would stop the consumer that makes room); use collect_async.
        """
        return self._append(category, content, metadata, priority, tags, project, self._on_full)

    async def collect_async(
        self,
        category: Category,
        content: str,
        metadata: Meta = None,
        priority: Prio = None,
        *,
        tags: Sequence[str] = (),
        project: str | None = None,
    ) -> str:
        """Append one operation; return its id once it is committed to the journal.

        When the journal is full and ``on_full`` is ``block``, waits up to
        ``collect_timeout`` for room, then raises QueueFull. With
        ``async_collection.enabled: false`` returns only once the operation is delivered.
        """
        try:
            op_id = self._append(category, content, metadata, priority, tags, project, self._on_full)
        except QueueFull:
            if not self._block:
                raise
            op_id = await self._append_blocking(category, content, metadata, priority, tags, project)
        if not self._enabled:
            await self._wait_delivered(op_id)
        return op_id

    async def _append_blocking(
        self, category: Any, content: Any, metadata: Any, priority: Any, tags: Any, project: Any
    ) -> str:
        timeout = self.config.async_collection.collect_timeout
        deadline = self.clock() + timeout
        while True:
            try:
                return self._append(category, content, metadata, priority, tags, project, "reject")
            except QueueFull as exc:
                left = deadline - self.clock()
                if left <= 0:
                    self.counters.drops["queue_full_timeout"] += 1
                    raise QueueFull(exc.depth, exc.limit, waited=timeout) from None
                assert self._consumer is not None
                self._consumer.wake(urgent=True)  # lease now: no linger while collects wait for room
                # The next append counts the journal again once the last count is
                # EXACT_COUNT_TTL old; room made by this process shows at once.
                await self._consumer.wait_progress(min(left, self.config.journal.poll_interval * 4))

    async def _wait_delivered(self, op_id: str) -> None:
        assert self._consumer is not None
        while await anyio.to_thread.run_sync(self.journal.find, op_id) is not None:
            self._consumer.wake(urgent=True)
            await self._consumer.wait_progress(self.config.journal.poll_interval * 4)
        reason = await anyio.to_thread.run_sync(self.journal.dead_reason, op_id)
        if reason is not None:
            raise SinkRejected(f"operation {op_id} was dead-lettered: {reason}")

    async def collect_bug(self, content: str, metadata: Meta = None, priority: Prio = None, **kw: Any) -> str:
        """collect_async with category ``bug``."""
        return await self.collect_async("bug", content, metadata, priority, **kw)

    async def collect_error(self, content: str, metadata: Meta = None, priority: Prio = None, **kw: Any) -> str:
        """collect_async with category ``error``."""
        return await self.collect_async("error", content, metadata, priority, **kw)

    async def collect_feedback(self, content: str, metadata: Meta = None, priority: Prio = None, **kw: Any) -> str:
        """collect_async with category ``feedback``."""
        return await self.collect_async("feedback", content, metadata, priority, **kw)

    async def collect_performance(self, content: str, metadata: Meta = None, priority: Prio = None, **kw: Any) -> str:
        """collect_async with category ``performance``."""
        return await self.collect_async("performance", content, metadata, priority, **kw)

    async def collect_architecture(self, content: str, metadata: Meta = None, priority: Prio = None, **kw: Any) -> str:
        """collect_async with category ``architecture``."""
        return await self.collect_async("architecture", content, metadata, priority, **kw)

    async def collect_operation(self, content: str, metadata: Meta = None, priority: Prio = None, **kw: Any) -> str:
        """collect_async with category ``operation``."""
        return await self.collect_async("operation", content, metadata, priority, **kw)

    # -- reading -----------------------------------------------------------------

    async def get(self, op_id: str) -> Memory | None:
        """The memory collected as ``op_id``, or None if there is none.

        Read from the journal while the operation is undelivered (even with the sink
        down), else from the sink through the cache. Raises NotImplementedError when
        the sink cannot read, SinkUnavailable when it does not answer in time.

        Example:
            >>> op_id = c.collect("bug", "parser fails on empty input")
            >>> (await c.get(op_id)).content
            'parser fails on empty input'
        """
        return await self._reader.get(op_id)

    async def search(
        self,
        query: str,
        *,
        category: Category | None = None,
        tags: Sequence[str] | None = None,
        project: str | None = None,
        limit: int = 10,
    ) -> list[Memory]:
        """Memories matching every word of ``query``, best first, filtered.

        Undelivered matches (newest first) come before the sink's ranked results
        (SQLiteSink: FTS5 bm25; Mem0Sink: mem0's search); one copy per id. Raises
        NotImplementedError when the sink cannot search.

        Example:
            >>> [m.content for m in await c.search("parser", category="bug", limit=5)]
        """
        return await self._reader.search(query, category=category, tags=tags, project=project, limit=limit)

    async def recent(self, category: Category | None = None, *, limit: int = 20) -> list[Memory]:
        """The newest memories (undelivered ones included), newest first.

        Example:
            >>> await c.recent("feedback", limit=5)
        """
        return await self._reader.recent(category, limit=limit)

    # -- flushing and observing --------------------------------------------------

    async def _flush_all(self) -> int:
        assert self._consumer is not None
        # Everything collected before now, by any process: ids are time-ordered.
        mark = max(self.journal.ids.last, (int(time.time() * 1_000_000) << 8) | 0xFF)
        # Counted on a thread: what this process removes meanwhile is added back.
        watch = self.journal.watch_removals(mark)
        try:
            total = await anyio.to_thread.run_sync(self.journal.remaining_upto, mark, watch)
        finally:
            self.journal.unwatch(watch)
        remaining = total > 0
        # A settled batch leaves the journal before its counters move: wait for both,
        # so stats() right after a flush counts everything the flush waited for.
        while remaining or self._consumer.settling:
            self._consumer.wake(urgent=True)
            await self._consumer.wait_progress(self.config.journal.poll_interval * 4)
            remaining = await anyio.to_thread.run_sync(self.journal.any_upto, mark)
        return total

    async def flush_queue(self, timeout: float | None = None) -> int:
        """Wait until every operation collected before the call is delivered or dead-lettered.

        Returns how many were waited for: the operations collected before the call that
        were still in the journal when it began (exact for this collector's removals;
        another process's consumer may deliver some before the count and go uncounted).
        On timeout raises TimeoutError; nothing is lost (the operations stay in the journal).
        """
        if self._state != "running":
            raise JournalError(f"collector is {self._state}", path=str(self.journal.path))
        with anyio.fail_after(timeout):
            return await self._flush_all()

    def stats(self) -> CollectorStats:
        """A frozen snapshot of counters and journal depth."""
        cache = None if self.cache is None else self.cache.statistics()
        return snapshot(self.counters, self.journal.counts(), cache, self.sink)

    def health(self) -> Health:
        """A frozen Health snapshot: status and reasons, depth, latencies, rates, sinks.

        Alerts fire from the periodic check (``performance.health_check_interval``),
        not from this call. Example: ``if c.health().status != "ok": ...``
        """
        return self.monitor.snapshot()[0]

    def add_alert_callback(self, callback: AlertCallback) -> None:
        """Call ``callback(alert)`` (sync or async) once per health status transition."""
        self.monitor.add_callback(callback)

    def remove_alert_callback(self, callback: AlertCallback) -> None:
        """Stop calling ``callback``; ValueError if it was never added."""
        self.monitor.remove_callback(callback)

    def configure(self, **changes: Any) -> Config:
        """Change safe settings on the live collector and return the new Config.

        Keys are a setting's name or its dotted path: ``batch_size``, ``batch_timeout``,
        ``rate_limit``, ``min_batch_size``, ``max_batch_size``, ``max_concurrent_ops``,
        ``health_check_interval`` and the ``health.*`` thresholds. Anything else, or a bad
        value, raises ConfigError naming the key and changes nothing.
        Example: ``c.configure(batch_size=50, **{"health.max_pending_age": 30})``
        """
        config, _ = apply_changes(self.config, changes)
        self.config = config
        if self._consumer is not None:
            self._consumer.configure(config)
            self._consumer.wake()
        return config

    def reset_circuit_breaker(self) -> None:
        """Force every breaker of the sink closed."""
        assert self._consumer is not None
        for b in [self._consumer.breaker, *self.sink.breakers()]:
            if b is not None:
                b.reset()
        self._consumer.wake()

