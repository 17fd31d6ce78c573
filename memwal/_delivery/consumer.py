"""The anyio delivery loop: lease -> deliver (grouped by category) -> settle, plus housekeeping.

When to lease and what to ack, retry, dead-letter or release are decided in ``plan``
(plain functions); the loop only does the I/O. Journal calls run whole on a worker thread.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel

from .._core.config import Config
from .._core.errors import CircuitOpen, JournalError, SinkRejected, SinkUnavailable
from .._journal import heartbeat
from .._journal.journal import Journal, LeasedOp, Settlement, decode_rows
from .._observe.stats import Counters
from .._policy.adaptive import AdaptiveBatcher
from .._policy.breaker import CircuitBreaker, breaker_for, breakers_of, retry_in
from .._policy.retry import backoff_delay
from .._policy.throttle import TokenBucket
from .._sinks.base import DeliveryReport, Sink
from .._sinks.call import Outcome, call_sink, deliver_isolating, is_unexpected, should_bisect
from .plan import LeaseView, describe, group_by_category, journal_unusable, plan, plan_with, when_to_lease

if TYPE_CHECKING:
    import asyncio

__all__ = ["Consumer"]

log = logging.getLogger("memwal")

DECODE_SLICE = 64  # rows decoded on the loop between checkpoints
# The lease reads on the loop while its last read of rows moved at most this many
# payload bytes and no large row was collected here since (a VM-step budget does
# not bound the time spent reading large rows).
LOOP_READ_BYTES = 1 << 20


class Unsettled:
    """A batch whose settlement failed to commit, and how many of its statements did."""

    __slots__ = ("leased", "progress", "settlement")

    def __init__(self, leased: list[LeasedOp], settlement: Settlement, progress: list[int]) -> None:
        self.leased = leased
        self.settlement = settlement
        self.progress = progress


def _ids(leased: Sequence[LeasedOp]) -> str:
    """The operation ids of ``leased`` for a log line (the first 20, then how many more)."""
    ids = [g.op.id for g in leased[:20]]
    more = len(leased) - len(ids)
    return ", ".join(ids) + (f" and {more} more" if more else "")


class Consumer:
    """One per collector: leases ready rows and delivers them to the sink."""

    def __init__(
        self,
        journal: Journal,
        sink: Sink,
        config: Config,
        *,
        counters: Counters,
        clock: Callable[[], float] = time.monotonic,
        on_fatal: Callable[[JournalError], None] | None = None,
    ) -> None:
        self.journal = journal
        self.on_fatal = on_fatal  # told once when the journal is unusable for good
        self.fatal: JournalError | None = None
        self.sink = sink
        self.config = config
        self.counters = counters
        self.clock = clock
        self.breaker = breaker_for(sink, config.circuit_breaker, clock=clock, on_change=counters.breaker_changed)
        self.batch_size = config.async_collection.batch_size
        self.batcher = self._make_batcher(config)
        self.limiter = anyio.CapacityLimiter(config.performance.max_concurrent_ops)
        self.bucket = TokenBucket(config.async_collection.rate_limit, clock=clock)
        self.max_inflight = config.performance.max_inflight_batches
        self.task_group: anyio.abc.TaskGroup | None = None
        self._wake = anyio.Event()
        self._wake_requested = False
        self._progress = anyio.Event()
        self._idle = anyio.Event()
        self._inflight = 0
        self._inflight_ops = 0  # rows leased by in-flight batches
        self._unready = 0  # rows the last short lease left behind: backing off, leased elsewhere
        self._read_on_loop = True  # the last lease's rows were small enough to read on the loop
        self._last_read = 0  # rows the last lease read
        self._checkpointing = False
        self._ack_gate: anyio.Event | None = None  # set while a normal-mode checkpoint syncs: acks wait
        self._urgent = False  # a flush or a blocking collect waits: lease partial batches at once
        self._gathering = False  # napping while a batch is in flight and the next one fills
        self._last_lease = -math.inf  # anyio.current_time() when the last non-empty lease began
        self.settling = 0  # batches whose rows may have left the journal, not yet counted
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._unexpected: set[type[BaseException]] = set()
        self._fsyncs = journal.config.durability == "full"
        # Settlements that failed to commit (a full disk): their outcomes, acks and
        # retry bookkeeping alike, wait here and are committed before the next lease,
        # so no row stays leased by this live process and no outcome is lost.
        self._unsettled: list[Unsettled] = []

    @staticmethod
    def _make_batcher(config: Config) -> AdaptiveBatcher | None:
        ac = config.async_collection
        if not ac.adaptive_batching:
            return None
        return AdaptiveBatcher(ac.batch_size, ac.min_batch_size, ac.max_batch_size)

    def configure(self, config: Config) -> None:
        """Take a new config on a live consumer (only TUNABLE settings may differ)."""
        old, self.config = self.config.async_collection, config
        ac = config.async_collection
        if (ac.batch_size, ac.min_batch_size, ac.max_batch_size) != (old.batch_size, old.min_batch_size,
                                                                     old.max_batch_size):
            self.batch_size = ac.batch_size
            if self.batcher is not None:
                self.batcher.set_bounds(ac.batch_size, ac.min_batch_size, ac.max_batch_size)
        self.limiter.total_tokens = config.performance.max_concurrent_ops
        self.max_inflight = config.performance.max_inflight_batches
        if ac.rate_limit != old.rate_limit:
            self.bucket.set_rate(ac.rate_limit)

    # -- signals -----------------------------------------------------------------

    def wake(self, *, urgent: bool = False) -> None:
        """Tell the loop something changed (a flush, a setting, a breaker); any thread.

        ``urgent`` (a flush, a blocking collect) also lets the loop lease a partial
        batch while another is in flight or the linger runs.
        """
        if urgent:
            self._urgent = True
        if not self._wake_requested:
            self._kick()

    def collected(self) -> None:
        """A collect appended a row: wake the loop, unless it gathers rows for a batch.

        While rows gather (behind an in-flight batch, or in the linger) the loop wakes
        by itself when the batch settles or the linger ends, so a collect wakes it only
        once a whole batch waits. Waking it for every collect only to nap again costs
        the loop's thread (where collect runs) an Event and a cancel scope each time.
        ``_wake_requested`` stays set until the loop consumes the event, so a burst of
        collects costs one Event.set (or one call_soon_threadsafe), not one each.
        """
        if self._wake_requested or (self._gathering and not self._batch_waits()):
            return
        self._kick()

    def _kick(self) -> None:
        self._wake_requested = True
        if threading.get_ident() == self._thread:
            self._wake.set()
        elif self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # loop closed during shutdown
                pass

    async def _nap(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._wake.wait()
        if self._wake.is_set():
            self._wake = anyio.Event()
            self._wake_requested = False

    def _signal_progress(self) -> None:
        ev, self._progress = self._progress, anyio.Event()
        ev.set()
        self._wake.set()  # the lease loop may be waiting for a batch to settle

    async def wait_progress(self, timeout: float) -> None:
        """Wait until a batch settles here, or ``timeout`` (other processes settle too)."""
        ev = self._progress
        with anyio.move_on_after(timeout):
            await ev.wait()

    # -- the loop ----------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        import asyncio  # here, not at import: `import memwal` stays light

        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        await anyio.to_thread.run_sync(self.journal.recover)
        await self._beat()
        try:
            async with anyio.create_task_group() as tg:
                self.task_group = tg
                tg.start_soon(self._housekeeping)
                if self.sink.reconciles and self.config.fallback.reconcile:
                    tg.start_soon(self._reconciler)
                task_status.started()
                await self._lease_loop(tg)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                # The journal checkpoints when it closes: under `normal` the acks it
                # makes durable then must find the sink's copies durable already.
                if self.config.journal.durability == "normal" and await self._sync_sink() is not None:
                    log.error("%s could not sync at shutdown: a power cut now could lose what it stored", self.sink.name)
                if self._unsettled and not await self._settle_unsettled():
                    for u in self._unsettled:  # released below if the journal takes that write
                        log.error("shutdown: cannot settle %d operations; they will be delivered again: %s",
                                  len(u.leased), _ids(u.leased))
                released = await anyio.to_thread.run_sync(self.journal.release_mine)
                if released:
                    log.info("released %d leased operations at shutdown; they stay in the journal", released)
                await self._beat(leave=True)
            self._idle.set()

    async def stop(self, timeout: float) -> None:
        """Stop leasing, let in-flight batches finish within ``timeout`` seconds."""
        self._stopping = True
        self._wake.set()
        # Not shielded: a cancelled close (the collector's abort) stops waiting at once.
        with anyio.move_on_after(timeout):
            await self._idle.wait()
        if not self._idle.is_set() and self.task_group is not None:
            why = "the sink is down" if timeout <= 0 else "shutdown timeout"
            log.warning("%s: cancelling in-flight deliveries; their rows stay in the journal", why)
            self.task_group.cancel_scope.cancel()
            await self._idle.wait()

    def _journal_failed(self, exc: BaseException) -> None:
        """Stop the collector's collects (``on_fatal``) when ``exc`` says the journal is unusable for good."""
        reason = journal_unusable(exc)
        if reason is None or self.fatal is not None:
            return
        self.fatal = JournalError(f"journal unusable: {reason}")
        log.critical("%s (journal %s); the collector stops, the rows stay in the file", self.fatal, self.journal.path)
        if self.on_fatal is not None:
            self.on_fatal(self.fatal)

    def _batch_waits(self) -> bool:
        """A whole batch is ready to lease, or the journal is at its bound (collects wait for room).

        As far as this process knows without a query: rows in the journal, less those
        in flight here and those the last short lease found not ready.
        """
        depth = self.journal.depth_estimate
        return (depth - self._inflight_ops - self._unready >= self.batch_size
                or depth >= self.config.async_collection.max_queue_size)

    def breakers(self) -> list[CircuitBreaker]:
        """Every breaker guarding this consumer's deliveries."""
        return breakers_of(self.breaker, self.sink)

    def _breaker_wait(self) -> float:
        return retry_in(self.breakers())

    def breaker_wait(self) -> float:
        """Seconds until a breaker lets a delivery through (0: deliveries may go now)."""
        return self._breaker_wait()

    @property
    def inflight(self) -> int:
        """Batches being delivered now."""
        return self._inflight

    async def _lease_loop(self, tg: anyio.abc.TaskGroup) -> None:
        poll = self.config.journal.poll_interval
        while not self._stopping:
            if self._unsettled and self.fatal is None and not await self._settle_unsettled():
                await self._nap(max(poll, 1.0))  # still no room: the rows stay leased by us
                continue
            ac = self.config.async_collection
            step, seconds = when_to_lease(LeaseView(
                fatal=self.fatal is not None, inflight=self._inflight, max_inflight=self.max_inflight,
                urgent=self._urgent, batch_waits=self._batch_waits(),
                linger_left=self._last_lease + min(ac.batch_linger, ac.batch_timeout) - anyio.current_time(),
                breaker_wait=self._breaker_wait(), poll=poll,
            ))
            if step == "progress":
                await self.wait_progress(seconds)
                continue
            if step == "gather":
                await self._gather(seconds)
                continue
            if step == "nap":
                await self._nap(seconds)
                continue
            began = anyio.current_time()
            try:
                leased, bad = await self._lease(self.batch_size)
            except Exception as exc:  # disk trouble or a bug: keep trying, rows stay in the journal
                self.counters.fault("lease", exc)
                self._journal_failed(exc)
                log.error("cannot lease from the journal, retrying: %r", exc,
                          exc_info=None if isinstance(exc, JournalError) else exc)
                await self._nap(max(poll, 1.0))
                continue
            for op_id, reason in bad:
                self.counters.dead += 1
                log.error("operation %s dead-lettered: %s", op_id, reason)
            if not leased:
                self._note_unready()
                await self._nap(poll)
                continue
            self._last_lease = began
            self._inflight += 1
            self._inflight_ops += len(leased)
            self._note_unready()
            tg.start_soon(self._process, leased)
            if self.journal.checkpoint_due and not self._checkpointing:
                # Checkpoint by the WAL's growth, not on a timer: at tens of thousands
                # of collects a second, a WAL checkpointed once a second grows to
                # hundreds of MB, and every page another connection's commit makes
                # collect() re-read is looked up through all of it.
                tg.start_soon(self._checkpoint, False)
        while self._inflight:
            await self.wait_progress(poll)

    async def _gather(self, seconds: float) -> None:
        """Nap while rows gather for a batch; a settle, an urgent wake or a whole batch ends it."""
        self._gathering = True
        try:
            await self._nap(seconds)
        finally:
            self._gathering = False

    def _note_unready(self) -> None:
        # A read that returned fewer rows than it asked for saw every ready row: the
        # rest are not ready (backing off, leased by another consumer), so they must
        # not count toward a whole batch, or each collect would end the linger and
        # every lease would read them again for nothing. A full read knows nothing.
        short = self._last_read < self.batch_size
        self._unready = max(0, self.journal.depth_estimate - self._inflight_ops) if short else 0

    async def _checkpoint(self, idle: bool) -> None:
        """The lease loop's and housekeeping's checkpoint: one at a time.

        With ``durability: normal`` the checkpoint is what makes acks durable, so it
        closes the ack gate, syncs the sink, checkpoints, then opens the gate: every
        ack it makes durable was for a delivery the sink's sync covered.
        """
        if self._checkpointing or not self.journal.checkpoint_wanted(idle=idle):
            return
        self._checkpointing = True
        gate = None
        try:
            if self.config.journal.durability == "normal":
                gate = self._ack_gate = anyio.Event()
                if await self._sync_sink() is not None:
                    return  # no checkpoint, so no ack becomes durable; tried again later
            await anyio.to_thread.run_sync(functools.partial(self.journal.maybe_checkpoint, idle=idle))
        except Exception as exc:  # noqa: BLE001  (a failed checkpoint must not reach the caller; the next retries)
            self.counters.fault("checkpoint", exc)
            log.warning("journal checkpoint failed: %r", exc)
        finally:
            self._checkpointing = False
            if gate is not None:
                self._ack_gate = None
                gate.set()

    async def _sync_sink(self) -> SinkUnavailable | None:
        """``sink.sync()`` within the operation timeout; the error if it failed."""
        try:
            with anyio.fail_after(self.config.performance.operation_timeout):
                await self.sink.sync()
        except Exception as exc:  # noqa: BLE001  (the acks wait; the caller decides)
            log.warning("%s sync failed, acknowledgements wait: %r", self.sink.name, exc)
            return exc if isinstance(exc, SinkUnavailable) else SinkUnavailable(f"{self.sink.name} sync: {exc!r}")
        return None

    async def _ack_ready(self) -> SinkUnavailable | None:
        """Wait until acks may commit: ``full`` (each ack is durable at commit): the sink
        is synced first; ``normal``: no checkpoint is between its sink sync and its end."""
        if self.config.journal.durability == "full":
            return await self._sync_sink()
        while self._ack_gate is not None:
            await self._ack_gate.wait()
        return None

    async def _durable_first(self, leased: list[LeasedOp], s: Settlement) -> Settlement:
        """``s``, or, when the sink could not make the deliveries durable, ``s`` with
        its acked and held rows retried instead (they stay in the journal)."""
        if not (s.acked or s.held):
            return s
        err = await self._ack_ready()
        if err is None:
            return s
        keys = {*s.acked, *(k for k, _ in s.held)}
        again = plan_with([g for g in leased if g.key in keys], err, self.config.async_collection, self.journal.clock())
        log.warning("%d delivered operations stay in the journal: the sink's sync failed", len(keys))
        return Settlement(acked=[], retry=[*s.retry, *again.retry], dead=[*s.dead, *again.dead], held=[],
                          release=s.release)

    async def _process(self, leased: list[LeasedOp]) -> None:
        try:
            parts: list[Settlement] = []
            async with anyio.create_task_group() as tg:
                for group in group_by_category(leased, self.batch_size):
                    tg.start_soon(self._deliver_group, group, parts)
            merged = Settlement(
                acked=[k for p in parts for k in p.acked],
                retry=[r for p in parts for r in p.retry],
                dead=[d for p in parts for d in p.dead],
                held=[h for p in parts for h in p.held],
                release=[k for p in parts for k in p.release],
            )
            merged = await self._durable_first(leased, merged)
            self.settling += 1
            progress = [0]
            try:
                with anyio.CancelScope(shield=True):
                    await self._settle(merged, progress)
                self.counters.settled(leased, merged, self.journal.clock())
                self._unready += len(merged.retry)  # back in the journal, backing off
            except Exception as exc:
                self.counters.fault("settle", exc)
                if isinstance(exc, JournalError) and journal_unusable(exc) is None:
                    # A full disk, a lock: keep the outcomes and commit them before the
                    # next lease (``_settle_unsettled``); the rows stay leased meanwhile.
                    self._unsettled.append(Unsettled(leased, merged, progress))
                    log.warning("cannot settle %d operations yet (%s); settling again before the next lease: %s",
                                len(leased), exc, _ids(leased))
                else:
                    # The rows stay leased until their lease expires, then are delivered
                    # again: at-least-once, and sinks are idempotent on the id.
                    log.error("cannot settle %d operations (%r); they will be redelivered: %s", len(leased), exc,
                              _ids(leased), exc_info=None if isinstance(exc, JournalError) else exc)
            finally:
                self.settling -= 1
        finally:
            self._inflight -= 1
            self._inflight_ops -= len(leased)
            if not self._inflight:
                self._urgent = False
            self._signal_progress()

    # -- journal writes that spare collect() ---------------------------------------
    #
    # Claims and acks run on the loop's thread when the journal's writer lock is free
    # at once (``write_now``); otherwise on a worker thread. A worker holding the
    # writer lock needs the GIL back to release it, so a collect() on the loop could
    # wait for the worker's next GIL turn; on the loop, a collect and a claim simply
    # take turns. Rows are decoded on the loop too, in slices, so no worker holds the
    # GIL for a whole batch while collect() waits for it.

    async def _write(self, sql: str, params: Any, *, removes: Sequence[int] = ()) -> int:
        # With durability full each commit fsyncs: never on the loop's thread.
        n = None if self._fsyncs else self.journal.write_now(sql, params, removes=removes)
        if n is None:
            n = await anyio.to_thread.run_sync(functools.partial(self.journal.write_one, sql, params, removes=removes))
        return n

    async def _lease(self, n: int) -> tuple[list[LeasedOp], list[tuple[str, str]]]:
        large, self.journal.large_appended = self.journal.large_appended, False
        got = self.journal.select_ready_now(n) if self._read_on_loop and not large else None
        if got is None:  # the read would wait, run long or move many bytes: off the loop
            got = await anyio.to_thread.run_sync(functools.partial(self.journal.select_ready, n))
        rows, now = got
        self._last_read = len(rows)
        if rows:  # an empty read says nothing about the size of the next rows
            self._read_on_loop = sum(len(r[4]) for r in rows) <= LOOP_READ_BYTES
        good: list[LeasedOp] = []
        bad: list[tuple[int, str, str]] = []
        for i in range(0, len(rows), DECODE_SLICE):
            if i:
                await anyio.lowlevel.checkpoint()
            g, b = decode_rows(rows[i : i + DECODE_SLICE])
            good += g
            bad += b
        if bad:
            await anyio.to_thread.run_sync(self.journal.dead_letter, bad, now)
        claimed: set[int] = set()
        for sql, params, keys in self.journal.claim_statements("ops", good, now):
            if await self._write(sql, params) == len(keys):
                claimed.update(keys)
            else:  # another consumer leased some of them after our snapshot read
                claimed.update(await anyio.to_thread.run_sync(self.journal.claimed_keys, "ops", params))
        return [g for g in good if g.key in claimed], [(op_id, reason) for _, op_id, reason in bad]

    async def _settle(self, s: Settlement, progress: list[int] | None = None) -> None:
        """Commit ``s``; ``progress[0]`` counts its statements committed (a retry skips them)."""
        statements = self.journal.settle_statements(s)
        if statements is None:  # dead letters, held rows or retention: one transaction
            await anyio.to_thread.run_sync(self.journal.settle, s)
            return
        done = progress if progress is not None else [0]
        for sql, params, removed in statements[done[0]:]:
            await self._write(sql, params, removes=removed)
            done[0] += 1

    async def _settle_unsettled(self) -> bool:
        """Commit the settlements that failed before (oldest first); False if one still fails."""
        while self._unsettled:
            u = self._unsettled[0]
            try:
                with anyio.CancelScope(shield=True):
                    await self._settle(u.settlement, u.progress)
            except Exception as exc:  # noqa: BLE001  (still no room: tried again after a nap)
                log.debug("still cannot settle %d operations: %r", len(u.leased), exc)
                return False
            self._unsettled.pop(0)
            self.counters.settled(u.leased, u.settlement, self.journal.clock())
            self._unready += len(u.settlement.retry)
            log.warning("settled %d operations whose settlement had failed: %s", len(u.leased), _ids(u.leased))
            self._signal_progress()
        return True

    async def _deliver_group(self, group: list[LeasedOp], parts: list[Settlement]) -> None:
        """Deliver one category's batch, isolating poison operations, and plan each part."""
        planned: set[int] = set()
        try:
            # Bisection stays well inside the lease, so no other consumer takes the rows over.
            until = anyio.current_time() + self.journal.config.lease_seconds / 2
            parts_out = await deliver_isolating(self._call, group, time_left=lambda: until - anyio.current_time())
            for part, outcome in parts_out:
                s = plan_with(part, outcome, self.config.async_collection, self.journal.clock())
                if s.held and not self.config.fallback.reconcile:
                    # Nobody will re-send them: the fallback's copy is final, so acknowledge.
                    self.counters.fallback += len(s.held)
                    s.acked.extend(k for k, _ in s.held)
                    s.held.clear()
                parts.append(s)
                planned.update(g.key for g in part)
        except Exception as exc:  # a bug here must not strand leased rows
            self.counters.fault("deliver", exc)
            log.error("delivering %d operations failed unexpectedly; releasing them: %r", len(group), exc,
                      exc_info=exc)
            parts.append(Settlement(acked=[], retry=[], dead=[], held=[],
                                    release=[g.key for g in group if g.key not in planned]))

    async def _call(self, group: list[LeasedOp]) -> Outcome:
        """One sink call for ``group``: rate limit, concurrency cap, timeout, breaker, counters."""
        ops = [g.op for g in group]
        delay = self.bucket.delay(len(ops))
        if delay:
            await anyio.sleep(delay)
        timeout = self.config.performance.operation_timeout * (len(self.sink.breakers()) or 1)
        started = self.clock()
        async with self.limiter:
            outcome = await call_sink(self.sink.deliver, ops, name=self.sink.name, timeout=timeout,
                                      breaker=self.breaker)
        elapsed = self.clock() - started
        if outcome is None or isinstance(outcome, DeliveryReport):
            self.counters.sink_call(len(ops), elapsed)
        elif is_unexpected(outcome):
            self.counters.fault("sink", outcome)
            first = type(outcome) not in self._unexpected
            self._unexpected.add(type(outcome))
            log.error("unexpected error from %s delivering %d operations (%s%s): %r", self.sink.name, len(ops),
                      ", ".join(op.id for op in ops[:3]), ", ..." if len(ops) > 3 else "", outcome,
                      exc_info=outcome if first else None)
        if should_bisect(outcome, len(ops)):
            self.counters.bisections += 1
            log.warning("batch of %d failed as a whole (%s); splitting it to isolate the cause",
                        len(ops), describe(outcome))  # type: ignore[arg-type]  # should_bisect: an exception
        elif self.batcher is not None and not isinstance(outcome, CircuitOpen | SinkRejected) \
                and not is_unexpected(outcome):
            # a transient failure shrinks the batch; a rejection or a bug says nothing about its size
            failed = isinstance(outcome, BaseException)
            self.batch_size = self.batcher.observe(len(ops), elapsed, error=failed)
        return outcome

    # -- background chores -------------------------------------------------------

    async def _housekeeping(self) -> None:
        tick = 0
        seen = self.counters.collected
        while True:
            await anyio.sleep(1.0)
            tick += 1
            idle, seen = self.counters.collected == seen, self.counters.collected
            try:
                await self._checkpoint(idle)
                await anyio.to_thread.run_sync(self.journal.refresh_depth)
                if tick % int(heartbeat.INTERVAL) == 0:
                    await self._beat()
                if tick % 5 == 0:
                    await anyio.to_thread.run_sync(self.journal.recover)
                if self.config.journal.retention_seconds > 0 and tick % 10 == 0:
                    await anyio.to_thread.run_sync(self.journal.purge_done)
            except Exception as exc:  # noqa: BLE001  (a chore failing must not stop delivery)
                self.counters.fault("housekeeping", exc)
                log.warning("journal housekeeping failed: %s", exc)

    async def _beat(self, *, leave: bool = False) -> None:
        """Refresh (or at close remove) this collector's heartbeat; a failure is logged, never raised."""
        try:
            await anyio.to_thread.run_sync(heartbeat.leave if leave else heartbeat.beat, self.journal)
        except Exception as exc:  # noqa: BLE001  (liveness is advisory: delivery must go on)
            log.warning("journal heartbeat failed: %s", exc)

    async def _reconciler(self) -> None:
        """Send rows a fallback holds to the primary; a failed round is logged, counted and retried."""
        bucket = TokenBucket(self.config.fallback.reconcile_rate, clock=self.clock)
        failures = 0
        while True:
            try:
                await self._reconcile_round(bucket)
                failures = 0
            except Exception as exc:  # a journal hiccup must not reach the caller
                self.counters.fault("reconciler", exc)
                log.error("reconciliation failed, retrying with backoff: %r", exc,
                          exc_info=exc if failures == 0 else None)
                ac = self.config.async_collection
                await anyio.sleep(backoff_delay(failures, max(ac.retry_delay, 0.1), ac.max_retry_delay,
                                                lambda: 0.5 + random.random() / 2))
                failures += 1

    async def _reconcile_round(self, bucket: TokenBucket) -> None:
        leased = await anyio.to_thread.run_sync(self.journal.lease_held, self.batch_size)
        if not leased:
            await anyio.sleep(max(self.config.journal.poll_interval, 0.5))
            return
        try:
            delay = bucket.delay(len(leased))
            if delay:
                await anyio.sleep(delay)
            outcome = await call_sink(self.sink.reconcile, [g.op for g in leased], name=self.sink.name,
                                      timeout=self.config.performance.operation_timeout)
            if is_unexpected(outcome):
                self.counters.fault("sink", outcome)  # type: ignore[arg-type]  # is_unexpected: an exception
                log.error("unexpected error from %s reconciling %d operations: %r", self.sink.name, len(leased),
                          outcome)
            s = plan(
                leased, outcome, max_retries=1 << 30, retry_delay=self.config.async_collection.retry_delay,
                max_retry_delay=self.config.async_collection.max_retry_delay, now=self.journal.clock(),
            )
            if s.acked and await self._ack_ready() is not None:  # the primary's copy is not durable yet
                s.release.extend(s.acked)
                s.acked.clear()
        except BaseException:
            # Cancelled (shutdown) or broken before settling: give the rows back now.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.journal.settle_held, [], [], [g.key for g in leased])
            raise
        # A primary that rejects an operation outright keeps it only in the fallback.
        for key, reason in s.dead:
            log.warning("reconcile: primary rejected held row %d (%s); it stays in the fallback", key, reason)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(
                self.journal.settle_held, s.acked + [k for k, _ in s.dead], s.retry, s.release
            )
        for g in leased:
            if g.key in s.acked:
                log.info("operation %s reconciled to the primary", g.op.id)
        self.counters.reconciled += len(s.acked)
        if s.release or s.retry:
            await anyio.sleep(max(self._breaker_wait(), self.config.journal.poll_interval))
