"""AsyncMemoryCollector: collect into the journal, deliver in the background (an anyio service), read back."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel

from .._core.config import Config
from .._core.errors import JournalError, QueueFull, SinkRejected
from .._core.records import CategoryRules, Memory, MemoryCategory, Priority, validate
from .._delivery.consumer import Consumer
from .._journal.journal import Journal
from .._journal.reads import OwnSnapshot
from .._observe.health import AlertCallback, Health, HealthInputs, HealthMonitor
from .._observe.stats import CollectorStats, Counters, sink_concurrency, snapshot
from .._policy.adaptive import apply_changes
from .._policy.breaker import CircuitBreaker, breakers_of
from .._reads.cache import QUEUE_CHECK_MASK, MemoryCache
from .._reads.reader import Reader
from .._sinks.base import Sink
from .._sinks.call import require_async_deliver
from .._sinks.sqlite import SQLiteSink
from .vocab import CollectHelpers

__all__ = ["AsyncMemoryCollector"]

log = logging.getLogger("memwal")
_debug_on = log.isEnabledFor  # collect() skips building its DEBUG record when nobody listens
_perf_ns = time.perf_counter_ns
_DEBUG = logging.DEBUG

# A collector inherited through fork() is unusable in the child: its consumer ran on
# the parent's threads, its SQLite connections must not cross a fork, and a lock held
# by another parent thread at the fork stays held forever in the child.
FORKED = "inherited through fork(): open a new collector in the child process"
# How long closing the sink and the journal may take once cancelled (shielded).
RELEASE_BOUND = 5.0

# Each live collector's fork hook (weakly held: a collector gone needs none)
_fork_hooks: weakref.WeakSet[_ForkHook] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for hook in list(_fork_hooks):
        hook()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _require_asyncio() -> None:
    """Raise at once unless an asyncio event loop runs this task (trio is not supported)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "memwal runs on asyncio: start the collector under asyncio (anyio.run(..., backend='asyncio'))"
        ) from None


def warn_unclosed(kind: str, journal: object, when: str) -> None:
    """The ResourceWarning for a collector its application never closed."""
    warnings.warn(
        f"{kind} on journal {journal} was never closed; closed {when}"
        " (operations not delivered stay in the journal)",
        ResourceWarning,
        stacklevel=2,
    )


class _ForkHook:
    """A collector's after-fork callback, held weakly by ``_fork_hooks`` and strongly by its collector."""

    __slots__ = ("__weakref__", "call")

    def __init__(self, call: Callable[[], None]) -> None:
        self.call = call

    def __call__(self) -> None:
        self.call()


class _Ready:
    """start()'s TaskStatus for run(): an event, and the error if run() failed first."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.error: BaseException | None = None

    def started(self, value: None = None) -> None:
        self.event.set()


Category = str | MemoryCategory
Meta = Mapping[str, Any] | None
Prio = Priority | str | None


class AsyncMemoryCollector(CollectHelpers[Awaitable[str]]):
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
        require_async_deliver(sink)  # before anything is written or sent
        self._config = config or Config()
        self.sink = sink
        self.journal = Journal(journal, self.config.journal)
        self.clock = clock
        self.counters = Counters(metrics=self.config.health.metrics)
        self._consumer: Consumer | None = None
        # The service's events and scope, made by start()/run() (anyio needs a running loop)
        self._stop_requested: anyio.Event | None = None
        self._done: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._ready: _Ready | None = None  # start()'s readiness, for a second start() to wait on
        self._task: asyncio.Task[None] | None = None  # start()'s service task (the loop holds it weakly)
        self._serving = False  # run() has begun
        self._closing = False  # aclose() was called: an end of the service is no surprise
        self._fork_hook = _ForkHook(self._after_fork_in_child)
        _fork_hooks.add(self._fork_hook)
        self.cache = MemoryCache.from_config(self.config.cache, timer=clock) if self.config.cache.enabled else None
        self.monitor = HealthMonitor(HealthInputs(
            journal=self.journal, counters=self.counters, config=lambda: self.config, breakers=self._breakers,
            batch_size=self._batch_size, cache=lambda: None if self.cache is None else self.cache.statistics(),
            sink_concurrency=lambda: sink_concurrency(self.sink),
        ), clock=clock)
        self._reader = Reader(self.journal, sink, self.cache, lambda: self.counters.delivered + self.counters.dead,
                              timeout=self.config.performance.operation_timeout)
        self._state = "new"
        # collect()'s settings, fixed for the collector's life (configure() cannot change them)
        ac = self.config.async_collection
        self._max_content = self.config.journal.max_content_bytes
        cats = self.config.categories
        self._categories = CategoryRules(cats.custom, accept_any=cats.accept_any)
        self._limit = ac.max_queue_size
        self._block = ac.on_full == "block"
        self._on_full = "reject" if self._block else ac.on_full  # what an append does at once
        self._enabled = ac.enabled
        self._record_collect_us = self.counters.collect_us.add
        self._queue_scope = None if self.cache is None else self.cache.queue_scope
        self._group = self.journal.group_commit  # durability full: collects share fsyncs
        self._sync_event: anyio.Event | None = None  # set when the loop's leader's fsync ends

    @property
    def config(self) -> Config:
        """The live Config (``configure`` replaces it).

        Example:
            >>> c.config.async_collection.batch_size
            100
        """
        return self._config

    def __repr__(self) -> str:
        c = self.counters
        return (
            f"<AsyncMemoryCollector {str(self.journal.path)!r} {self._state}"
            f" collected={c.collected} delivered={c.delivered} dead={c.dead}>"
        )

    def _after_fork_in_child(self) -> None:
        # A started collector is unusable in a child process after fork().
        if self._state in ("starting", "running", "closing"):
            self._state = FORKED

    # -- lifecycle ---------------------------------------------------------------
    #
    # The consumer and the health monitor run in ``run()``, a service task. ``start()``
    # runs it in a task of its own (an asyncio task the caller's cancel scopes do not
    # reach); callers who own a task group may run it there instead. ``aclose()`` only
    # signals the service and waits for it, so it works from any task and inside any
    # cancel scope: a cancelled close aborts the drain, and the service still releases
    # its leases and closes the sink and the journal (shielded, bounded) before the
    # cancellation goes on.

    def _claim_start(self) -> None:
        if self._state == "closed":
            raise JournalError("collector is closed", path=str(self.journal.path))
        if self._state == FORKED:
            raise JournalError(f"collector is {FORKED}", path=str(self.journal.path))
        if self._state.startswith("stopped"):
            raise JournalError(f"collector is {self._state}", path=str(self.journal.path))
        if self._state != "new":
            raise RuntimeError(f"collector for {self.journal.path} is already started")
        _require_asyncio()
        self._state = "starting"
        self._stop_requested = anyio.Event()
        self._done = anyio.Event()
        self._scope = anyio.CancelScope()

    async def start(self) -> None:
        """Open the journal and start delivering in the background; a no-op once started.

        The consumer runs in a task of its own, so ``start`` and ``aclose`` may be
        called from different tasks and inside any cancel scopes. Raises JournalError
        (naming the file) when the journal or a SQLiteSink cannot be opened, and
        RuntimeError at once under an event loop other than asyncio.

        Example:
            >>> c = AsyncMemoryCollector("agent.journal", SQLiteSink("memories.db"))
            >>> await c.start()
            >>> ...
            >>> await c.aclose()
        """
        if self._state in ("starting", "running", "closing"):
            if self._ready is not None:  # started by another task: wait until it is usable
                await self._ready.event.wait()
            return
        self._claim_start()
        self._ready = ready = _Ready()
        self._task = asyncio.get_running_loop().create_task(
            self._serve(ready), name=f"memwal collector {self.journal.path}"
        )
        try:
            await ready.event.wait()
        except anyio.get_cancelled_exc_class():
            await self._abort_and_wait()
            raise
        if ready.error is not None:
            raise ready.error

    async def _serve(self, ready: _Ready) -> None:
        """``run()`` as start()'s own task: report startup, and never raise into the loop."""
        try:
            await self.run(task_status=ready)
        except BaseException as exc:  # the task's end is reported, not raised
            if not ready.event.is_set():
                ready.error = exc if isinstance(exc, Exception) else JournalError(
                    "collector start was cancelled", path=str(self.journal.path))
                ready.event.set()
            elif isinstance(exc, asyncio.CancelledError):
                # The event loop is shutting down (asyncio.run cancels what is left):
                # run() has released the leases and closed the journal.
                if not self._closing:
                    warn_unclosed("AsyncMemoryCollector", self.journal.path, "at event loop shutdown")
            else:
                log.error("collector for %s stopped: %r", self.journal.path, exc, exc_info=exc)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the collector as an anyio service until ``aclose()`` or cancellation.

        For callers who own a task group (instead of ``start()``/``async with``): the
        collector is usable once ``tg.start`` returns. ``aclose()`` ends it after a
        bounded drain; cancelling its task group ends it at once. Either way the
        leases are released and the sink and the journal closed; undelivered
        operations stay in the journal.

        Example:
            >>> async with anyio.create_task_group() as tg:
            ...     await tg.start(c.run)
            ...     c.collect("bug", "parser fails on empty input")
            ...     await c.aclose()
        """
        if self._state != "starting" or self._serving:
            self._claim_start()  # from "new"; raises when closed, forked or already started
        self._serving = True
        assert self._scope is not None and self._stop_requested is not None
        started = False
        try:
            with self._scope:
                await self._open()
                assert self._consumer is not None
                async with anyio.create_task_group() as tg:
                    await tg.start(self._consumer.run)
                    tg.start_soon(self.monitor.run)
                    self._state = "running"
                    started = True
                    task_status.started()
                    await self._stop_requested.wait()
                    if self._state.startswith("stopped"):
                        log.warning("closing %s without a flush: %s", self.journal.path, self._state)
                    else:  # an unusable journal has nothing to drain: close at once
                        self._state = "closing"
                        await self._drain()
                    tg.cancel_scope.cancel()
            if not started:  # a cancelled aclose() ended the start: the collector is closed, not broken
                task_status.started()
        finally:
            await self._release()

    async def _open(self) -> None:
        if isinstance(self.sink, SQLiteSink):  # a store that cannot open fails start(), as the journal does
            self.sink.check_path()
        await anyio.to_thread.run_sync(self.journal.open)
        try:
            self.sink.bind_journal(self.journal.path)
            self.sink.bind(self.config, self.clock)
        except BaseException:
            await anyio.to_thread.run_sync(self.journal.close)
            raise
        self._consumer = Consumer(self.journal, self.sink, self.config, counters=self.counters, clock=self.clock,
                                  on_fatal=self._journal_unusable)

    async def _release(self) -> None:
        """Close the sink and the journal, shielded and bounded (the consumer released its leases)."""
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + RELEASE_BOUND
            self.monitor.stop()
            try:
                await self.sink.aclose()
            except Exception as exc:  # noqa: BLE001  (closing the journal matters more)
                log.warning("closing sink %s failed: %r", self.sink.name, exc)
            await anyio.to_thread.run_sync(self.journal.close)
        if self._state != FORKED:
            self._state = "closed"
        assert self._done is not None
        self._done.set()

    async def _drain(self) -> None:
        """Deliver what can be delivered now, within ``shutdown_timeout``; then stop the consumer."""
        assert self._consumer is not None
        timeout = self.config.journal.shutdown_timeout
        deadline = anyio.current_time() + timeout
        with anyio.move_on_after(timeout):
            await self._deliver_while_possible()
        # A delivery in flight to a sink that is down (its breaker open, or its last
        # call failed) is not waited for: cancelled now, its rows are released and
        # stay in the journal, as at the shutdown timeout.
        left = 0.0 if self._cannot_deliver() else max(0.0, deadline - anyio.current_time())
        await self._consumer.stop(left)

    def _cannot_deliver(self) -> bool:
        """The sink cannot take a delivery now: a breaker is open or the sink's last call failed."""
        assert self._consumer is not None
        return self._consumer.breaker_wait() > 0 or self._sink_failing()

    async def _deliver_while_possible(self) -> None:
        """Lease and deliver until nothing more can be delivered now.

        Stops at once when the breaker is open or the sink's last call failed, delivery
        is left to another process (``max_inflight_batches: 0``), a delivery fails
        during the close (the rows back off), or no row
        is ready (the rest back off or are leased elsewhere): close waits only for
        deliveries in flight, never for a sink that is down.
        """
        consumer = self._consumer
        assert consumer is not None
        failed_before = self.counters.retried + self.counters.released
        while True:
            if self.counters.retried + self.counters.released != failed_before:
                return
            if consumer.max_inflight == 0 or self._cannot_deliver():
                return
            if not consumer.inflight and not await anyio.to_thread.run_sync(self._any_ready):
                return
            consumer.wake(urgent=True)
            await consumer.wait_progress(self.config.journal.poll_interval * 4)

    def _sink_failing(self) -> bool:
        """The sink's last call failed (every breaker counts a failure since its last success)."""
        breakers = self._breakers()
        return bool(breakers) and all(b.statistics().consecutive_failures > 0 for b in breakers)

    def _any_ready(self) -> bool:
        try:
            return bool(self.journal.select_ready(1)[0])
        except JournalError:
            return False

    async def aclose(self) -> None:
        """Deliver what can be delivered now, release leases, close the sink and the journal.

        Waits for deliveries in flight and keeps delivering while the sink takes
        operations, up to ``journal.shutdown_timeout``; returns at once when nothing
        can be delivered now (sink down, breaker open, rows backing off, delivery left
        to another process). Whatever is not delivered stays in the journal for the
        next start. Callable from any task and inside any cancel scope: when
        cancelled it stops waiting for deliveries, still releases the leases and
        closes the sink and the journal, then lets the cancellation go on. Closing
        twice is a no-op; collect after close raises JournalError.

        Example:
            >>> with anyio.move_on_after(1):  # bound the shutdown
            ...     await c.aclose()
        """
        if self._state in ("new", FORKED):
            self._state = "closed" if self._state == "new" else FORKED
            return
        if self._state == "closed" and self._done is None:
            return
        assert self._done is not None and self._stop_requested is not None
        self._closing = True
        self._stop_requested.set()
        try:
            await self._done.wait()
        except anyio.get_cancelled_exc_class():
            await self._abort_and_wait()
            raise

    async def _abort_and_wait(self) -> None:
        """Cancel the service's drain and wait (shielded, bounded) until it has closed."""
        self._closing = True
        assert self._scope is not None and self._done is not None
        self._scope.cancel()
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(RELEASE_BOUND * 2):
                await self._done.wait()

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
            category, content, metadata, priority, tags, project, self._max_content, self._categories
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
        op_id = self._append(category, content, metadata, priority, tags, project, self._on_full)
        if self._group:
            self.journal.sync_upto(self.journal.commits)  # joins a group commit, on this thread
        return op_id

    def collect_from_thread(
        self,
        call_on_loop: Callable[..., Any],
        category: Category,
        content: str,
        metadata: Meta = None,
        priority: Prio = None,
        tags: Sequence[str] = (),
        project: str | None = None,
    ) -> str:
        """``collect`` for a thread other than the event loop's (MemoryCollector's seam).

        Appends on this thread. With ``on_full: block`` and a full journal this thread
        waits up to ``collect_timeout`` for room, through ``call_on_loop(fn, *args)``
        (a blocking portal's ``call``); with durability ``full`` it joins a group commit.

        Example:
            >>> c.collect_from_thread(portal.call, "bug", "parser fails on empty input")
        """
        try:
            op_id = self._append(category, content, metadata, priority, tags, project, self._on_full)
        except QueueFull:
            if not self._block:
                raise
            op_id = call_on_loop(self._append_blocking, category, content, metadata, priority, tags, project)
        if self._group:  # durability full: one fdatasync for every thread waiting
            self.journal.sync_upto(self.journal.commits)
        return str(op_id)

    def collect_async(
        self,
        category: Category,
        content: str,
        metadata: Meta = None,
        priority: Prio = None,
        *,
        tags: Sequence[str] = (),
        project: str | None = None,
    ) -> Awaitable[str]:
        """Append one operation now; the returned awaitable gives its id.

        The append happens in this call, before any await: ``c.collect_async(...)``
        without ``await`` still stores the memory (fire and forget). Bad input and a
        closed collector raise here. Awaiting returns the id of the committed
        operation; with ``async_collection.enabled: false`` it returns once the
        operation is delivered. When the journal is full and ``on_full`` is
        ``block``, nothing can be appended yet: the awaitable waits up to
        ``collect_timeout`` for room, then raises QueueFull; dropped unawaited,
        that operation is not stored, which is logged as an error with its category
        and counted in ``stats().drops_by_reason["not_awaited"]``.
        """
        try:
            op_id = self._append(category, content, metadata, priority, tags, project, self._on_full)
        except QueueFull:
            if not self._block:
                raise
            wait = self._then_delivered(category, content, metadata, priority, tags, project)
            return _Collected(None, wait, self, str(category))
        if not self._enabled:
            return _Collected(op_id, self._delivered(op_id), self, "")
        if self._group and self.journal.synced < self.journal.commits:
            return _Collected(op_id, self._committed(op_id, self.journal.commits), self, "")
        return _Appended(op_id)

    async def _committed(self, op_id: str, ticket: int) -> str:
        """Wait until a group commit covers ``ticket``: one task per group runs the
        fsync on a worker thread; the others wait for it on the loop."""
        j = self.journal
        while j.synced < ticket:
            ev = self._sync_event
            if ev is not None:
                await ev.wait()
                continue
            ev = self._sync_event = anyio.Event()
            try:
                with anyio.CancelScope(shield=True):  # the fsync finishes even if this task is cancelled
                    # One turn of the loop first: tasks woken by the last group append
                    # now and ride this fsync instead of the next one.
                    await anyio.lowlevel.checkpoint()
                    await anyio.to_thread.run_sync(j.sync_upto, j.commits)
            finally:
                self._sync_event = None
                ev.set()
        return op_id

    async def _then_delivered(
        self, category: Any, content: Any, metadata: Any, priority: Any, tags: Any, project: Any
    ) -> str:
        op_id = await self._append_blocking(category, content, metadata, priority, tags, project)
        if not self._enabled:
            await self._wait_delivered(op_id)
        elif self._group:
            await self._committed(op_id, self.journal.commits)
        return op_id

    async def _delivered(self, op_id: str) -> str:
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

    def _collect_as(
        self, category: str, content: str, metadata: Meta, priority: Prio, kw: dict[str, Any]
    ) -> Awaitable[str]:
        return self.collect_async(category, content, metadata, priority, **kw)

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

    async def _flush_all(self, snap: OwnSnapshot | None = None) -> int:
        assert self._consumer is not None
        # One snapshot, taken now (no scan on the loop), gives both the mark
        # (everything collected before now, by any process) and how many of this
        # collector's own operations are undelivered; the count runs on a thread.
        if snap is None:
            snap = self.journal.own_snapshot()
        try:
            own = await anyio.to_thread.run_sync(snap.count)
        finally:
            snap.close()
        mark = snap.mark
        remaining = True
        # A settled batch leaves the journal before its counters move: wait for both,
        # so stats() right after a flush counts everything the flush waited for.
        while remaining or self._consumer.settling:
            remaining = await anyio.to_thread.run_sync(self.journal.any_upto, mark)
            if remaining or self._consumer.settling:
                self._consumer.wake(urgent=True)
                await self._consumer.wait_progress(self.config.journal.poll_interval * 4)
        return own

    async def flush_queue(self, timeout: float | None = None) -> int:
        """Wait until every operation collected before the call is delivered or dead-lettered.

        Waits for the operations of every collector on the journal (any process).
        Returns how many of this collector's own operations it waited for: those it
        collected before the call that were still undelivered (pending or leased)
        when the flush took its snapshot of the journal, at the call. Each has
        since been delivered, stored by a fallback sink, or dead-lettered: dead
        letters are counted too (check ``stats().dead``). Own operations count even
        when another collector or process delivered them; other collectors'
        operations never count. On timeout raises TimeoutError; nothing is lost
        (the operations stay in the journal).

        Example:
            >>> c.collect("bug", "parser fails on empty input")
            >>> await c.flush_queue(timeout=10)
            1
        """
        return await self.flush_snapshot(None, timeout)

    async def flush_snapshot(self, snapshot: OwnSnapshot | None, timeout: float | None = None) -> int:
        """``flush_queue`` from a snapshot taken at the caller's call (MemoryCollector's seam).

        ``snapshot`` comes from ``journal.own_snapshot()`` on the caller's thread (None:
        take it now); this closes it.

        Example:
            >>> await c.flush_snapshot(c.journal.own_snapshot(), timeout=10)
        """
        if self._state != "running":
            if snapshot is not None:
                snapshot.close()
            raise JournalError(f"collector is {self._state}", path=str(self.journal.path))
        with anyio.fail_after(timeout):
            n = await self._flush_all(snapshot)
            await self.monitor.refresh()  # stats() right after a flush shows the drained journal
            return n

    async def flush(self, timeout: float | None = None) -> int:
        """The same as ``flush_queue`` (the name MemoryCollector uses).

        Example:
            >>> await c.flush(timeout=10)
        """
        return await self.flush_queue(timeout)

    def stats(self) -> CollectorStats:
        """A frozen snapshot of counters and journal depth.

        The depth comes from the monitor's last read of the journal, taken off the
        loop (``journal_age`` says how old; ``flush_queue`` refreshes it).

        Example:
            >>> c.stats().delivered
        """
        cache = None if self.cache is None else self.cache.statistics()
        counts, age = self.monitor.journal_counts()
        return snapshot(self.counters, counts, cache, journal_age=age, sink=self.sink)

    def _journal_unusable(self, exc: JournalError) -> None:
        # collect() raises JournalError("collector is stopped, journal unusable: ...") from now on.
        if self._state == "running":
            self._state = f"stopped, {exc}"

    def _breakers(self) -> list[CircuitBreaker]:
        # None until start(): then the sink's own breakers, if it keeps any
        return breakers_of(None if self._consumer is None else self._consumer.breaker, self.sink)

    def _batch_size(self) -> int:
        return self._consumer.batch_size if self._consumer is not None else self.config.async_collection.batch_size

    def health(self) -> Health:
        """A frozen Health snapshot: status and reasons, depth, latencies, rates, sinks.

        Alerts fire from the periodic check (``performance.health_check_interval``),
        not from this call. Example: ``if c.health().status != "ok": ...``
        """
        return self.monitor.snapshot()[0]  # reads the kept gauges; changes nothing

    def add_alert_callback(self, callback: AlertCallback) -> None:
        """Call ``callback(alert)`` (sync or async) once per health status transition.

        Example:
            >>> c.add_alert_callback(lambda alert: print(alert.status, alert.reasons))
        """
        self.monitor.add_callback(callback)

    def remove_alert_callback(self, callback: AlertCallback) -> None:
        """Stop calling ``callback``; ValueError if it was never added.

        Example:
            >>> c.remove_alert_callback(on_alert)
        """
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
        self._config = config
        if self._consumer is not None:
            self._consumer.configure(config)
            self._consumer.wake()
        return config

    def reset_circuit_breaker(self) -> None:
        """Force every breaker of the sink closed (deliveries resume at once).

        Example:
            >>> c.reset_circuit_breaker()
        """
        assert self._consumer is not None
        for b in self._consumer.breakers():
            b.reset()
        self._consumer.wake()



class _Appended:
    """What ``collect_async`` returns in the common case: the id of the operation the
    call appended and committed, with nothing left to wait for.

    ``_Collected`` without its wait and its ``__del__`` (which Python would call on
    every collect only to find nothing to do)."""

    __slots__ = ("_id",)

    def __init__(self, op_id: str) -> None:
        self._id = op_id

    def __await__(self) -> Generator[Any, None, str]:
        return self._id  # every await gives the id, as _Collected's does
        yield  # a generator, as __await__ must return an iterator; never reached


class _Collected:
    """What ``collect_async`` returns: the id of an operation appended by the call,
    or the wait that still has to append it or see it delivered."""

    __slots__ = ("_collector", "_id", "_stored", "_wait")

    def __init__(
        self, op_id: str | None, wait: Coroutine[Any, Any, str] | None, collector: AsyncMemoryCollector,
        category: str,
    ) -> None:
        self._id = op_id
        self._wait = wait
        self._collector = collector
        self._stored = category  # "" once appended; else the category of what waits for room

    def __await__(self) -> Generator[Any, None, str]:
        wait, self._wait = self._wait, None
        if wait is None:
            if self._id is None:
                raise RuntimeError("collect_async's result was already awaited")
            return self._id
        self._stored = ""
        return (yield from wait.__await__())

    def __del__(self) -> None:
        wait = self._wait
        if wait is None:
            return
        wait.close()  # no "never awaited" RuntimeWarning: the error below says more
        if self._stored:  # on_full=block with a full journal: nothing was appended
            self._collector.counters.drops["not_awaited"] += 1
            log.error(
                "a collect_async(%r, ...) waiting for room (on_full=block) was never awaited:"
                " the operation was not stored", self._stored,
            )
