"""Mem0Sink over real HTTP against FakeMem0 on loopback: mapping, statuses, no duplicates."""

from __future__ import annotations

import email.utils
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from memwal import (
    AsyncMemoryCollector,
    ConfigError,
    FallbackSink,
    Mem0Sink,
    MemoryOperation,
    Priority,
    SinkRejected,
    SinkUnavailable,
    SQLiteSink,
    load_config,
)
from memwal._core.records import IdGenerator
from memwal._sinks.mem0 import classify, parse_retry_after
from memwal.testing import FakeMem0

pytestmark = pytest.mark.anyio
KEY = "m0sk_test"
PERMANENT = [400, 401, 403, 404, 409, 413, 422]
TRANSIENT = [408, 429, 500, 502, 503, 504]
_ids = IdGenerator()


def make_op(content: str = "the build fails on arm64", **kw: Any) -> MemoryOperation:
    return MemoryOperation(id=_ids.next()[0], category=kw.pop("category", "bug"), content=content,
                           created_at=kw.pop("created_at", time.time()), **kw)


async def until(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``cond`` until true; fail after ``timeout`` seconds (a deadline, not a sleep for luck)."""
    with anyio.fail_after(timeout):
        while not cond():
            await anyio.sleep(0.02)


@pytest.fixture
async def fake() -> AsyncIterator[FakeMem0]:
    async with FakeMem0(api="both", api_key=KEY) as f:
        yield f


@pytest.fixture
async def sink(fake: FakeMem0) -> AsyncIterator[Mem0Sink]:
    async with Mem0Sink(fake.url, api_key=KEY, user_id="agent-1", timeout=5, settle=0) as s:
        yield s


# -- construction and pure decisions ---------------------------------------------------


def test_construction_needs_an_entity_and_a_known_api() -> None:
    with pytest.raises(ConfigError, match="one of user_id, agent_id, run_id is required"):
        Mem0Sink("http://127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"Mem0Sink\.api: must be 'oss' or 'platform'"):
        Mem0Sink("http://127.0.0.1:1", api="cloud", user_id="u")
    with pytest.raises(ConfigError, match=r"Mem0Sink\.timeout"):
        Mem0Sink("http://127.0.0.1:1", user_id="u", timeout=0)


def test_bind_takes_the_connection_limit_and_timeout_from_config() -> None:
    s = Mem0Sink("http://127.0.0.1:1", run_id="r")
    unbound = load_config({}, env={}).performance
    assert (s.limit, s.timeout) == (unbound.max_concurrent_ops, unbound.operation_timeout / 2)
    s.bind(load_config({"performance": {"max_concurrent_ops": 8, "operation_timeout": 4}}), time.monotonic)
    assert (s.limit, s.timeout) == (8, 2.0)
    fixed = Mem0Sink("http://127.0.0.1:1", run_id="r", timeout=3)
    fixed.bind(load_config({"performance": {"operation_timeout": 4}}), time.monotonic)
    assert fixed.timeout == 3


def test_retry_after_parses_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None
    assert [parse_retry_after(v, now) for v in ("inf", "1e400", "nan", "-inf")] == [None] * 4


@pytest.mark.parametrize("status", PERMANENT + TRANSIENT + [200, 307])
def test_classify_maps_every_status_class(status: int) -> None:
    err = classify(status, '{"detail":"nope"}', "5", what="POST /memories", now=0.0)
    if status == 200:
        assert err is None
    elif status in TRANSIENT:
        assert isinstance(err, SinkUnavailable) and err.retry_after == 5.0
    else:
        assert isinstance(err, SinkRejected) and '{"detail":"nope"}' in str(err)


# -- statuses over HTTP ----------------------------------------------------------------


@pytest.mark.parametrize("status", PERMANENT + TRANSIENT)
async def test_each_status_is_reported_for_its_operation(fake: FakeMem0, sink: Mem0Sink, status: int) -> None:
    fake.configure(fail_next=1, fail_status=status, only_add=True)
    bad, good = make_op("first"), make_op("second")
    report = await sink.deliver([bad])
    assert report is not None
    err = report.failed[bad.id]
    if status in PERMANENT:
        assert isinstance(err, SinkRejected) and f"HTTP {status}" in str(err) and "injected failure" in str(err)
    else:
        assert type(err) is SinkUnavailable
    assert await sink.deliver([good]) is None
    assert fake.count_by() == {good.id: 1}


async def test_retry_after_is_carried_by_the_failure(fake: FakeMem0, sink: Mem0Sink) -> None:
    fake.configure(fail_next=1, fail_status=429, retry_after=7, only_add=True)
    op = make_op()
    report = await sink.deliver([op])
    assert report is not None
    err = report.failed[op.id]
    assert isinstance(err, SinkUnavailable) and err.retry_after == 7.0


async def test_a_first_attempt_is_one_add_and_no_lookup(fake: FakeMem0, sink: Mem0Sink) -> None:
    ops = [make_op(f"memory {i}") for i in range(20)]
    assert await sink.deliver(ops) is None
    assert dict(fake.requests) == {"POST /memories": 20}
    assert fake.count_by() == {op.id: 1 for op in ops}


async def test_lookup_failure_fails_only_the_suspects_and_sends_them_nothing(fake: FakeMem0,
                                                                             sink: Mem0Sink) -> None:
    suspect, fresh = make_op("a"), make_op("b")
    fake.configure(drop_next=1, only_add=True)  # stored, answer lost: the operation is now a suspect
    report = await sink.deliver([suspect])
    assert report is not None and "outcome unknown" not in str(report.failed[suspect.id])  # a dropped connection
    fake.configure(fail_next=1, fail_status=503, only_add=False)  # the look-up is the next request
    report = await sink.deliver([suspect, fresh])
    assert report is not None and list(report.failed) == [suspect.id]
    assert "GET /memories: HTTP 503" in str(report.failed[suspect.id])
    assert fake.count_by() == {suspect.id: 1, fresh.id: 1}
    assert await sink.deliver([suspect]) is None  # looked up again, found, not sent
    assert fake.count_by() == {suspect.id: 1, fresh.id: 1} and sink.counts["found"] == 1


@pytest.mark.parametrize("api", ["oss", "platform"])
async def test_auth_headers_for_each_api(fake: FakeMem0, api: str) -> None:
    async with Mem0Sink(fake.url, api=api, api_key=KEY, agent_id="a") as right, \
            Mem0Sink(fake.url, api=api, api_key="wrong", agent_id="a") as wrong:
        assert await right.deliver([make_op()]) is None
        await right.ping()
        op = make_op()
        report = await wrong.deliver([op])
        assert report is not None and isinstance(report.failed[op.id], SinkRejected)
        assert "Invalid API key" in str(report.failed[op.id]) and "HTTP 401" in str(report.failed[op.id])
    assert len(fake.memories) == 1


async def test_platform_v1_add_is_accepted(fake: FakeMem0) -> None:
    async with Mem0Sink(fake.url, api="platform", api_key=KEY, user_id="u", platform_add="v1") as s:
        op = make_op()
        assert await s.deliver([op]) is None
        assert fake.requests["POST /v1/memories/"] == 1 and s.mem0_ids[op.id] in fake.memories


# -- mapping and reads -----------------------------------------------------------------


@pytest.mark.parametrize("api", ["oss", "platform"])
async def test_reads_return_memwal_memories_with_their_metadata(fake: FakeMem0, api: str) -> None:
    meta = {"created_at": "user value", "role": "user value", "category": "shadowed", "memwal_x": 1, "k": [1, 2]}
    old = make_op("parser crashes on empty input", metadata=meta, tags=("parser", "p1"), project="core",
                  priority=Priority.HIGH, created_at=1000.0)
    new = make_op("parser is slow on big files", category="performance", tags=("parser",), created_at=2000.0)
    async with Mem0Sink(fake.url, api=api, api_key=KEY, user_id="u") as writer:
        assert await writer.deliver([old, new]) is None
    async with Mem0Sink(fake.url, api=api, api_key=KEY, user_id="u") as reader:  # no id table: by metadata
        got = await reader.get(old.id)
        assert got is not None and got.stored_at > 0
        assert {f: getattr(got, f) for f in old.__struct_fields__} == {f: getattr(old, f)
                                                                       for f in old.__struct_fields__}
        assert await reader.get(make_op().id) is None
        assert [m.id for m in await reader.search("parser crashes", category="bug")] == [old.id]
        assert [m.id for m in await reader.search("parser", tags=["p1"])] == [old.id]
        assert [m.id for m in await reader.search("parser", project="core")] == [old.id]
        assert [m.id for m in await reader.recent()] == [new.id, old.id]
        assert [m.id for m in await reader.recent("bug")] == [old.id]


async def test_get_uses_the_mem0_id_kept_at_delivery(fake: FakeMem0, sink: Mem0Sink) -> None:
    op = make_op()
    await sink.deliver([op])
    before = fake.requests["POST /search"]
    got = await sink.get(op.id)
    assert got is not None and got.id == op.id
    assert fake.requests["GET /memories/{memory_id}"] == 1 and fake.requests["POST /search"] == before


# -- no duplicates after ambiguous failures --------------------------------------------


@pytest.mark.parametrize("api", ["oss", "platform"])
async def test_redelivery_of_a_stored_operation_is_skipped(fake: FakeMem0, api: str) -> None:
    async with Mem0Sink(fake.url, api=api, api_key=KEY, user_id="u") as s:
        ops = [make_op(f"memory {i}") for i in range(5)]
        assert await s.deliver(ops[:3]) is None
        assert await s.deliver(ops) is None
        assert s.counts["found"] == 3 and s.counts["added"] == 5
    assert fake.count_by() == {op.id: 1 for op in ops}


async def test_timeout_is_transient_and_the_retry_adds_no_duplicate(fake: FakeMem0) -> None:
    fake.configure(latency=0.5, only_add=True)
    op = make_op()
    async with Mem0Sink(fake.url, api_key=KEY, user_id="u", timeout=0.1, settle=0) as s:
        report = await s.deliver([op])
        assert report is not None
        err = report.failed[op.id]
        assert isinstance(err, SinkUnavailable) and "outcome unknown" in str(err)
        await until(lambda: fake.in_flight == 0)  # the server finishes the add the client gave up on
        assert fake.count_by() == {op.id: 1}
        fake.configure(latency=0.0)
        assert await s.deliver([op]) is None
        assert s.counts["found"] == 1
    assert fake.count_by() == {op.id: 1}


async def test_connection_dropped_after_send_then_retry_adds_no_duplicate(fake: FakeMem0, sink: Mem0Sink) -> None:
    fake.configure(drop_next=2, only_add=True)
    ops = [make_op(f"memory {i}") for i in range(6)]
    report = await sink.deliver(ops)
    assert report is not None and len(report.failed) == 2
    assert all(type(e) is SinkUnavailable for e in report.failed.values())
    assert await sink.deliver([op for op in ops if op.id in report.failed]) is None
    assert fake.count_by() == {op.id: 1 for op in ops}


async def test_server_down_then_up(fake: FakeMem0, sink: Mem0Sink) -> None:
    port = fake.port
    await fake.stop()
    op = make_op()
    report = await sink.deliver([op])
    assert report is not None and "ClientConnectorError" in str(report.failed[op.id])
    assert sink.ledger.state([op.id]) == {}  # never connected: certainly not sent, no look-up next time
    await fake.start(port=port)
    assert await sink.deliver([make_op()]) is None


# -- through the collector ---------------------------------------------------------------


def fast_config(**extra: Any) -> Any:
    cfg: dict[str, Any] = {
        "async_collection": {"retry_delay": 0.01, "max_retry_delay": 0.05, "max_retries": 50},
        "circuit_breaker": {"recovery_timeout": 0.2, "failure_threshold": 3},
        "journal": {"poll_interval": 0.01, "shutdown_timeout": 2},
        "performance": {"operation_timeout": 4},
    }
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    return load_config(cfg)


async def test_collector_delivers_thousands_each_exactly_once(fake: FakeMem0, journal_path: Path) -> None:
    fake.configure(error_rate=0.02, error_status=503)
    sink = Mem0Sink(fake.url, api_key=KEY, user_id="agent-1")
    async with AsyncMemoryCollector(journal_path, sink, config=fast_config()) as c:
        ids = [await c.collect_async("knowledge", f"fact number {i}") for i in range(3000)]
        await c.flush_queue(timeout=60)
        assert c.stats().delivered == 3000
    assert fake.count_by() == dict.fromkeys(ids, 1)


async def test_collector_honours_retry_after(fake: FakeMem0, journal_path: Path) -> None:
    fake.configure(fail_next=1, fail_status=429, retry_after=30, only_add=True)
    sink = Mem0Sink(fake.url, api_key=KEY, user_id="agent-1")
    t0 = time.time()
    async with AsyncMemoryCollector(journal_path, sink, config=fast_config(journal={"shutdown_timeout": 0.1})) as c:
        op_id = await c.collect_async("bug", "rate limited")

        def row() -> tuple[int, float]:
            with sqlite3.connect(journal_path) as db:
                return db.execute("SELECT attempts, not_before FROM ops WHERE id = ?", (op_id,)).fetchone()

        await until(lambda: row()[0] == 1)
        # without Retry-After the backoff would be at most max_retry_delay (0.05 s)
        assert row()[1] >= t0 + 30
    assert fake.count_by() == {}


async def test_fallback_holds_everything_while_down_then_reconciles_exactly_once(
    fake: FakeMem0, journal_path: Path, store_path: Path
) -> None:
    port = fake.port
    await fake.stop()
    store = SQLiteSink(store_path)
    mem0 = Mem0Sink(fake.url, api_key=KEY, user_id="agent-1", timeout=1, settle=0.5)
    sink = FallbackSink(mem0, store)
    async with AsyncMemoryCollector(journal_path, sink, config=fast_config()) as c:
        ids = [await c.collect_async("decision", f"decision {i}") for i in range(200)]
        await c.flush_queue(timeout=30)
        assert all([await store.get(i) is not None for i in ids])
        assert fake.memories == {}
        fake.configure(drop_next=3, only_add=True)  # ambiguous adds during reconciliation, too
        await fake.start(port=port)
        await until(lambda: set(fake.count_by()) == set(ids), timeout=30)
        await until(lambda: c.stats().held == 0)
    assert fake.count_by() == dict.fromkeys(ids, 1)
    assert mem0.counts["found"] >= 3  # the dropped adds were looked up, not sent twice


# -- like the real server: a large shared table, lost answers ---------------------------


async def test_lost_answers_on_a_large_table_are_not_stored_twice(fake: FakeMem0, journal_path: Path) -> None:
    # Other users' memories make /search approximate (the fake's ef_search candidates,
    # then the filter), as on a real deployment: a look-up must still find the adds
    # whose answers were lost after the server stored them.
    fake.fill(3000)
    fake.configure(drop_next=10, only_add=True)
    sink = Mem0Sink(fake.url, api_key=KEY, user_id="agent-1", timeout=2, settle=0.5)
    async with AsyncMemoryCollector(journal_path, sink, config=fast_config()) as c:
        ids = [await c.collect_async("knowledge", f"fact number {i} about the build") for i in range(100)]
        await c.flush_queue(timeout=60)
        assert c.stats().delivered == 100
    counts = fake.count_by()
    assert {i: counts[i] for i in ids if counts[i] != 1} == {}


async def test_lookup_by_content_when_the_entity_has_1000_memories_or_more(fake: FakeMem0, sink: Mem0Sink) -> None:
    # A listing of the entity is then incomplete (top_k caps at 1000): the look-up
    # searches by the memory's own text, filtered by memwal_id, on an approximate table.
    fake.fill(3000)
    fake.fill(1200, prefix="agent-1", users=1)
    ops = [make_op(f"a lesson about flaky test number {i}") for i in range(30)]
    fake.configure(drop_next=8, only_add=True)
    report = await sink.deliver(ops)
    assert report is not None and len(report.failed) == 8
    fake.configure(drop_next=0)
    assert await sink.deliver(ops) is None
    assert sink.counts["lookup_list"] == 1 and sink.counts["lookup_search"] == 8
    assert sink.counts["found"] == 30 and fake.requests["POST /memories"] == 30  # 22 known here, 8 looked up
    assert fake.count_by() == {**{f"fill-other-user-{n}": 1 for n in range(3000)},
                               **{f"fill-agent-1-{n}": 1 for n in range(1200)}, **{op.id: 1 for op in ops}}


async def test_a_suspect_is_looked_up_only_once_its_last_send_has_settled(fake: FakeMem0) -> None:
    # The real server goes on with a request its client gave up on; a look-up sent at
    # once can overtake it and find nothing. So the look-up waits ``settle`` seconds.
    op = make_op()
    async with Mem0Sink(fake.url, api_key=KEY, user_id="u", settle=30) as s:
        fake.configure(drop_next=1, only_add=True)
        assert await s.deliver([op]) is not None
        before = sum(fake.requests.values())
        report = await s.deliver([op])
        assert report is not None
        err = report.failed[op.id]
        assert isinstance(err, SinkUnavailable) and err.retry_after is not None and 25 < err.retry_after <= 30
        assert sum(fake.requests.values()) == before and s.counts["settling"] == 1  # nothing sent meanwhile
        s.settle = 0
        assert await s.deliver([op]) is None and s.counts["found"] == 1
    assert fake.count_by() == {op.id: 1}


# -- the send ledger beside the journal (the default) -----------------------------------


def test_the_ledger_goes_beside_the_journal_one_per_endpoint_and_entity(tmp_path: Path) -> None:
    journal = tmp_path / "agent.journal"
    a = Mem0Sink("http://127.0.0.1:1", user_id="u1")
    b = Mem0Sink("http://127.0.0.1:2", user_id="u1")
    c = Mem0Sink("http://127.0.0.1:1", user_id="u2")
    again = Mem0Sink("http://127.0.0.1:1/", user_id="u1")  # the same endpoint and entity
    mine = Mem0Sink("http://127.0.0.1:1", user_id="u1", ledger=tmp_path / "mine.ledger")
    alone = Mem0Sink("http://127.0.0.1:1", user_id="u1", ledger=None)
    unbound = Mem0Sink("http://127.0.0.1:1", user_id="u1")
    FallbackSink(a, b).bind_journal(journal)  # a fallback passes the journal on to each of its sinks
    for s in (c, again, mine, alone):
        s.bind_journal(journal)
    paths = [s.ledger.path for s in (a, b, c)]
    assert all(p is not None and p.startswith(f"{journal}.mem0-ledger-") for p in paths)
    assert len(set(paths)) == 3 and again.ledger.path == a.ledger.path
    assert mine.ledger.path == str(tmp_path / "mine.ledger")
    assert alone.ledger.path is None and unbound.ledger.path is None
    assert list(tmp_path.iterdir()) == []  # nothing opened before the first delivery


async def test_default_ledger_costs_at_most_two_commits_a_delivery_and_no_extra_request(
    fake: FakeMem0, journal_path: Path
) -> None:
    sink = Mem0Sink(fake.url, api_key=KEY, user_id="agent-1")
    async with AsyncMemoryCollector(journal_path, sink, config=fast_config()) as c:
        ids = [await c.collect_async("knowledge", f"fact number {i}") for i in range(400)]
        await c.flush_queue(timeout=60)
    assert sink.ledger.path is not None and await anyio.Path(sink.ledger.path).exists()
    assert fake.count_by() == dict.fromkeys(ids, 1)
    assert sum(fake.requests.values()) == 400  # one add per memory, no look-up
    # A mark and a settle per delivery (plus a prune a minute): well under one per memory.
    print("ledger commits per memory:", sink.ledger.commits / 400)
    assert sink.ledger.commits / 400 <= 0.5
