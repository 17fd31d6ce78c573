"""AdaptiveLimit (memwal/_sinks/_limit.py) and how Mem0Sink uses it: slots, timeouts from send, adapting."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from memwal import Mem0Sink, load_config
from memwal._core.errors import CircuitOpen
from memwal._core.records import IdGenerator, MemoryOperation
from memwal._sinks._limit import AdaptiveLimit
from memwal.testing import FakeMem0

pytestmark = pytest.mark.anyio
_ids = IdGenerator()


def ops(n: int) -> list[MemoryOperation]:
    return [MemoryOperation(id=_ids.next()[0], category="bug", content=f"memory {i}", created_at=time.time())
            for i in range(n)]


async def until(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    with anyio.fail_after(timeout):
        while not cond():
            await anyio.sleep(0.005)


def feed(limit: AdaptiveLimit, rtt: float, answers: int, **kw: Any) -> None:
    """``answers`` completed requests of ``rtt`` seconds, each taken at a full limit."""
    for _ in range(answers):
        limit.in_flight += 1
        limit._full = True
        limit.release(rtt, **kw)


def test_grows_while_latency_holds_and_shrinks_when_it_rises() -> None:
    limit = AdaptiveLimit(64, initial=2)
    feed(limit, 0.030, 40)  # no queue: grows one per window
    grown = limit.limit
    assert grown > 4 and limit.increases > 0
    feed(limit, 0.030 * grown, 200)  # latency proportional to the limit: the server only queues
    assert limit.limit < grown and limit.decreases > 0


def test_an_overload_halves_the_limit_within_bounds() -> None:
    limit = AdaptiveLimit(64, initial=16)
    feed(limit, 0.0, 16, overload=True)
    assert limit.limit == 8 and limit.backoffs == 1
    for _ in range(10):
        feed(limit, 0.0, 4, overload=True)
    assert limit.limit == 1  # never below the minimum


def test_never_above_maximum_and_fixed_when_not_adaptive() -> None:
    limit = AdaptiveLimit(3, initial=2)
    feed(limit, 0.01, 100)
    assert limit.limit == 3
    fixed = AdaptiveLimit(5, adaptive=False)
    feed(fixed, 0.01, 10, overload=True)
    assert fixed.limit == 5


def test_idle_client_does_not_grow() -> None:
    limit = AdaptiveLimit(64, initial=2)
    for _ in range(100):  # one request at a time: the limit is never reached
        limit.in_flight += 1
        limit.release(0.01)
    assert limit.limit == 2


async def test_slots_are_given_in_arrival_order_and_a_cancelled_waiter_gives_its_turn_back() -> None:
    limit = AdaptiveLimit(1, adaptive=False)
    await limit.acquire()
    order: list[int] = []

    async def take(n: int) -> None:
        await limit.acquire()
        order.append(n)
        limit.release(None)

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(take, n)
            await until(lambda n=n: limit.queued == n + 1)  # type: ignore[misc]
        with anyio.CancelScope() as scope:
            scope.cancel()
            await limit.acquire()  # cancelled while waiting: leaves the queue
        assert limit.queued == 3
        limit.release(None)
    assert order == [0, 1, 2] and limit.in_flight == 0


async def test_timeout_counts_from_send_not_while_waiting_for_a_slot() -> None:
    # 10 adds, two at a time, 0.3 s each: the last waits 1.2 s for a slot. A timeout of
    # 0.6 s counted from the call (aiohttp's total, pool wait included) fails most of them.
    async with FakeMem0(api="oss", latency=0.3) as fake:
        sink = Mem0Sink(fake.url, user_id="u", timeout=0.6)
        sink.bind(load_config({"performance": {"max_concurrent_ops": 2, "adaptive_concurrency": False,
                                               "operation_timeout": 30}}), time.monotonic)
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, fake.in_flight)
                await anyio.sleep(0.01)

        async with sink, anyio.create_task_group() as tg:
            tg.start_soon(watch)
            assert await sink.deliver(ops(10)) is None
            tg.cancel_scope.cancel()
        assert most <= 2 and len(fake.memories) == 10 and sink.counts["ambiguous"] == 0


async def test_operations_without_a_slot_in_time_are_handed_back_unsent() -> None:
    async with FakeMem0(api="oss", latency=0.5) as fake:
        sink = Mem0Sink(fake.url, user_id="u", timeout=2)
        # operation_timeout - timeout leaves less than the margin: a delivery may start
        # requests for operation_timeout / 4 = 0.625 s, two rounds of two at most
        sink.bind(load_config({"performance": {"max_concurrent_ops": 2, "adaptive_concurrency": False,
                                               "operation_timeout": 2.5}}), time.monotonic)
        async with sink:
            batch = ops(8)
            report = await sink.deliver(batch)
            assert report is not None
            unsent = [i for i, e in report.failed.items() if isinstance(e, CircuitOpen)]
            assert len(unsent) == len(report.failed) >= 4 and len(fake.memories) == 8 - len(unsent)
            assert sink.ledger.state(unsent) == {}  # never sent: no look-up when they come back
        assert fake.requests["POST /memories"] == len(fake.memories)


async def test_against_a_server_with_a_capacity_the_limit_stays_small_and_nothing_times_out() -> None:
    async with FakeMem0(api="oss", capacity=200, workers=2) as fake:  # 10 ms per add, two at a time
        sink = Mem0Sink(fake.url, user_id="u")
        sink.bind(load_config({"performance": {"max_concurrent_ops": 64}}), time.monotonic)
        async with sink:
            assert await sink.deliver(ops(600)) is None
            snap = sink.concurrency()
        assert 2 <= snap["limit"] <= 12 and snap["min_rtt"] > 0
        assert sink.counts["ambiguous"] == 0 and len(fake.memories) == 600


async def test_the_limit_shows_in_stats_health_and_metrics(tmp_path: Any) -> None:
    from memwal import AsyncMemoryCollector
    from memwal._observe.metrics import metrics_text

    async with FakeMem0(api="oss") as fake:
        sink = Mem0Sink(fake.url, user_id="u")
        config = load_config({"performance": {"max_concurrent_ops": 16}, "journal": {"poll_interval": 0.01}})
        async with AsyncMemoryCollector(tmp_path / "j.journal", sink, config=config) as c:
            await c.collect_async("bug", "one")
            await c.flush_queue(timeout=30)
            stats, health, text = c.stats(), c.health(), metrics_text(c)
    assert stats.sink_concurrency["Mem0Sink(oss)"]["limit"] == 2  # the start: it grows when the limit is used
    assert health.sink_concurrency["Mem0Sink(oss)"]["limit"] == 2
    assert health.sink_concurrency["Mem0Sink(oss)"]["in_flight"] == 0
    assert 'memwal_sink_concurrency_limit{sink="Mem0Sink(oss)"} 2' in text
    assert 'memwal_sink_requests_in_flight{sink="Mem0Sink(oss)"} 0' in text
