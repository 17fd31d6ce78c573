"""collect_async appends when it is called (issue 18 item 6): a forgotten await loses nothing."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

import pytest
from helpers import FAST, fast_config, wait_for

from memwal import AsyncMemoryCollector, InvalidOperation, QueueFull
from memwal.testing import FlakySink, MemorySink

pytestmark = pytest.mark.anyio


def cfg(**sections: Any) -> Any:
    return fast_config(FAST, **sections)


async def test_an_unawaited_collect_async_is_stored_and_delivered(journal_path: Path) -> None:
    sink = MemorySink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        c.collect_async("bug", "fire and forget")  # no await: the append already happened
        # Nothing awaited yet, so the consumer has not run: the row is in the journal.
        assert [m.content for m in c.journal.undelivered()] == ["fire and forget"]
        await c.flush_queue(timeout=10)
    assert [m.content for m in sink.memories.values()] == ["fire and forget"]


async def test_awaiting_gives_the_id_of_the_committed_operation(journal_path: Path) -> None:
    async with AsyncMemoryCollector(journal_path, MemorySink(), config=cfg()) as c:
        pending = c.collect_async("bug", "awaited later")
        (stored,) = c.journal.undelivered()  # committed before the await
        op_id = await pending
        assert stored.id == op_id
        assert (await c.get(op_id)) is not None
        assert await pending == op_id  # awaiting twice gives the same id


async def test_bad_input_raises_at_the_call_and_stores_nothing(journal_path: Path) -> None:
    async with AsyncMemoryCollector(journal_path, MemorySink(), config=cfg()) as c:
        with pytest.raises(InvalidOperation):
            c.collect_async("bug", "")  # raised by the call itself, before any await
        assert c.stats().collected == 0 and c.stats().pending == 0


async def test_with_enabled_false_the_unawaited_call_still_delivers(journal_path: Path) -> None:
    sink = MemorySink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg(async_collection={"enabled": False})) as c:
        c.collect_async("bug", "stored although nobody waits for delivery")
        gc.collect()
        await wait_for(lambda: len(sink.memories) == 1)
        op_id = await c.collect_async("bug", "awaited: returns once delivered")
        assert op_id in sink.memories
        assert c.stats().drops_by_reason == {}


async def test_block_with_a_full_journal_unawaited_is_an_error_and_counted(
    journal_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = cfg(async_collection={"max_queue_size": 1, "on_full": "block", "collect_timeout": 5},
                 journal={"shutdown_timeout": 0.1})
    async with AsyncMemoryCollector(journal_path, FlakySink(hang=True), config=config) as c:
        await c.collect_async("qa", "fills the journal")
        with caplog.at_level(logging.ERROR, logger="memwal"):
            c.collect_async("qa", "needs room, never awaited")
            gc.collect()
        assert c.stats().drops_by_reason == {"not_awaited": 1}
        assert "collect_async('qa', ...) waiting for room (on_full=block) was never awaited" in caplog.text
        assert c.stats().collected == 1


async def test_block_with_a_full_journal_awaited_waits_then_raises(journal_path: Path) -> None:
    config = cfg(async_collection={"max_queue_size": 1, "on_full": "block", "collect_timeout": 0.1},
                 journal={"shutdown_timeout": 0.1})
    async with AsyncMemoryCollector(journal_path, FlakySink(hang=True), config=config) as c:
        await c.collect_async("qa", "a")
        pending = c.collect_async("qa", "b")
        with pytest.raises(QueueFull, match=r"after waiting 0\.1s"):
            await pending
        assert c.stats().drops_by_reason == {"queue_full_timeout": 1}


async def test_many_unawaited_calls_keep_their_order(journal_path: Path) -> None:
    sink = MemorySink()
    async with AsyncMemoryCollector(journal_path, sink, config=cfg()) as c:
        for i in range(50):
            c.collect_async("qa", f"op {i}")
        await c.flush_queue(timeout=10)
    assert sorted(m.content for m in sink.memories.values()) == sorted(f"op {i}" for i in range(50))
