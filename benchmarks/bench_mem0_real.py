"""memwal against the real self-hosted mem0 server (../shared/mem0-server), in one run.

1. A plain aiohttp client adding N memories with 1, 2, 4 and 8 adds in flight: the best
   of them is the server's practical capacity on this machine.
2. memwal with its default config (AsyncMemoryCollector + Mem0Sink): N memories,
   memories/s from the first collect to the end of the flush, requests per delivered
   memory (adds, look-ups and failed attempts together), each memory exactly once,
   and the collect_async p50.
3. Overload: twice the best plain rate offered for ``--overload`` seconds: what memwal
   delivers meanwhile, its concurrency limit, the timeouts it piles up (it should not),
   and the time to drain the backlog.

Each run writes under a fresh user id, so runs do not see each other's memories (the
table grows with every run, as a real deployment's does). Throughput figures on a
shared machine are ratios within one run.

Run: bash ../shared/mem0-server/start.sh
     .venv/bin/python benchmarks/bench_mem0_real.py [--url http://127.0.0.1:8765] [--n 1000] [--overload 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from memwal import AsyncMemoryCollector, Mem0Sink, load_config

KEY = os.environ.get("MEMWAL_MEM0_API_KEY", "mem0-real-admin-key-0123456789")


def text(run: str, i: int) -> str:
    return f"benchmark memory {i} of run {run}: the build on runner {i % 17} took {i % 23} minutes"


async def plain(url: str, n: int, in_flight: int) -> dict[str, Any]:
    """N adds with ``in_flight`` workers; each add is one request, retried on failure."""
    user = f"bench-plain-{uuid.uuid4().hex[:8]}"
    todo = iter(range(n))
    requests = failures = 0
    async with aiohttp.ClientSession(headers={"X-API-Key": KEY},
                                     connector=aiohttp.TCPConnector(limit=in_flight)) as http:

        async def worker() -> None:
            nonlocal requests, failures
            for i in todo:
                body = {"messages": [{"role": "user", "content": text(user, i)}], "user_id": user,
                        "metadata": {"memwal_id": f"{user}-{i}"}, "infer": False}
                while True:
                    requests += 1
                    try:
                        async with http.post(url + "/memories", json=body,
                                             timeout=aiohttp.ClientTimeout(total=60)) as r:
                            await r.read()
                            if r.status == 200:
                                break
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    failures += 1

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(in_flight):
                tg.start_soon(worker)
        elapsed = time.perf_counter() - t0
    return {"in_flight": in_flight, "per_s": n / elapsed, "requests": requests, "failures": failures}


async def listed(url: str, user: str) -> list[str]:
    async with aiohttp.ClientSession(headers={"X-API-Key": KEY}) as http, \
            http.get(url + "/memories", params={"user_id": user, "top_k": "1000"}) as r:
        body = await r.json()
    return [m["metadata"]["memwal_id"] for m in body["results"] if (m.get("metadata") or {}).get("memwal_id")]


def requests_of(sink: Mem0Sink) -> int:
    c = sink.counts
    return c["added"] + c["lookups"] + c["transient"] + c["ambiguous"] + c["rejected"]


async def with_memwal(url: str, n: int, tmp: Path) -> dict[str, Any]:
    user = f"bench-memwal-{uuid.uuid4().hex[:8]}"
    sink = Mem0Sink(url, api_key=KEY, user_id=user, ledger=tmp / "memwal.journal.mem0-ledger")
    lat: list[int] = []
    async with AsyncMemoryCollector(tmp / "memwal.journal", sink, config=load_config(env={})) as c:
        t0 = time.perf_counter()
        ids = []
        for i in range(n):
            s = time.perf_counter_ns()
            ids.append(await c.collect_async("knowledge", text(user, i)))
            lat.append(time.perf_counter_ns() - s)
        await c.flush_queue(timeout=600)
        elapsed = time.perf_counter() - t0
        delivered = c.stats().delivered
    stored = await listed(url, user)
    return {"per_s": n / elapsed, "delivered": delivered, "requests": requests_of(sink),
            "requests_per_memory": requests_of(sink) / max(1, delivered), "counts": dict(sink.counts),
            "limit": sink.concurrency(), "collect_p50_us": statistics.median(lat) / 1000,
            # exactly once: every id listed once and no add that might have stored twice
            "listed": len(stored), "all_listed_once": sorted(stored) == sorted(ids),
            "ambiguous": sink.counts["ambiguous"]}


async def overload(url: str, rate: float, seconds: float, tmp: Path) -> dict[str, Any]:
    user = f"bench-over-{uuid.uuid4().hex[:8]}"
    sink = Mem0Sink(url, api_key=KEY, user_id=user, ledger=tmp / "over.journal.mem0-ledger")
    limits: list[int] = []
    async with AsyncMemoryCollector(tmp / "over.journal", sink, config=load_config(env={})) as c:
        t0 = time.perf_counter()
        i = 0
        while (now := time.perf_counter() - t0) < seconds:
            while i < rate * now:
                await c.collect_async("knowledge", text(user, i))
                i += 1
            limits.append(int(sink.concurrency()["limit"]))
            await anyio.sleep(0.05)
        during = c.stats().delivered
        backlog = i - during
        t1 = time.perf_counter()
        await c.flush_queue(timeout=900)
        drain = time.perf_counter() - t1
        delivered = c.stats().delivered
    return {"offered": i, "offered_per_s": i / seconds, "delivered_during": during,
            "delivered_per_s_during": during / seconds, "backlog_at_end": backlog, "drain_s": drain,
            "delivered": delivered, "timeouts_and_ambiguous": sink.counts["ambiguous"],
            "not_sent_handed_back": sink.counts["not_sent"], "requests_per_memory": requests_of(sink) / delivered,
            "limit_median": statistics.median(limits), "limit_max": max(limits), "counts": dict(sink.counts)}


async def main(args: argparse.Namespace) -> None:
    out: dict[str, Any] = {"url": args.url, "n": args.n}
    out["plain"] = []
    for k in (1, 2, 4, 8):
        r = await plain(args.url, args.n, k)
        out["plain"].append(r)
        print(json.dumps(r), flush=True)
    best = max(r["per_s"] for r in out["plain"])
    with tempfile.TemporaryDirectory() as d:
        m = await with_memwal(args.url, args.n, Path(d))
        m["ratio_to_best_plain"] = m["per_s"] / best
        out["memwal"] = m
        print(json.dumps(m), flush=True)
        if args.overload > 0:
            o = await overload(args.url, 2 * best, args.overload, Path(d))
            out["overload"] = o
            print(json.dumps(o), flush=True)
    print(json.dumps({"best_plain_per_s": best, "memwal_per_s": m["per_s"], "ratio": m["ratio_to_best_plain"],
                      "requests_per_memory": m["requests_per_memory"], "exactly_once": m["all_listed_once"]
                      and m["ambiguous"] == 0}), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("MEMWAL_MEM0_URL", "http://127.0.0.1:8765"))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--overload", type=float, default=30.0, help="seconds of twice-capacity load (0: skip)")
    anyio.run(main, ap.parse_args())
