"""The cost of observation: collect() p50/p99 with metrics and a 1 s health check, beside them off.

Run: .venv/bin/python benchmarks/bench_observation.py [--rounds 6] [--ops 60000]

Rounds alternate on/off in one process (the machine is noisy: compare the ratio of
medians measured in the same run). "on" keeps the latency windows and histograms and
runs a health check every second, plus a health() and metrics_text() call per round;
"off" sets health.metrics false and a health check interval of an hour.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import memwal
from memwal import MemoryCollector
from memwal._core.config import Config, HealthConfig, PerformanceConfig
from memwal.testing import MemorySink


def one_round(path: Path, on: bool, ops: int) -> tuple[float, float, int, float]:
    cfg = Config(
        health=HealthConfig(metrics=on),
        performance=PerformanceConfig(health_check_interval=1.0 if on else 3600.0),
    )
    lat = []
    perf = time.perf_counter_ns
    start = time.monotonic()
    with MemoryCollector(path, MemorySink(), config=cfg) as c:
        for i in range(ops):
            t0 = perf()
            c.collect("performance", f"step {i} took 12ms", {"i": i})
            lat.append(perf() - t0)
        checks = c._async.monitor.checks  # periodic checks that ran while collecting
        seconds = time.monotonic() - start
        if on:
            memwal.metrics_text(c)
        c.flush(timeout=60)
    lat.sort()
    return lat[len(lat) // 2] / 1000, lat[int(len(lat) * 0.99)] / 1000, checks, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--ops", type=int, default=60000)
    args = ap.parse_args()
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    checks: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                p50, p99, n, seconds = one_round(Path(tmp) / f"r{r}-{int(on)}.journal", on, args.ops)
                results[on].append((p50, p99))
                if on:
                    checks.append((n, seconds))
    med = {on: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
           for on, v in results.items()}
    print(f"collect latency, {args.rounds} interleaved rounds x {args.ops} ops each"
          " (median of the rounds' values, us)")
    print(f"{'mode':<28}{'p50':>10}{'p99':>10}")
    print(f"{'metrics on + 1 s check':<28}{med[True][0]:>10.2f}{med[True][1]:>10.2f}")
    print(f"{'metrics off':<28}{med[False][0]:>10.2f}{med[False][1]:>10.2f}")
    print(f"health checks per 'on' round: {[n for n, _ in checks]} over {[round(s, 1) for _, s in checks]} s")
    (on50, on99), (off50, off99) = med[True], med[False]
    print(f"{'ratio of medians on/off':<28}{on50 / off50:>10.3f}{on99 / off99:>10.3f}")
    pairs = list(zip(results[True], results[False], strict=True))
    r50 = statistics.median(on[0] / off[0] for on, off in pairs)
    r99 = statistics.median(on[1] / off[1] for on, off in pairs)
    print(f"{'median paired ratio':<28}{r50:>10.3f}{r99:>10.3f}")


if __name__ == "__main__":
    main()
