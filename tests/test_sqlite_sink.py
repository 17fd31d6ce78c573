"""SQLiteSink specifics: group commit of concurrent deliveries, schema version, bad files."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from memwal import JournalError, MemoryOperation, SinkUnavailable, SQLiteSink

pytestmark = pytest.mark.anyio


def ops(prefix: str, n: int) -> list[MemoryOperation]:
    return [MemoryOperation(id=f"{prefix}{i}", category="bug", content=f"{prefix} text {i}") for i in range(n)]


class GatedSink(SQLiteSink):
    """Counts transactions; the first one waits for ``gate`` so others queue behind it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = anyio.Event()
        self.writes: list[int] = []
        self.fail = False

    async def _write(self, db: Any, rows: list[tuple[Any, ...]]) -> None:
        self.writes.append(len(rows))
        if len(self.writes) == 1:
            await self.gate.wait()
        if self.fail:
            raise SinkUnavailable("disk I/O error")
        await super()._write(db, rows)


async def test_concurrent_deliveries_share_one_transaction(store_path: Path) -> None:
    async with GatedSink(store_path) as sink:
        async with anyio.create_task_group() as tg:
            for name in "abcd":
                tg.start_soon(sink.deliver, ops(name, 5))
                await anyio.lowlevel.checkpoint()  # each call queues before the next starts
            sink.gate.set()
        assert sink.writes == [5, 15]  # a alone, then b, c and d together
        assert await sink.count() == 20


async def test_every_caller_of_a_failed_group_sees_the_failure(store_path: Path) -> None:
    errors: list[str] = []

    async def deliver(sink: GatedSink, batch: list[MemoryOperation]) -> None:
        try:
            await sink.deliver(batch)
        except SinkUnavailable as exc:
            errors.append(str(exc))

    async with GatedSink(store_path) as sink:
        async with anyio.create_task_group() as tg:
            for name in "abc":
                tg.start_soon(deliver, sink, ops(name, 2))
                await anyio.lowlevel.checkpoint()
            sink.fail = True
            sink.gate.set()
        assert errors == ["disk I/O error"] * 3
        assert await sink.count() == 0


async def test_a_newer_store_schema_is_refused(store_path: Path) -> None:
    async with SQLiteSink(store_path) as sink:
        await sink.deliver(ops("x", 1))
    con = sqlite3.connect(store_path)
    con.execute("PRAGMA user_version=7")
    con.commit()
    con.close()
    with pytest.raises(JournalError, match="memory store schema version 7 is newer"):
        async with SQLiteSink(store_path):
            pass


@pytest.fixture
def garbage_store(store_path: Path) -> Path:
    store_path.write_text("not sqlite " * 500)
    return store_path


async def test_a_file_that_is_not_a_database_is_refused(garbage_store: Path) -> None:
    store_path = garbage_store
    with pytest.raises(JournalError, match="not a memwal memory store"):
        async with SQLiteSink(store_path):
            pass
