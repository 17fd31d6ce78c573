"""One contract every sink must keep (memwal/_sinks/base.py), run against each sink."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from memwal import FallbackSink, MemoryOperation, Priority, Sink, SQLiteSink
from memwal.testing import MemorySink

pytestmark = pytest.mark.anyio


def op(i: int, **kw) -> MemoryOperation:
    fields = {"id": f"0190-{i:04d}", "category": "bug", "content": f"content {i}", "created_at": 1000.0 + i, **kw}
    return MemoryOperation(**fields)


@pytest.fixture(params=["memory", "sqlite", "fallback"])
async def sink(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Sink]:
    if request.param == "memory":
        s: Sink = MemorySink()
    elif request.param == "sqlite":
        s = SQLiteSink(tmp_path / "store.db")
    else:
        s = FallbackSink(SQLiteSink(tmp_path / "primary.db"), MemorySink())
    async with s:
        yield s


async def test_delivered_operations_can_be_read_back(sink: Sink) -> None:
    original = op(1, metadata={"k": [1, "v"]}, priority=Priority.CRITICAL, tags=("a", "b"), project="p")
    await sink.deliver([original])
    got = await sink.get(original.id)
    assert got is not None
    assert (got.id, got.content, got.metadata, got.priority, got.tags, got.project) == (
        original.id, original.content, {"k": [1, "v"]}, Priority.CRITICAL, ("a", "b"), "p")


async def test_redelivery_of_an_id_is_ignored(sink: Sink) -> None:
    await sink.deliver([op(1), op(2)])
    await sink.deliver([op(1, content="changed"), op(2)])
    recent = await sink.recent(limit=10)
    assert [m.id for m in recent] == [op(2).id, op(1).id]
    got = await sink.get(op(1).id)
    assert got is not None and got.content == "content 1"


async def test_unknown_id_reads_as_none(sink: Sink) -> None:
    assert await sink.get("0190-9999") is None


async def test_recent_filters_by_category_newest_first(sink: Sink) -> None:
    await sink.deliver([op(1), op(2, category="qa"), op(3)])
    assert [m.id for m in await sink.recent("bug", limit=10)] == [op(3).id, op(1).id]


async def test_search_finds_by_words_and_filters(sink: Sink) -> None:
    await sink.deliver([
        op(1, content="parser crashes on empty input", tags=("parser",)),
        op(2, content="login page is slow", category="performance"),
        op(3, content="parser is slow on big files", project="p"),
    ])
    assert {m.id for m in await sink.search("parser")} == {op(1).id, op(3).id}
    assert [m.id for m in await sink.search("slow", category="performance")] == [op(2).id]
    assert [m.id for m in await sink.search("parser", tags=["parser"])] == [op(1).id]
    assert [m.id for m in await sink.search("parser", project="p")] == [op(3).id]
