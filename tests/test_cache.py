"""MemoryCache on its own: hits, misses, TTL, LRU, byte budget, invalidation, threads."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers import fast_config

from memwal import AsyncMemoryCollector, MemoryCache, MemoryOperation
from memwal._core.config import CacheConfig
from memwal._reads.cache import _MAX_QUEUED, estimate_bytes
from memwal.testing import ManualClock, MemorySink

MISS = object()


def op(op_id: str = "x", category: str = "bug", project: str | None = None) -> MemoryOperation:
    return MemoryOperation(id=op_id, category=category, content="c", project=project)


def fill(cache: MemoryCache, key: object, value: object, scope: tuple[str | None, str | None] | None = None,
         pending: bool = False) -> bool:
    return cache.put(key, value, cache.token(), scope=scope, pending=pending)  # type: ignore[arg-type]


def test_hits_and_misses_are_counted_in_a_frozen_snapshot() -> None:
    cache = MemoryCache(max_size=10, ttl=60, timer=ManualClock())
    assert cache.get("a", MISS) is MISS
    fill(cache, "a", 1)
    assert cache.get("a") == 1
    assert cache.get("a") == 1
    s = cache.statistics()
    assert (s.hits, s.misses, s.size, s.evictions) == (2, 1, 1, 0)
    assert s.hit_rate == pytest.approx(2 / 3)
    with pytest.raises(AttributeError):
        s.hits = 5  # type: ignore[misc]


def test_entries_expire_after_the_ttl_on_the_injected_clock() -> None:
    clock = ManualClock()
    cache = MemoryCache(max_size=10, ttl=300, timer=clock)
    fill(cache, "a", 1)
    clock.advance(299.9)
    assert cache.get("a", MISS) == 1
    clock.advance(0.2)
    assert cache.get("a", MISS) is MISS
    s = cache.statistics()
    assert (s.size, s.expired, s.evictions) == (0, 1, 0)


def test_the_least_recently_used_entry_is_evicted_at_max_size() -> None:
    cache = MemoryCache(max_size=3, ttl=60, timer=ManualClock())
    for k in "abc":
        fill(cache, k, k)
    assert cache.get("a") == "a"  # a is now the most recently used; b the least
    fill(cache, "d", "d")
    assert cache.get("b", MISS) is MISS
    assert [cache.get(k, MISS) for k in "acd"] == ["a", "c", "d"]
    s = cache.statistics()
    assert (s.size, s.evictions) == (3, 1)


def test_the_byte_budget_bounds_the_footprint_and_counts_evictions() -> None:
    value = ("x" * 500,)
    one = estimate_bytes(("k", 0), value)
    cache = MemoryCache(max_size=1000, ttl=60, max_bytes=one * 4 + 10, timer=ManualClock())
    for i in range(10):
        assert fill(cache, ("k", i), value)
    s = cache.statistics()
    assert s.size == 4 and s.evictions == 6
    assert s.bytes <= s.max_bytes  # type: ignore[operator]
    assert [cache.get(("k", i), MISS) is not MISS for i in range(10)] == [False] * 6 + [True] * 4


def test_a_value_larger_than_the_whole_byte_budget_is_not_kept() -> None:
    cache = MemoryCache(max_size=10, ttl=60, max_bytes=600, timer=ManualClock())
    assert not fill(cache, "big", ("x" * 5000,))
    assert cache.get("big", MISS) is MISS and len(cache) == 0


def test_max_size_still_bounds_entries_under_a_byte_budget() -> None:
    cache = MemoryCache(max_size=2, ttl=60, max_bytes=10**9, timer=ManualClock())
    for k in "abc":
        fill(cache, k, k)
    assert len(cache) == 2 and cache.statistics().evictions == 1


def _invalidate(cache: MemoryCache, o: MemoryOperation) -> None:
    cache.invalidate(o)


def _collected(cache: MemoryCache, o: MemoryOperation) -> None:
    cache.collected(o.category, o.project)  # collect()'s hot path: queued, stamped by the next read


def _queue_scope(cache: MemoryCache, o: MemoryOperation) -> None:
    cache.queue_scope((o.category, o.project))  # the collector's form of collected()
    cache.bound_queue()


WRITE_PATHS = pytest.mark.parametrize(
    "write", [_invalidate, _collected, _queue_scope], ids=["invalidate", "collected", "queue_scope"]
)


@WRITE_PATHS
def test_a_collected_operation_voids_exactly_the_scopes_it_can_change(write: Any) -> None:
    cache = MemoryCache(timer=ManualClock())
    scopes = [(None, None), ("bug", None), ("feedback", None), (None, "p1"), (None, "p2"),
              ("bug", "p1"), ("bug", "p2")]
    for s in scopes:
        fill(cache, s, "v", scope=s)
    write(cache, op(category="bug", project="p1"))
    alive = [s for s in scopes if cache.get(s, MISS) is not MISS]
    assert alive == [("feedback", None), (None, "p2"), ("bug", "p2")]
    assert cache.statistics().invalidated == 4


@WRITE_PATHS
def test_an_operation_without_project_leaves_project_filtered_entries(write: Any) -> None:
    cache = MemoryCache(timer=ManualClock())
    fill(cache, "p", "v", scope=(None, "p1"))
    fill(cache, "cp", "v", scope=("bug", "p1"))
    write(cache, op(category="bug", project=None))
    assert cache.get("p") == "v" and cache.get("cp") == "v"


@WRITE_PATHS
def test_a_write_during_a_read_makes_that_read_unservable(write: Any) -> None:
    cache = MemoryCache(timer=ManualClock())
    token = cache.token()  # the reader starts reading the journal and sink here
    write(cache, op(category="bug"))  # a collect lands meanwhile
    assert not cache.put("q", "result without the new op", token, scope=("bug", None))
    assert cache.get("q", MISS) is MISS
    # A write to another scope does not spoil it.
    token = cache.token()
    write(cache, op(category="feedback"))
    assert cache.put("q", "fresh", token, scope=("bug", None))
    assert cache.get("q") == "fresh"


def test_collect_discards_the_get_entry_of_its_id_and_of_a_dropped_one() -> None:
    cache = MemoryCache(timer=ManualClock())
    for i in ("a", "b", "c"):
        fill(cache, ("get", i), i)
    cache.invalidate(op("a"), dropped="b")
    assert [cache.get(("get", i), MISS) for i in "abc"] == [MISS, MISS, "c"]


def test_a_dropped_pending_operation_voids_entries_holding_journal_results() -> None:
    cache = MemoryCache(timer=ManualClock())
    fill(cache, "pending", "v", scope=("bug", "p"), pending=True)
    fill(cache, "stored", "v", scope=("bug", "p"))
    cache.invalidate(op(category="other", project="q"), dropped="some-pending-id")
    assert cache.get("pending", MISS) is MISS
    assert cache.get("stored") == "v"


def test_settled_operations_void_only_entries_holding_journal_results() -> None:
    cache = MemoryCache(timer=ManualClock())
    cache.note_settled(3)
    fill(cache, "pending", "v", scope=(None, None), pending=True)
    fill(cache, "stored", "v", scope=(None, None))
    cache.note_settled(3)  # unchanged count: nothing settled since
    assert cache.get("pending") == "v"
    cache.note_settled(4)
    assert cache.get("pending", MISS) is MISS
    assert cache.get("stored") == "v"


@WRITE_PATHS
def test_the_scope_stamp_table_stays_bounded_and_voids_rather_than_serves(write: Any) -> None:
    cache = MemoryCache(max_size=10, timer=ManualClock())
    fill(cache, "all", "v", scope=("bug", "p0"))
    for i in range(1000):
        write(cache, op(f"id{i}", category="feedback", project=f"p{i + 1}"))
    cache.token()  # stamps what collected() queued
    assert len(cache._stamps) <= 4 * 10 + 16
    # The entry's scope was never written, but the table was reset past it: void, not stale.
    assert cache.get("all", MISS) is MISS
    fill(cache, "new", "v", scope=("bug", "p0"))
    assert cache.get("new") == "v"


def test_clear_empties_without_counting_evictions() -> None:
    cache = MemoryCache(max_size=10, max_bytes=10**6, timer=ManualClock())
    fill(cache, "a", 1)
    fill(cache, "b", 2)
    cache.clear()
    s = cache.statistics()
    assert (s.size, s.bytes, s.evictions) == (0, 0, 0)


def test_from_config_and_bad_arguments() -> None:
    cache = MemoryCache.from_config(CacheConfig(max_size=7, ttl_seconds=9, max_bytes=5000))
    assert (cache.max_size, cache.ttl, cache.max_bytes) == (7, 9.0, 5000)
    assert "size=0/7" in repr(cache)
    with pytest.raises(ValueError, match="max_size"):
        MemoryCache(max_size=0)
    with pytest.raises(ValueError, match="ttl"):
        MemoryCache(ttl=0)


def test_statistics_converts_to_builtins_for_export() -> None:
    cache = MemoryCache(timer=ManualClock())
    d = msgspec.to_builtins(cache.statistics())
    assert {"hits", "misses", "evictions", "size", "hit_rate"} <= set(d)


def test_collects_nobody_reads_queue_a_bounded_number_of_scopes() -> None:
    cache = MemoryCache(timer=ManualClock())
    fill(cache, "q", "v", scope=("bug", None))
    for _ in range(5 * _MAX_QUEUED):
        cache.collected("feedback", None)
    assert len(cache._queued) <= _MAX_QUEUED
    assert cache.get("q") == "v"  # none of them wrote its scope
    cache.collected("bug", None)
    assert cache.get("q", MISS) is MISS


@pytest.mark.anyio
async def test_a_collector_nobody_reads_from_keeps_the_scope_queue_bounded(tmp_path: Path) -> None:
    async with AsyncMemoryCollector(tmp_path / "j.journal", MemorySink(), config=fast_config()) as c:
        assert c.cache is not None
        longest = 0
        for i in range(5 * _MAX_QUEUED):
            c.collect("feedback", f"op {i}")
            longest = max(longest, len(c.cache._queued))
        assert 0 < longest < 2 * _MAX_QUEUED  # collect bounds it every _MAX_QUEUED / 2 ops
        assert [m.content for m in await c.recent("feedback", limit=1)] == [f"op {5 * _MAX_QUEUED - 1}"]


@WRITE_PATHS
def test_threads_never_read_a_value_older_than_a_finished_write(write: Any) -> None:
    """The collector's protocol under contention: write, then invalidate; read, then put."""
    cache = MemoryCache(max_size=4, timer=ManualClock())
    state = {"committed": 0, "announced": 0}
    lock = threading.Lock()
    errors: list[str] = []
    stop = threading.Event()
    start = threading.Barrier(4)  # readers must be running while the writer writes

    def writer() -> None:
        start.wait()
        for i in range(3000):
            with lock:
                state["committed"] += 1  # the journal commit
                v = state["committed"]
            write(cache, op(f"w{i}", category="bug"))
            with lock:
                state["announced"] = max(state["announced"], v)  # collect has returned
        stop.set()

    def reader(n: int) -> None:
        key = ("search", n % 2)
        start.wait()
        while not stop.is_set():
            with lock:
                floor = state["announced"]
            got = cache.get(key, MISS)
            if got is not MISS:
                if got < floor:
                    errors.append(f"served {got} after write {floor} returned")
                continue
            token = cache.token()
            with lock:
                value = state["committed"]
            cache.put(key, value, token, scope=("bug", None))

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:3]
    s = cache.statistics()
    assert s.size <= 4 and s.hits + s.misses > 0
