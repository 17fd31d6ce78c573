"""The memwal demo: a simulated agent workflow collecting memories into a SQLiteSink.

Run with ``tools/demo`` (sets up .venv first). Options: --ops N, --agents N, --dir PATH.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import time
from pathlib import Path

import anyio
import anyio.lowlevel

from memwal import AsyncMemoryCollector, SQLiteSink

KINDS = [
    ("bug", "critical", "null pointer in {mod} when the input is empty"),
    ("error", None, "timeout calling {mod} after 30s"),
    ("feedback", "medium", "user prefers shorter answers from {mod}"),
    ("performance", "low", "{mod} took 2.4s for a 10-line diff"),
    ("architecture", "medium", "{mod} should own retries, not its callers"),
    ("operation", "low", "deployed {mod} to staging"),
    ("qa", "high", "test for {mod} is flaky on arm64"),
]
MODULES = ["parser", "planner", "retriever", "tool-runner", "summariser", "git-bridge"]


async def agent(name: str, c: AsyncMemoryCollector, steps: int, lat: list[float], rng: random.Random) -> None:
    for step in range(steps):
        await anyio.lowlevel.checkpoint()  # the agent's own work would happen here
        category, priority, text = rng.choice(KINDS)
        t0 = time.perf_counter_ns()
        await c.collect_async(
            category,
            text.format(mod=rng.choice(MODULES)),
            {"agent": name, "step": step},
            priority,
            tags=[name],
            project="demo",
        )
        lat.append((time.perf_counter_ns() - t0) / 1000)


def pct(data: list[float], q: float) -> float:
    return data[min(len(data) - 1, int(q * len(data)))]


async def main(ops: int, agents: int, workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    journal, store = workdir / "agent.journal", workdir / "memories.db"
    lat: list[float] = []
    rng = random.Random(7)
    started = time.perf_counter()
    async with AsyncMemoryCollector(journal, SQLiteSink(store)) as c:
        async with anyio.create_task_group() as tg:
            for i in range(agents):
                tg.start_soon(agent, f"agent-{i}", c, ops // agents, lat, rng)
        collected_in = time.perf_counter() - started
        await c.flush_queue(timeout=60)
        elapsed = time.perf_counter() - started
        stats = c.stats()
        hits = await c.sink.search("parser flaky")
    async with SQLiteSink(store) as s:
        stored = await s.count()
        by_cat = {k: await s.count(k) for k, _, _ in KINDS}
    lat.sort()
    print(f"memwal demo: {agents} agents collected {stats.collected} memories in {collected_in:.2f}s")
    print(f"  delivered to the SQLite store: {stats.delivered} in {stats.batches} batches "
          f"({elapsed:.2f}s including the final flush); stored rows: {stored}")
    print("  by category: " + ", ".join(f"{k}={v}" for k, v in by_cat.items()))
    print(f"  collect_async latency: p50 {pct(lat, .5):.1f} us, p99 {pct(lat, .99):.1f} us, "
          f"p99.9 {pct(lat, .999):.1f} us, max {lat[-1]:.1f} us")
    print(f"  retried {stats.retried}, dead-lettered {stats.dead}, dropped {stats.dropped}, still pending {stats.pending}")
    print(f"  full-text search 'parser flaky' finds {len(hits)} memories, first: {hits[0].content!r}" if hits else "")
    for f in sorted(workdir.iterdir()):
        print(f"  file: {f}  ({os.path.getsize(f):,} bytes)")
    print("  inspect the journal with: .venv/bin/memwal-replay status " + str(journal))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ops", type=int, default=3000)
    p.add_argument("--agents", type=int, default=10)
    p.add_argument("--dir", type=Path, default=Path(".demo"))
    a = p.parse_args()
    anyio.run(main, a.ops, a.agents, a.dir)
