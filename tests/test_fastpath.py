"""The shape that keeps collect() near the raw SQLite floor (issue 19), checked by counts.

A commit by any other connection resets a SQLite connection's page cache (WAL mode
re-validates it by the wal-index header), so the next append re-reads the B-tree pages
it needs. The journal therefore writes through one connection per process: the
consumer's claims and acknowledgements share the producer's connection, and a run of
appends interleaved with deliveries misses the page cache zero times. The counts come
from SQLite itself (``sqlite3_db_status``), so machine load cannot hide a regression.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sqlite3
from pathlib import Path

import anyio
import pytest

import memwal
from memwal._core.records import Priority
from memwal._journal.journal import Journal, Settlement

_CACHE_HIT, _CACHE_MISS = 7, 8  # SQLITE_DBSTATUS_CACHE_HIT / _MISS


def _libsqlite() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("sqlite3")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.sqlite3_db_status.argtypes = [
        ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int), ctypes.c_int
    ]
    lib.sqlite3_db_filename.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.sqlite3_db_filename.restype = ctypes.c_char_p
    return lib


class DbStatus:
    """``sqlite3_db_status`` of a Python sqlite3 connection, reached through ctypes.

    CPython's connection object holds its ``sqlite3*`` right after the object header;
    the handle is checked by asking SQLite for the connection's file name, so a layout
    that differs is skipped, never misread.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        lib = _libsqlite()
        if lib is None:
            pytest.skip("libsqlite3 cannot be loaded through ctypes")
        handle = ctypes.c_void_p.from_address(id(conn) + object.__basicsize__).value
        name = lib.sqlite3_db_filename(handle, b"main") if handle else None
        if name is None or Path(name.decode()).resolve() != path.resolve():
            pytest.skip("this Python's sqlite3 does not share libsqlite3 with ctypes")
        self.lib, self.handle = lib, handle

    def get(self, op: int) -> int:
        cur, high = ctypes.c_int(), ctypes.c_int()
        assert self.lib.sqlite3_db_status(self.handle, op, ctypes.byref(cur), ctypes.byref(high), 0) == 0
        return cur.value


CONTENT = "Parser fails on empty input: tokenize() returns None when the buffer is empty. " * 3


def test_appends_between_deliveries_never_reread_pages(tmp_path: Path) -> None:
    """The producer connection's page cache survives the consumer's claims and acks."""

    async def main() -> tuple[int, int, int]:
        journal = tmp_path / "j.journal"
        async with memwal.AsyncMemoryCollector(journal, memwal.SQLiteSink(tmp_path / "s.db")) as c:
            for _ in range(50):  # warm the cache and grow the B-tree past one page
                await c.collect_async("feedback", CONTENT)
            await c.flush_queue(timeout=30)
            w = c.journal._w
            assert w is not None
            st = DbStatus(w, journal)
            hits0, misses0, delivered0 = st.get(_CACHE_HIT), st.get(_CACHE_MISS), c.counters.delivered
            for _ in range(20):
                for _ in range(25):
                    await c.collect_async("feedback", CONTENT)
                # The consumer claims and acknowledges these: writes between two runs of appends.
                await c.flush_queue(timeout=30)
            return st.get(_CACHE_HIT) - hits0, st.get(_CACHE_MISS) - misses0, c.counters.delivered - delivered0

    hits, misses, delivered = anyio.run(main)
    assert delivered == 500  # the consumer wrote between every run of appends
    assert hits >= 500  # the counters count: every append touched cached pages
    assert misses == 0, f"{misses} page-cache misses over 500 appends: another connection's commits reset the cache"


def test_the_journal_opens_one_writer_connection(tmp_path: Path) -> None:
    """Claims, acks and appends commit on the same connection (the one that appends)."""
    j = Journal(tmp_path / "j.journal")
    j.open()
    try:
        assert j._w is not None
        seen: list[str] = []
        j._w.set_trace_callback(seen.append)
        op, _ = j.append("bug", "x", {}, Priority.HIGH, (), None)
        leased, _ = j.lease(10)
        assert [x.op.id for x in leased] == [op.id]
        j.settle(Settlement(acked=[leased[0].key]))
        assert any(s.startswith("INSERT INTO ops") for s in seen)
        assert any("UPDATE ops SET state = 1" in s for s in seen)  # the claim
        assert any(s.startswith("DELETE FROM ops") for s in seen)  # the ack
    finally:
        j.close()
