"""Delivery through a primary that fails 30% of calls and takes 20 ms each, default Config.

Measures delivered ops/s, the share of operations needing more than one attempt, the
circuit breaker's openings, and collect_async p99 beside the same run with a healthy
(still 20 ms) primary: failures are the consumer's business, so p99 must not move.

Run: .venv/bin/python benchmarks/bench_resilience.py [--ops 20000] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

import memwal

try:  # run as a script (benchmarks/ on sys.path) or as a module
    from _common import CONTENT, machine, median_of, percentiles, table, write_results
except ImportError:  # pragma: no cover
    from benchmarks._common import CONTENT, machine, median_of, percentiles, table, write_results

_perf = time.perf_counter_ns


class SlowFlakySink(memwal.Sink):
    """Takes ``delay`` seconds per call and fails a ``fail_rate`` share of calls transiently."""

    def __init__(self, fail_rate: float, delay: float = 0.02, seed: int = 0) -> None:
        self.fail_rate = fail_rate
        self.delay = delay
        self.rng = random.Random(seed)
        self.attempts: Counter[str] = Counter()  # id -> sink calls that carried it
        self.stored: set[str] = set()
        self.calls = 0
        self.failed_calls = 0

    async def deliver(self, ops: Sequence[memwal.MemoryOperation]) -> None:
        self.calls += 1
        for op in ops:
            self.attempts[op.id] += 1
        await anyio.sleep(self.delay)
        if self.rng.random() < self.fail_rate:
            self.failed_calls += 1
            raise memwal.SinkUnavailable("simulated outage")
        self.stored.update(op.id for op in ops)


async def one_round(d: Path, label: str, fail_rate: float, ops: int, seed: int) -> dict[str, Any]:
    sink = SlowFlakySink(fail_rate, seed=seed)
    buf = array("q", bytes(8 * ops))
    reached: dict[str, float] = {}  # "50%" -> seconds from the start until that share was delivered

    async def watch(c: memwal.AsyncMemoryCollector, t0: float) -> None:
        marks = [(q, f"{q:.0%}") for q in (0.5, 0.9, 0.99)]
        while marks:
            if c.counters.delivered >= marks[0][0] * ops:
                reached[marks.pop(0)[1]] = time.perf_counter() - t0
            else:
                await anyio.sleep(0.01)

    async with memwal.AsyncMemoryCollector(d / f"{label}-{seed}.journal", sink) as c:
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, c, t0)
            for i in range(ops):
                s = _perf()
                await c.collect_async("feedback", CONTENT)
                buf[i] = _perf() - s
                await anyio.lowlevel.checkpoint()  # agent code awaits other work between collects
            produced_s = time.perf_counter() - t0
            await c.flush_queue(timeout=900)
            total_s = time.perf_counter() - t0
        st = c.stats()
    with sqlite3.connect(d / f"{label}-{seed}.journal") as con:  # dead letters stay in the journal
        kept_dead = con.execute("SELECT count(*) FROM dead").fetchone()[0]
    retried_ops = sum(1 for n in sink.attempts.values() if n > 1)
    opened = sum(v for k, v in st.breaker_transitions.items() if k.endswith(":open"))
    p50, p99, p999 = percentiles(buf)
    return {
        "label": label, "fail_rate": fail_rate, "ops": ops, "delivered": st.delivered, "stored": len(sink.stored),
        "dead": st.dead, "kept_dead": kept_dead, "reached_s": reached, "produce_s": produced_s, "total_s": total_s, "delivered_per_s": st.delivered / total_s,
        "share_retried": retried_ops / max(1, len(sink.attempts)), "max_attempts": max(sink.attempts.values()),
        "sink_calls": sink.calls, "failed_calls": sink.failed_calls, "breaker_openings": opened,
        "breaker_transitions": st.breaker_transitions, "p50_us": p50, "p99_us": p99, "p999_us": p999,
    }


async def run(d: Path, ops: int, rounds: int) -> list[dict[str, Any]]:
    out = []
    for r in range(rounds):
        order = [("healthy", 0.0), ("30% failing", 0.3)]
        for label, rate in order if r % 2 == 0 else order[::-1]:
            res = await one_round(d, label.split()[0], rate, ops, seed=r)
            res["label"] = label
            out.append(res)
            print(f"  round {r + 1}/{rounds} {label}: {res['delivered_per_s']:.0f} delivered/s, "
                  f"p99 {res['p99_us']:.1f} us, breaker openings {res['breaker_openings']}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=20_000, help="operations per round (default 20000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per scenario, interleaved (default 3)")
    ap.add_argument("--quick", action="store_true", help="small numbers for a smoke run")
    a = ap.parse_args()
    if a.quick:
        a.ops, a.rounds = 2_000, 1
    print(f"machine: {machine()}")
    d = Path(tempfile.mkdtemp(prefix="memwal-bench-res-"))
    try:
        rows = anyio.run(run, d, a.ops, a.rounds)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    summary = {}
    for label in ("healthy", "30% failing"):
        rs = [r for r in rows if r["label"] == label]
        p50, p99, p999, rate, share, total, t50, t90, t99 = median_of(
            [[r["p50_us"], r["p99_us"], r["p999_us"], r["delivered_per_s"], r["share_retried"], r["total_s"],
              r["reached_s"]["50%"], r["reached_s"]["90%"], r["reached_s"]["99%"]] for r in rs])
        summary[label] = {"p50_us": p50, "p99_us": p99, "p999_us": p999, "delivered_per_s": rate,
                          "share_retried": share, "total_s": total, "s_to_50%": t50, "s_to_90%": t90, "s_to_99%": t99,
                          "breaker_openings": sum(r["breaker_openings"] for r in rs),
                          "dead": sum(r["dead"] for r in rs), "lost": sum(r["ops"] - r["stored"] - r["kept_dead"] for r in rs)}
    print(f"\nmedians over {a.rounds} rounds of {a.ops} ops (primary: 20 ms per call)")
    print(table(["primary", "delivered/s", "retried share", "breaker opened", "dead", "lost",
                 "collect p50 us", "p99 us", "p99.9 us", "s to 50/90/99/100%"],
                [[k, v["delivered_per_s"], f"{v['share_retried']:.1%}", v["breaker_openings"], v["dead"], v["lost"],
                  v["p50_us"], v["p99_us"], v["p999_us"],
                  "/".join(f"{v[x]:.1f}" for x in ("s_to_50%", "s_to_90%", "s_to_99%", "total_s"))]
                 for k, v in summary.items()]))
    h, f = summary["healthy"], summary["30% failing"]
    print(f"collect_async p99 with failures / without: {f['p99_us'] / h['p99_us']:.2f}x"
          " (delivered/s counts the flush, i.e. the retry backoff tail; see the s-to-x% column)")
    path = write_results("bench_resilience", {"args": vars(a), "summary": summary, "rounds": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
