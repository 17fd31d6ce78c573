"""Where collect_async's p50 goes beyond the floor: the same run, five contenders.

Run: .venv/bin/python benchmarks/bench_collect_gap.py [--ops 60000] [--rounds 6]
     [--sqlite-memstatus off]

Contenders, interleaved in rounds like bench_collect.py:
  floor           the raw sqlite3 INSERT + COMMIT of bench_collect.py
  journal row     the INSERT memwal's journal does (its table, its row), alone
  collect, no SQLite sink
                  collect_async while the consumer drains into a sink that only sleeps
                  1.5 ms per batch (no second thread doing SQLite work)
  collect, SQLiteSink
                  collect_async as bench_collect.py measures it
  collect, consumer in another process
                  collect_async with performance.max_inflight_batches 0 (this process
                  never leases) while a child process's collector drains the same journal
                  into a SQLiteSink

``--sqlite-memstatus off`` (Linux, an experiment, not something memwal does) turns off
SQLite's process-wide memory statistics before anything opens a connection: with them
on, every allocation SQLite makes in any thread takes one global mutex, so the sink's
thread slows the producer's INSERT.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

import memwal
from memwal._journal.schema import INSERT_OP, MIGRATIONS

try:  # run as a script (benchmarks/ on sys.path) or as a module
    from _common import CONTENT, machine, median_of, percentiles, table, wal_connection, write_results
    from bench_collect import Floor, MemwalAsync, MemwalElsewhere, op_payload_size
except ImportError:  # pragma: no cover
    from benchmarks._common import (
        CONTENT,
        machine,
        median_of,
        percentiles,
        table,
        wal_connection,
        write_results,
    )
    from benchmarks.bench_collect import Floor, MemwalAsync, MemwalElsewhere, op_payload_size

_perf = time.perf_counter_ns


def memstatus_off() -> None:
    """sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0): SQLite must be shut down, so nothing open."""
    import _sqlite3
    import ctypes

    if not sys.platform.startswith("linux"):
        raise SystemExit("--sqlite-memstatus off: Linux only (sqlite3_config is variadic)")
    lib = ctypes.PyDLL(_sqlite3.__file__)
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    if lib.sqlite3_memory_used() != 0:
        raise SystemExit("--sqlite-memstatus off: SQLite already holds memory (a connection is open)")
    if lib.sqlite3_shutdown() or lib.sqlite3_config(9, 0) or lib.sqlite3_initialize():
        raise SystemExit("--sqlite-memstatus off: sqlite3_config refused")


class JournalRow:
    """memwal's journal INSERT (its table and row shape) on a connection of its own."""

    name = "journal row"

    def __init__(self, d: Path) -> None:
        self.conn = wal_connection(d / "row.journal")
        for stmt in MIGRATIONS[1]:
            self.conn.execute(stmt)
        self.payload = CONTENT.encode().ljust(op_payload_size(), b" ")
        self.k = 2 << 60

    def run_round(self, n: int) -> array[int]:
        buf, cur, payload = array("q", bytes(8 * n)), self.conn.cursor(), self.payload
        op_id = "019ab0c1-2d3e-7f40-8a1b-2c3d4e5f6a7b"
        for i in range(n):
            self.k += 1
            row = (self.k, op_id, "feedback", 1.7e9, 123456789, payload)
            t0 = _perf()
            cur.execute(INSERT_OP, row)
            buf[i] = _perf() - t0
        return buf

    def close(self) -> None:
        self.conn.close()


class SleepSink(memwal.Sink):
    """Takes 1.5 ms per batch without touching SQLite (or any thread)."""

    async def deliver(self, ops: Sequence[memwal.MemoryOperation]) -> None:
        await anyio.sleep(0.0015)


class CollectNoSQLiteSink(MemwalAsync):
    name = "collect, no SQLite sink"

    def __init__(self, d: Path) -> None:
        super().__init__(d, file="sleep", sink=SleepSink())


class CollectSQLiteSink(MemwalAsync):
    name = "collect, SQLiteSink"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=60_000, help="operations per contender (default 60000)")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    ap.add_argument("--sqlite-memstatus", choices=["on", "off"], default="on",
                    help="SQLite's memory statistics (off: an experiment, Linux only)")
    a = ap.parse_args()
    if a.sqlite_memstatus == "off":
        memstatus_off()  # before the first connection of the process
    print(f"machine: {machine()}; SQLite memstatus {a.sqlite_memstatus}")
    d = Path(tempfile.mkdtemp(prefix="memwal-gap-"))
    contenders: list[Any] = [Floor(d), JournalRow(d), CollectNoSQLiteSink(d), CollectSQLiteSink(d),
                             MemwalElsewhere(d)]
    rows: dict[str, list[list[float]]] = {c.name: [] for c in contenders}
    per_round = a.ops // a.rounds
    for r in range(a.rounds):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        for c in order:
            rows[c.name].append(percentiles(c.run_round(per_round)))
        print(f"  round {r + 1}/{a.rounds} done", flush=True)
    for c in contenders:
        c.close()
    med = {name: median_of(v) for name, v in rows.items()}
    floor50 = med[Floor.name][0]
    print(table(["contender", "p50", "p99", "p99.9", "p50 / floor"],
                [[n, m[0], m[1], m[2], f"{m[0] / floor50:.2f}x"] for n, m in med.items()]))
    path = write_results("bench_collect_gap", {"args": vars(a), "median_us": med, "rounds": rows})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
