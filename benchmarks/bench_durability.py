"""Group commit: collects per second with ``journal.durability: full`` beside a raw per-commit fsync.

Run: .venv/bin/python benchmarks/bench_durability.py [--seconds 2] [--deliver]

The floor is raw sqlite3 (WAL, ``synchronous=FULL``, autocommit INSERT: one fsync per
commit) in one thread. memwal runs ``durability: full`` with 1, 8, 32 and 100 threads
calling ``MemoryCollector.collect`` and with 32 and 100 anyio tasks awaiting
``collect_async``; ``durability: normal`` with 32 threads for reference. Each contender
collects for ``--seconds``; the rate is calls returned / seconds. Every returned call
is committed and (full) fdatasynced. By default nothing is delivered
(``max_inflight_batches: 0``), so the figure is the journal's; ``--deliver`` drains into
a ``SQLiteSink`` meanwhile (its acknowledgements pay fsyncs too).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sqlite3
import tempfile
import threading
import time
from array import array
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

import memwal

try:  # run as a script (benchmarks/ on sys.path) or as a module
    from _common import CONTENT, machine, percentiles, table, write_results
except ImportError:  # pragma: no cover
    from benchmarks._common import CONTENT, machine, percentiles, table, write_results

_perf = time.perf_counter_ns


def floor(d: Path, seconds: float) -> dict[str, Any]:
    conn = sqlite3.connect(d / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
    payload = (CONTENT.encode().ljust(400, b" "),)
    lat = array("q")
    end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < end:
        s = _perf()
        conn.execute("INSERT INTO t (payload) VALUES (?)", payload)
        lat.append(_perf() - s)
    took = time.perf_counter() - t0
    conn.close()
    return {"name": "sqlite3 FULL, per-commit fsync, 1 thread", "ops": len(lat), "rate": len(lat) / took,
            "p50_us": percentiles(lat)[0]}


def _config(durability: str, deliver: bool) -> memwal.Config:
    perf = {} if deliver else {"max_inflight_batches": 0}
    return memwal.load_config({"journal": {"durability": durability, "shutdown_timeout": 1.0},
                               "performance": perf}, env={})


def threads(d: Path, n: int, seconds: float, durability: str, deliver: bool) -> dict[str, Any]:
    name = f"memwal {durability}, {n} thread{'s' if n > 1 else ''}"
    c = memwal.MemoryCollector(d / f"t{n}{durability}.journal", memwal.SQLiteSink(d / f"t{n}{durability}.db"),
                               config=_config(durability, deliver))
    stop = threading.Event()
    lats = [array("q") for _ in range(n)]

    def produce(buf: array[int]) -> None:
        while not stop.is_set():
            s = _perf()
            c.collect("feedback", CONTENT)
            buf.append(_perf() - s)

    ts = [threading.Thread(target=produce, args=(b,)) for b in lats]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    took = time.perf_counter() - t0
    c.close()
    allv = array("q", (x for b in lats for x in b))
    return {"name": name, "ops": len(allv), "rate": len(allv) / took, "p50_us": percentiles(allv)[0]}


def tasks(d: Path, n: int, seconds: float, durability: str, deliver: bool) -> dict[str, Any]:
    lat = array("q")

    async def run() -> float:
        journal, store = d / f"a{n}{durability}.journal", d / f"a{n}{durability}.db"
        async with memwal.AsyncMemoryCollector(journal, memwal.SQLiteSink(store),
                                               config=_config(durability, deliver)) as c:
            stop = False

            async def produce() -> None:
                while not stop:
                    s = _perf()
                    await c.collect_async("feedback", CONTENT)
                    lat.append(_perf() - s)
                    await anyio.lowlevel.checkpoint()

            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(produce)
                await anyio.sleep(seconds)
                stop = True
            return time.perf_counter() - t0

    took = anyio.run(run)
    return {"name": f"memwal {durability}, {n} anyio tasks", "ops": len(lat), "rate": len(lat) / took,
            "p50_us": percentiles(lat)[0]}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measured(fn: Any, *args: Any) -> dict[str, Any]:
    """``fn(*args)``'s row plus the process CPU time per call (us): a figure machine load moves less."""
    c0 = _cpu()
    row: dict[str, Any] = fn(*args)
    row["cpu_us"] = (_cpu() - c0) / max(1, row["ops"]) * 1e6
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="collecting time per contender (default 2)")
    ap.add_argument("--deliver", action="store_true", help="drain into SQLiteSink while collecting")
    a = ap.parse_args()
    print(f"machine: {machine()}")
    d = Path(tempfile.mkdtemp(prefix="memwal-durability-"))
    try:
        rows = [
            measured(floor, d, a.seconds),
            *(measured(threads, d, n, a.seconds, "full", a.deliver) for n in (1, 8, 32, 100)),
            *(measured(tasks, d, n, a.seconds, "full", a.deliver) for n in (32, 100)),
            measured(threads, d, 32, a.seconds, "normal", a.deliver),
        ]
        base = rows[0]
        print(table(["contender", "ops", "ops/s", "x floor rate", "p50 us", "p50 / floor p50", "CPU us/op"],
                    [[r["name"], r["ops"], r["rate"], f"{r['rate'] / base['rate']:.1f}x", r["p50_us"],
                      f"{r['p50_us'] / base['p50_us']:.2f}x", r["cpu_us"]] for r in rows]))
        by = {r["name"]: r for r in rows}
        checks = [("100 anyio tasks >= 10x", by["memwal full, 100 anyio tasks"]["rate"] / base["rate"], 10),
                  ("32 anyio tasks >= 8x", by["memwal full, 32 anyio tasks"]["rate"] / base["rate"], 8),
                  ("32 threads >= 4x", by["memwal full, 32 threads"]["rate"] / base["rate"], 4)]
        for label, x, goal in checks:
            print(f"target {label}: {x:.1f}x [{'ok' if x >= goal else 'MISSED'}]")
        one = by["memwal full, 1 thread"]["p50_us"] / base["p50_us"]
        print(f"target one producer's p50 <= 1.5x a raw fsync commit: {one:.2f}x [{'ok' if one <= 1.5 else 'MISSED'}]")
        path = write_results("bench_durability", {"args": vars(a), "rows": rows})
        print(f"\nresults: {path}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
