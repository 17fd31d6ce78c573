"""The read cache against FakeMem0 in its own process: hit rate, mem0 requests, get latency, staleness.

1. A Zipf (exponent 1.1) read workload over 10,000 memories (gets and category-filtered
   searches), with writes interleaved, run twice with the same seed: cache on and off.
   Every read is checked against the ground truth of what was collected: a get must
   return the collected content; a search for a memory's key word must return exactly
   the memories collected with that word so far (right after a write too). The hit
   rate is given for the whole run (from a cold cache) and for its second half.
2. Resident memory (VmRSS) added by a full cache plus 100,000 pending operations, in a
   child process whose sink never finishes a delivery.

Run: .venv/bin/python benchmarks/bench_cache.py [--memories 10000] [--reads 6000] [--runs 3]
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from memwal import AsyncMemoryCollector, Mem0Sink, SinkUnavailable, load_config

CATEGORIES = ("bug", "error", "feedback", "decision", "pattern", "knowledge", "workflow", "performance")
FILLER = "observed while running the nightly agent workflow against the staging cluster"


def start_fake() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([str(ROOT / "tools" / "fake-mem0"), "--port", "0", "--api", "oss"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().rsplit(" ", 1)[-1].strip()


async def requests_made(url: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as s, s.get(url + "/_control") as r:
        return dict((await r.json())["requests"])


class Zipf:
    """Ranks 0..n-1 with P(rank k) proportional to 1/(k+1)**s."""

    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        self.cum = list(itertools.accumulate(1 / (k + 1) ** s for k in range(n)))
        self.rng = rng

    def __call__(self) -> int:
        return bisect.bisect_left(self.cum, self.rng.random() * self.cum[-1])


@dataclass
class Truth:
    """What was collected: content by id, and ids by key word."""

    content: dict[str, str] = field(default_factory=dict)
    by_key: dict[int, list[str]] = field(default_factory=dict)
    category: dict[int, str] = field(default_factory=dict)


def text(key: int, n: int) -> str:
    return f"k{key} note {n} {FILLER}"


async def load(url: str, n: int, journal: Path) -> tuple[Truth, Mem0Sink]:
    truth = Truth()
    sink = Mem0Sink(url, user_id="bench")
    ids: dict[str, str] = {}
    config = load_config({"async_collection": {"batch_size": 200, "max_batch_size": 2000}}, env={})
    async with AsyncMemoryCollector(journal, sink, config=config) as c:
        for k in range(n):
            cat = CATEGORIES[k % len(CATEGORIES)]
            op_id = c.collect(cat, text(k, 0))
            truth.content[op_id], truth.by_key[k], truth.category[k] = text(k, 0), [op_id], cat
        await c.flush_queue(timeout=600)
    ids.update(sink.mem0_ids.items())
    return truth, sink


@dataclass
class Result:
    hit_rate: float = 0.0
    warm_hit_rate: float = 0.0
    requests: int = 0
    read_requests: int = 0
    get_hit_us: list[float] = field(default_factory=list)
    get_miss_us: list[float] = field(default_factory=list)
    stale: int = 0
    errors: int = 0
    checks: int = 0
    ryw_checks: int = 0
    seconds: float = 0.0
    hot_reads: int = 0  # workload reads of the 10% most frequently accessed keys
    hot_hits: int = 0
    workload_reads: int = 0  # reads of the workload, without the two checks after each write
    workload_hits: int = 0


async def workload(url: str, truth: Truth, mem0_ids: Any, journal: Path, *, cache: bool, reads: int,
                   write_every: int, seed: int) -> Result:
    rng = random.Random(seed)
    n = len(truth.by_key)
    zipf = Zipf(n, 1.1, rng)
    perm = list(range(n))
    random.Random(7).shuffle(perm)  # the hot keys are spread over the load order
    sink = Mem0Sink(url, user_id="bench")
    sink.mem0_ids.update(mem0_ids.items())  # as if this process had delivered them (fast gets)
    config = load_config({"cache": {"enabled": cache}}, env={})
    res = Result()
    before = await requests_made(url)
    t0 = time.perf_counter()
    async with AsyncMemoryCollector(journal, sink, config=config) as c:

        async def read(call: Any) -> Any:
            for attempt in range(3):  # a read error is the caller's to retry: count it, try again
                try:
                    return await call()
                except SinkUnavailable:
                    res.errors += 1
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

        async def check_get(op_id: str) -> None:
            hits = c.cache.hits if c.cache else 0
            t = time.perf_counter_ns()
            got = await read(lambda: c.get(op_id))
            us = (time.perf_counter_ns() - t) / 1000
            (res.get_hit_us if c.cache and c.cache.hits > hits else res.get_miss_us).append(us)
            res.checks += 1
            if got is None or got.content != truth.content[op_id]:
                res.stale += 1

        async def check_search(key: int) -> None:
            got = await read(lambda: c.search(f"k{key}", category=truth.category[key], limit=10))
            res.checks += 1
            if {m.id for m in got} != set(truth.by_key[key]) or any(m.content != truth.content[m.id] for m in got):
                res.stale += 1

        half = (0, 0)
        for i in range(reads):
            if i == reads // 2 and c.cache is not None:
                half = (c.cache.hits, c.cache.misses)
            if write_every and i % write_every == write_every - 1:
                key = perm[zipf()]
                if len(truth.by_key[key]) >= 8:  # keep every key's matches within the search limit
                    key = len(truth.by_key)
                    truth.by_key[key], truth.category[key] = [], CATEGORIES[key % len(CATEGORIES)]
                body = text(key, len(truth.by_key[key]))
                op_id = c.collect(truth.category[key], body)
                truth.content[op_id] = body
                truth.by_key[key].append(op_id)
                await check_get(op_id)  # read-your-writes, before delivery or just after
                await check_search(key)
                res.ryw_checks += 2
                continue
            rank = zipf()
            key = perm[rank]
            hits_before = c.cache.hits if c.cache else 0
            if rng.random() < 0.7:
                await check_get(rng.choice(truth.by_key[key]))
            else:
                await check_search(key)
            if c.cache is not None:
                res.workload_reads += 1
                res.workload_hits += c.cache.hits > hits_before
            if c.cache is not None and rank < n // 10:  # the seed's "frequently accessed memories"
                res.hot_reads += 1
                res.hot_hits += c.cache.hits > hits_before
        stats = c.stats()
        await c.flush_queue(timeout=120)
    res.seconds = time.perf_counter() - t0
    after = await requests_made(url)
    res.requests = sum(after.values()) - sum(before.values())
    res.read_requests = res.requests - sink.counts["lookups"] - after.get("POST /memories", 0) + before.get(
        "POST /memories", 0)
    res.hit_rate = stats.cache_hit_rate
    looked = stats.cache_hits + stats.cache_misses - sum(half)
    res.warm_hit_rate = (stats.cache_hits - half[0]) / looked if looked else 0.0
    return res


# -- resident memory ------------------------------------------------------------------------


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


async def rss_child(tmp: Path, pending: int) -> dict[str, float]:
    from memwal import MemoryOperation
    from memwal.testing import FlakySink, MemorySink

    sink = FlakySink(hang=True)  # deliveries never finish: every collected op stays pending
    stored = [MemoryOperation(id=f"01900000-0000-7000-8000-{i:012d}", category=CATEGORIES[i % 8],
                              content=text(i, 0), created_at=float(i)) for i in range(2000)]
    await MemorySink.deliver(sink, stored)  # the backend's data (not memwal's) exists before the baseline
    config = load_config({"async_collection": {"max_queue_size": pending * 2},
                          "journal": {"shutdown_timeout": 0.2}}, env={})
    async with AsyncMemoryCollector(tmp / "rss.journal", sink, config=config) as c:
        base = rss_kib()
        for i in range(pending):
            c.collect(CATEGORIES[i % 8], text(100_000 + i, 0) + f" pending {i}")
        after_collect = rss_kib()
        for op in stored[:500]:
            await c.get(op.id)
        for i in range(500):
            await c.search(f"k{i}", limit=10)
        assert c.cache is not None
        s = c.cache.statistics()
        full = rss_kib()
        pend = c.stats().pending + c.stats().leased
    return {"base_mib": base / 1024, "collect_mib": (after_collect - base) / 1024, "total_mib": (full - base) / 1024,
            "cache_entries": s.size, "pending": pend}


def run_rss(pending: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(pending)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- main ---------------------------------------------------------------------------------


def pct(data: list[float], q: float) -> float:
    return sorted(data)[min(len(data) - 1, int(q * len(data)))] if data else float("nan")


async def bench(args: argparse.Namespace) -> None:
    proc, url = start_fake()
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            t = time.perf_counter()
            truth, loader = await load(url, args.memories, tmp / "load.journal")
            print(f"loaded {args.memories} memories into FakeMem0 ({url}) in {time.perf_counter() - t:.1f} s")
            rows: dict[str, list[Result]] = {"cache on": [], "cache off": []}
            for run in range(args.runs):
                for mode in ("cache off", "cache on"):
                    r = await workload(url, truth, loader.mem0_ids, tmp / f"{mode}-{run}.journal",
                                       cache=mode == "cache on", reads=args.reads, write_every=args.write_every,
                                       seed=run)
                    rows[mode].append(r)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"\n{args.reads} reads per run (70% get, 30% search by key word + category), Zipf s=1.1 over"
          f" {args.memories} memories, 1 write per {args.write_every} reads; medians of {args.runs} runs")
    print(f"{'':10} {'hit rate':>9} {'2nd half':>9} {'mem0 req':>9} {'read req':>9} {'get hit p50':>12} {'get miss p50':>13}"
          f" {'stale':>6} {'checks':>7} {'errors':>7} {'seconds':>8}")
    med = statistics.median
    for mode, rs in rows.items():
        print(f"{mode:10} {med(r.hit_rate for r in rs):9.1%} {med(r.warm_hit_rate for r in rs):9.1%} {med(r.requests for r in rs):9.0f}"
              f" {med(r.read_requests for r in rs):9.0f} {med(pct(r.get_hit_us, .5) for r in rs):9.1f} us"
              f" {med(pct(r.get_miss_us, .5) for r in rs) / 1000:10.2f} ms {sum(r.stale for r in rs):6d}"
              f" {sum(r.checks for r in rs):7d} {sum(r.errors for r in rs):7d} {med(r.seconds for r in rs):8.1f}")
    work = [r.workload_hits / r.workload_reads for r in rows["cache on"] if r.workload_reads]
    if work:
        print(f"hit rate on the workload's reads (without the 2 read-your-writes checks after each write,"
              f" misses by construction): {med(work):.1%}")
    hot = [r.hot_hits / r.hot_reads for r in rows["cache on"] if r.hot_reads]
    if hot:
        print(f"hit rate on reads of the 10% most frequently accessed memories: {med(hot):.1%}"
              f" ({med(r.hot_reads for r in rows['cache on']):.0f} of {args.reads} reads per run)")
    on = med(r.requests for r in rows["cache on"])
    off = med(r.requests for r in rows["cache off"])
    print(f"mem0 requests with the cache: {on / off:.0%} of without ({1 - on / off:.0%} fewer);"
          f" read-your-writes checks per run: {rows['cache on'][0].ryw_checks}")
    rss = run_rss(args.pending)
    print(f"\nRSS increase, {rss['pending']:.0f} pending ops + full cache ({rss['cache_entries']:.0f} entries):"
          f" {rss['total_mib']:.1f} MiB (of which collecting: {rss['collect_mib']:.1f} MiB;"
          f" baseline {rss['base_mib']:.1f} MiB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memories", type=int, default=10_000)
    p.add_argument("--reads", type=int, default=6000)
    p.add_argument("--write-every", type=int, default=50)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--pending", type=int, default=100_000)
    p.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(anyio.run(rss_child, Path(d), args.rss_child)))
        return
    anyio.run(bench, args)


if __name__ == "__main__":
    main()
