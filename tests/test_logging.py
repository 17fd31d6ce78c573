"""Every record of an operation's life on the ``memwal`` logger carries the operation id."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest

from memwal import AsyncMemoryCollector, FallbackSink
from memwal._core.config import AsyncCollectionConfig, Config, JournalConfig
from memwal.testing import FlakySink, MemorySink

FAST = AsyncCollectionConfig(retry_delay=0.0, max_retry_delay=0.0)


def records(caplog: pytest.LogCaptureFixture, op_id: str, level: int | None = None) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.name == "memwal" and op_id in r.getMessage() and (level is None or r.levelno == level)
    ]


@pytest.fixture(autouse=True)
def _debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="memwal")


@pytest.mark.anyio
async def test_an_operation_is_traced_from_collect_to_delivery(
    journal_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with AsyncMemoryCollector(journal_path, MemorySink()) as c:
        op_id = await c.collect_async("bug", "parser fails on empty input", priority="high")
        await c.flush_queue(timeout=10)
    trace = records(caplog, op_id, logging.DEBUG)
    assert len(trace) == 2
    assert "collected (bug, high)" in trace[0] and "delivered" in trace[1]


@pytest.mark.anyio
async def test_retry_and_dead_letter_records_name_the_operation(
    journal_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = FlakySink(fail_next=1)
    async with AsyncMemoryCollector(journal_path, sink, config=Config(async_collection=FAST)) as c:
        retried = c.collect("bug", "fails once")
        await c.flush_queue(timeout=10)
        sink.fail_next, sink.permanent = 1, True
        dead = c.collect("bug", "rejected")
        await c.flush_queue(timeout=10)
    assert any("will be retried (attempt 2)" in m for m in records(caplog, retried, logging.INFO))
    assert any("dead-lettered: rejected" in m for m in records(caplog, dead, logging.WARNING))


@pytest.mark.anyio
async def test_a_dropped_operation_is_logged_with_its_id_and_the_newcomer(
    journal_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = Config(async_collection=AsyncCollectionConfig(max_queue_size=3, on_full="drop_oldest"))
    async with AsyncMemoryCollector(journal_path, MemorySink(), config=cfg) as c:
        ids = [c.collect("bug", f"op {i}", priority="low") for i in range(4)]  # no await: the consumer waits
        await c.flush_queue(timeout=10)
        assert c.stats().drops_by_reason == {"queue_full_drop_oldest": 1}
    (msg,) = records(caplog, ids[0], logging.WARNING)
    assert "dropped to make room" in msg and ids[3] in msg


@pytest.mark.anyio
async def test_fallback_delivery_and_reconciliation_name_the_operation(
    journal_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    primary = FlakySink(fail_next=1)
    cfg = Config(async_collection=FAST, journal=JournalConfig(poll_interval=0.01))
    async with AsyncMemoryCollector(journal_path, FallbackSink(primary, MemorySink()), config=cfg) as c:
        op_id = c.collect("feedback", "primary is down for one call")
        await c.flush_queue(timeout=10)
        with anyio.fail_after(10):
            while c.counters.reconciled < 1:
                await anyio.sleep(0.02)
    msgs = records(caplog, op_id, logging.INFO)
    assert any("delivered to fallback MemorySink" in m for m in msgs)
    assert any("held by fallback MemorySink" in m for m in msgs)
    assert any("reconciled to the primary" in m for m in msgs)
    assert op_id in primary.memories
