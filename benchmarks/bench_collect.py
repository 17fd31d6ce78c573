"""collect latency beside the raw SQLite floor and peer queues, then end-to-end throughput.

Run: .venv/bin/python benchmarks/bench_collect.py [--ops 100000] [--rounds 10] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import tempfile
import threading
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

import memwal
from memwal._core.records import MemoryOperation, Priority, encode_op

try:  # run as a script (benchmarks/ on sys.path) or as a module
    from _common import CONTENT, machine, median_of, percentiles, table, wal_connection, write_results
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

_perf = time.perf_counter_ns


def op_payload_size() -> int:
    """Bytes of memwal's encoded operation for CONTENT (the floor writes a blob this big)."""
    op = MemoryOperation(id="0" * 36, category="feedback", content=CONTENT, priority=Priority.MEDIUM,
                         created_at=time.time())
    return len(encode_op(op))


# -- contenders: setup once, then run_round(n) -> n samples in ns ---------------------


class Floor:
    """Raw sqlite3 INSERT + COMMIT (autocommit), WAL, synchronous=NORMAL."""

    name = "sqlite3 floor"

    def __init__(self, d: Path) -> None:
        self.conn = wal_connection(d / "floor.db")
        self.conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
        self.payload = CONTENT.encode().ljust(op_payload_size(), b" ")

    def run_round(self, n: int) -> array[int]:
        buf, ex, sql, p = array("q", bytes(8 * n)), self.conn.execute, "INSERT INTO t (payload) VALUES (?)", (self.payload,)
        for i in range(n):
            t0 = _perf()
            ex(sql, p)
            buf[i] = _perf() - t0
        return buf

    def close(self) -> None:
        self.conn.close()



def time_puts(put: Any, n: int) -> array[int]:
    """Time ``n`` calls of ``put(CONTENT)`` one by one, in nanoseconds (the peers' loop)."""
    buf = array("q", bytes(8 * n))
    for i in range(n):
        t0 = _perf()
        put(CONTENT)
        buf[i] = _perf() - t0
    return buf

class LiteQueuePut:
    name = "litequeue put"

    def __init__(self, d: Path) -> None:
        from litequeue import LiteQueue

        self.q = LiteQueue(str(d / "litequeue.db"))

    def run_round(self, n: int) -> array[int]:
        return time_puts(self.q.put, n)

    def close(self) -> None:
        self.q.close()


class PersistQueuePut:
    """persist-queue SQLiteAckQueue.put; ``sync`` None keeps its default (FULL: fsync per put)."""

    def __init__(self, d: Path, *, ack: bool, sync: str | None) -> None:
        import persistqueue

        kind = "SQLiteAckQueue" if ack else "SQLiteQueue"
        self.name = f"persist-queue {kind}" + (f" sync={sync}" if sync else " (default sync=FULL)")
        cls = persistqueue.SQLiteAckQueue if ack else persistqueue.SQLiteQueue
        self.q = cls(str(d / f"pq-{kind}-{sync}"), multithreading=True, auto_commit=True)
        if sync:
            self.q._putter.execute(f"PRAGMA synchronous={sync}")

    def run_round(self, n: int) -> array[int]:
        return time_puts(self.q.put, n)

    def close(self) -> None:
        self.q.close()


class MemwalAsync:
    """AsyncMemoryCollector.collect_async with its consumer draining into SQLiteSink.

    The producer yields once after each timed call (outside the timing), as agent code
    awaiting other work does; collect_async itself never yields.
    """

    name = "memwal collect_async"

    def __init__(self, d: Path, *, file: str = "async", sink: memwal.Sink | None = None,
                 config: memwal.Config | None = None) -> None:
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        sink = memwal.SQLiteSink(d / f"{file}-store.db") if sink is None else sink
        self.c = memwal.AsyncMemoryCollector(d / f"{file}.journal", sink, config=config)
        self._cm = self.portal.wrap_async_context_manager(self.c)  # start and aclose in one task
        self._cm.__enter__()

    async def _round(self, n: int) -> array[int]:
        buf, collect, checkpoint = array("q", bytes(8 * n)), self.c.collect_async, anyio.lowlevel.checkpoint
        for i in range(n):
            t0 = _perf()
            await collect("feedback", CONTENT)
            buf[i] = _perf() - t0
            await checkpoint()
        await self.c.flush_queue(timeout=600)  # untimed: each round starts from an empty journal
        return buf

    def run_round(self, n: int) -> array[int]:
        return self.portal.call(self._round, n)

    def close(self) -> None:
        self.stats = self.c.stats()
        self._cm.__exit__(None, None, None)
        self._portal_cm.__exit__(None, None, None)


def _consume(journal: Path, store: Path, stop: Any) -> None:
    """A child process's collector that only consumes: it drains ``journal`` into ``store``."""

    async def run() -> None:
        async with memwal.AsyncMemoryCollector(journal, memwal.SQLiteSink(store)) as c:
            await anyio.to_thread.run_sync(stop.wait)
            await c.flush_queue(timeout=600)

    anyio.run(run)


class MemwalElsewhere(MemwalAsync):
    """collect_async with ``max_inflight_batches: 0``; another process drains into SQLiteSink."""

    name = "memwal collect_async, consumer in another process"

    def __init__(self, d: Path) -> None:
        config = memwal.load_config({"performance": {"max_inflight_batches": 0}}, env={})
        super().__init__(d, file="elsewhere", config=config)
        ctx = multiprocessing.get_context("spawn")
        self.stop = ctx.Event()
        self.child = ctx.Process(target=_consume, args=(d / "elsewhere.journal", d / "elsewhere-store.db", self.stop))
        self.child.start()

    def close(self) -> None:
        self.stop.set()
        self.child.join(60)
        super().close()


class MemwalSync:
    """MemoryCollector.collect on the main thread; its consumer runs on the portal thread."""

    name = "memwal collect (sync)"

    def __init__(self, d: Path) -> None:
        self.c = memwal.MemoryCollector(d / "sync.journal", memwal.SQLiteSink(d / "sync-store.db"))

    def run_round(self, n: int) -> array[int]:
        buf, collect = array("q", bytes(8 * n)), self.c.collect
        for i in range(n):
            t0 = _perf()
            collect("feedback", CONTENT)
            buf[i] = _perf() - t0
        self.c.flush(timeout=600)
        return buf

    def close(self) -> None:
        self.stats = self.c.stats()
        self.c.close()


def latency(d: Path, ops: int, rounds: int) -> dict[str, Any]:
    makers: list[Callable[[Path], Any]] = [
        Floor, MemwalAsync, MemwalElsewhere, MemwalSync, LiteQueuePut,
        lambda p: PersistQueuePut(p, ack=True, sync="NORMAL"),
        lambda p: PersistQueuePut(p, ack=False, sync="NORMAL"),
        lambda p: PersistQueuePut(p, ack=True, sync=None),
    ]
    contenders = [m(d) for m in makers]
    per_round = ops // rounds
    rows: dict[str, list[list[float]]] = {c.name: [] for c in contenders}
    for r in range(rounds):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        for c in order:
            rows[c.name].append(percentiles(c.run_round(per_round)))
        print(f"  round {r + 1}/{rounds} done", flush=True)
    for c in contenders:
        c.close()
    med = {name: median_of(v) for name, v in rows.items()}
    floor50 = med[Floor.name][0]
    out = {name: {"p50_us": m[0], "p99_us": m[1], "p999_us": m[2], "p50_vs_floor": m[0] / floor50,
                  "rounds": rows[name]} for name, m in med.items()}
    out["_payload_bytes"] = op_payload_size()
    out["_ops_per_contender"] = per_round * rounds
    return out


# -- end-to-end: 100 concurrent producers into SQLiteSink -----------------------------


async def _e2e_async(d: Path, producers: int, seconds: float) -> dict[str, Any]:
    store = d / "e2e-async-store.db"
    async with memwal.AsyncMemoryCollector(d / "e2e-async.journal", memwal.SQLiteSink(store)) as c:
        stop = False

        async def produce() -> None:
            while not stop:
                await c.collect_async("feedback", CONTENT)
                await anyio.lowlevel.checkpoint()

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(producers):
                tg.start_soon(produce)
            await anyio.sleep(seconds)
            stop = True
        produced_s = time.perf_counter() - t0
        backlog = c.stats().pending
        await c.flush_queue(timeout=600)
        total_s = time.perf_counter() - t0
        s = c.stats()
    async with memwal.SQLiteSink(store) as st:
        stored = await st.count()
    return _e2e_row("100 anyio tasks, collect_async", s, stored, produced_s, total_s, backlog)


def _e2e_threads(d: Path, producers: int, seconds: float) -> dict[str, Any]:
    store = d / "e2e-threads-store.db"
    c = memwal.MemoryCollector(d / "e2e-threads.journal", memwal.SQLiteSink(store))
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            c.collect("feedback", CONTENT)

    threads = [threading.Thread(target=produce) for _ in range(producers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    produced_s = time.perf_counter() - t0
    backlog = c.stats().pending
    c.flush(timeout=600)
    total_s = time.perf_counter() - t0
    s = c.stats()
    c.close()

    async def count() -> int:
        async with memwal.SQLiteSink(store) as st:
            return await st.count()

    return _e2e_row("100 threads, MemoryCollector.collect", s, anyio.run(count), produced_s, total_s, backlog)


def _e2e_row(name: str, s: memwal.CollectorStats, stored: int, produced_s: float, total_s: float,
             backlog: int) -> dict[str, Any]:
    return {"name": name, "collected": s.collected, "delivered": s.delivered, "stored": stored,
            "produce_s": produced_s, "total_s": total_s, "backlog_at_stop": backlog,
            "collected_per_s": s.collected / produced_s, "delivered_per_s": s.delivered / total_s,
            "collect_p50_us": s.collect_p50_us, "collect_p99_us": s.collect_p99_us, "dead": s.dead}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=100_000, help="operations per contender (default 100000)")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    ap.add_argument("--producers", type=int, default=100, help="concurrent producers end-to-end (default 100)")
    ap.add_argument("--seconds", type=float, default=5.0, help="end-to-end production time (default 5)")
    ap.add_argument("--quick", action="store_true", help="small numbers for a smoke run")
    ap.add_argument("--skip-e2e", action="store_true", help="latency only")
    a = ap.parse_args()
    if a.quick:
        a.ops, a.rounds, a.seconds = 6_000, 3, 1.0
    print(f"machine: {machine()}")
    d = Path(tempfile.mkdtemp(prefix="memwal-bench-"))
    try:
        print(f"latency: {a.ops} ops per contender in {a.rounds} interleaved rounds ({d})")
        lat = latency(d, a.ops, a.rounds)
        names = [k for k in lat if not k.startswith("_")]
        print(f"\nper-call latency, median of per-round percentiles (us); payload {lat['_payload_bytes']} B")
        print(table(["contender", "p50", "p99", "p99.9", "p50 / floor"],
                    [[n, lat[n]["p50_us"], lat[n]["p99_us"], lat[n]["p999_us"], f"{lat[n]['p50_vs_floor']:.2f}x"]
                     for n in names]))
        for name in (MemwalAsync.name, MemwalElsewhere.name):
            m = lat[name]
            print(f"targets ({name}): p50 <= 1.5x floor: {m['p50_vs_floor']:.2f}x"
                  f" [{'ok' if m['p50_vs_floor'] <= 1.5 else 'MISSED'}]; p99 < 150 us: {m['p99_us']:.1f}"
                  f" [{'ok' if m['p99_us'] < 150 else 'MISSED'}]; p99.9 < 1000 us: {m['p999_us']:.1f}"
                  f" [{'ok' if m['p999_us'] < 1000 else 'MISSED'}]")
        e2e: list[dict[str, Any]] = []
        if not a.skip_e2e:
            print(f"\nend-to-end: {a.producers} producers for {a.seconds:g} s, then flush (counted)")
            e2e.append(anyio.run(_e2e_async, d, a.producers, a.seconds))
            e2e.append(_e2e_threads(d, a.producers, a.seconds))
            print(table(["producers", "collected/s", "delivered/s", "delivered", "stored", "backlog", "total s"],
                        [[r["name"], r["collected_per_s"], r["delivered_per_s"], r["delivered"], r["stored"],
                          r["backlog_at_stop"], r["total_s"]] for r in e2e]))
            for r in e2e:
                ok = r["delivered_per_s"] >= 20_000
                print(f"target >= 20000 delivered ops/s ({r['name']}): {r['delivered_per_s']:.0f} [{'ok' if ok else 'MISSED'}]")
        path = write_results("bench_collect", {"args": vars(a), "latency": lat, "end_to_end": e2e})
        print(f"\nresults: {path}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
