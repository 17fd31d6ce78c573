"""Instruction counts per call on the caller's path: run under callgrind with N=0 and N, divide the difference by N.

    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=/tmp/cg.%p \
        .venv/bin/python benchmarks/collect_icount.py collect 2000

With ``--separate-threads=yes`` the first thread's file counts only the caller's thread
(the journal's checkpoints and the consumer run on others).

Modes: ``floor`` (the raw INSERT of bench_collect.py), ``append`` (Journal.append of a
validated operation), ``collect`` (``collect_async`` with ``max_inflight_batches: 0``,
so the consumer leases nothing and only the caller's path runs).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's memwal, not an installed one
import memwal
from benchmarks._common import CONTENT, wal_connection
from memwal._core.records import Priority


def floor(d: Path, n: int) -> None:
    conn = wal_connection(d / "floor.db")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
    ex, sql, p = conn.execute, "INSERT INTO t (payload) VALUES (?)", (CONTENT.encode().ljust(382, b" "),)
    for _ in range(n):
        ex(sql, p)
    conn.close()


def collect(d: Path, n: int, append_only: bool) -> None:
    config = memwal.load_config({"performance": {"max_inflight_batches": 0}}, env={})

    async def run() -> None:
        async with memwal.AsyncMemoryCollector(d / "j.journal", memwal.SQLiteSink(d / "s.db"), config=config) as c:
            if append_only:
                app = c.journal.append
                for _ in range(n):
                    app("feedback", CONTENT, {}, Priority.MEDIUM, (), None)
            else:
                ca = c.collect_async
                for _ in range(n):
                    await ca("feedback", CONTENT)

    anyio.run(run)


if __name__ == "__main__":
    mode, count = sys.argv[1], int(sys.argv[2])
    with tempfile.TemporaryDirectory() as tmp:
        if mode == "floor":
            floor(Path(tmp), count)
        else:
            collect(Path(tmp), count, mode == "append")
