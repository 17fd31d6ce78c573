"""Mem0Sink benchmarks against FakeMem0 running in its own process (tools/fake-mem0).

1. Delivered operations per second into the fake with 20 ms added per request, default Config.
2. The original problem: an agent workflow step that collects 5 memories while mem0 takes
   3 s per request, with memwal beside calling mem0's HTTP API directly in the step.

Run: .venv/bin/python benchmarks/bench_mem0.py [--ops 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import anyio
import anyio.lowlevel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from memwal import AsyncMemoryCollector, Mem0Sink, load_config


def start_fake(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([str(ROOT / "tools" / "fake-mem0"), "--port", "0", "--api", "oss",
                             "--latency", str(latency)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line.rsplit(" ", 1)[-1].strip()


async def control(url: str, path: str = "/_control", body: dict[str, object] | None = None) -> dict[str, object]:
    async with aiohttp.ClientSession() as s:
        if body is None and path == "/_control":
            async with s.get(url + path) as r:
                return await r.json()  # type: ignore[no-any-return]
        async with s.post(url + path, json=body or {}) as r:
            return await r.json()  # type: ignore[no-any-return]


async def throughput(url: str, n: int, tmp: Path, run: int, profile: str | None = None) -> tuple[float, int]:
    await control(url, "/_control/reset")
    sink = Mem0Sink(url, user_id="bench")
    config = load_config(profile=profile, env={})
    async with AsyncMemoryCollector(tmp / f"tp{run}-{profile}.journal", sink, config=config) as c:
        t0 = time.perf_counter()
        for i in range(n):
            await c.collect_async("knowledge", f"benchmark memory {run}-{i}")
        await c.flush_queue(timeout=300)
        elapsed = time.perf_counter() - t0
    stored = (await control(url))["memories"]
    return n / elapsed, int(stored)  # type: ignore[call-overload]


async def agent_step(collect: object) -> float:
    t0 = time.perf_counter()
    await anyio.lowlevel.checkpoint()  # the step's own work, kept trivial so the difference is the memory calls
    for i in range(5):
        await collect(i)  # type: ignore[operator]
    return time.perf_counter() - t0


async def step_latency(url: str, tmp: Path, steps: int, direct_steps: int) -> dict[str, float]:
    await control(url, body={"latency": 3.0})
    out: dict[str, float] = {}
    bare = [await agent_step(lambda i: anyio.lowlevel.checkpoint()) for _ in range(steps)]
    out["step, no memory calls"] = statistics.median(bare)
    sink = Mem0Sink(url, user_id="bench")
    async with AsyncMemoryCollector(tmp / "step.journal", sink) as c:
        times = [await agent_step(lambda i: c.collect_async("workflow", f"step memory {i} {time.time_ns()}"))
                 for _ in range(steps)]
        out["step with memwal (5 x collect_async)"] = statistics.median(times)
        t0 = time.perf_counter()
        await c.flush_queue(timeout=120)
        out["  then flush until mem0 has them all"] = time.perf_counter() - t0
    async with aiohttp.ClientSession() as s:

        async def post(i: int) -> None:
            body = {"messages": [{"role": "user", "content": f"direct {i}"}], "user_id": "bench", "infer": False}
            async with s.post(url + "/memories", json=body) as r:
                await r.read()

        direct = [await agent_step(post) for _ in range(direct_steps)]
        out["step calling mem0 directly (5 sequential POSTs)"] = statistics.median(direct)
    await control(url, body={"latency": 0.0})
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--direct-steps", type=int, default=2)
    args = ap.parse_args()
    proc, url = start_fake(0.02)
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            rates = []
            for run in range(args.runs):
                rate, stored = await throughput(url, args.ops, tmp, run)
                assert stored == args.ops, f"fake holds {stored} memories, expected {args.ops}"
                rates.append(rate)
            fast = [(await throughput(url, args.ops, tmp, run, "high-throughput"))[0] for run in range(args.runs)]
            steps = await step_latency(url, tmp, args.steps, args.direct_steps)
    finally:
        proc.terminate()
        proc.wait()
    print("\n| benchmark | median |")
    print("|---|---|")
    print(f"| delivered ops/s, 20 ms per request, default Config ({args.ops} ops x {args.runs} runs;"
          f" each stored exactly once) | {statistics.median(rates):,.0f} ops/s |")
    print(f"|   runs | {', '.join(f'{r:,.0f}' for r in rates)} |")
    print(f"| same, high-throughput profile (max_concurrent_ops 256, batch 1000) | {statistics.median(fast):,.0f} ops/s |")
    for name, secs in steps.items():
        shown = f"{secs * 1000:.3f} ms" if secs < 1 else f"{secs:.2f} s"
        print(f"| {name} (mem0 at 3 s per request) | {shown} |")
    added = steps["step with memwal (5 x collect_async)"] - steps["step, no memory calls"]
    print(f"| added step latency with memwal | {added * 1000:.3f} ms |")


if __name__ == "__main__":
    anyio.run(main)
