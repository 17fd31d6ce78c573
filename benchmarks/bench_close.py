"""How long ``aclose()`` takes when nothing can be delivered, and with one batch in flight.

Scenarios (default Config, ``shutdown_timeout`` 10 s):

- ``sink down``: a sink that raises SinkUnavailable at once; 10,000 rows collected, the
  consumer has failed on them (its breaker opened); then ``aclose()`` is timed.
  Target: under 100 ms (before: the whole ``shutdown_timeout``).
- ``1 batch in flight``: a sink that answers after 1 s; one batch of 100 rows in flight
  when ``aclose()`` begins. Expected: about 1 s (the close waits for that delivery).

Each scenario also reports the sink calls the close made (a count, not a time).

Run: .venv/bin/python benchmarks/bench_close.py [--rounds 5] [--rows 10000] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

import memwal
from memwal._journal.journal import Journal

try:  # run as a script (benchmarks/ on sys.path) or as a module
    from _common import CONTENT, machine, table, write_results
except ImportError:  # pragma: no cover
    from benchmarks._common import CONTENT, machine, table, write_results


class DownSink(memwal.Sink):
    def __init__(self) -> None:
        self.calls = 0

    async def deliver(self, ops: Sequence[Any]) -> None:
        self.calls += 1
        raise memwal.SinkUnavailable("down")


class SlowSink(memwal.Sink):
    """Answers every call after ``delay`` seconds; ``entered`` is set by the first call."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0
        self.entered = anyio.Event()

    async def deliver(self, ops: Sequence[Any]) -> None:
        self.calls += 1
        self.entered.set()
        await anyio.sleep(self.delay)


async def sink_down(journal: Path, rows: int) -> tuple[float, int, int]:
    sink = DownSink()
    c = memwal.AsyncMemoryCollector(journal, sink)
    await c.start()
    for i in range(rows):
        c.collect("feedback", f"{CONTENT} {i}")
        if i % 1000 == 999:
            await anyio.lowlevel.checkpoint()
    with anyio.fail_after(60):  # the consumer has tried, failed and opened its breaker
        while c.counters.retried + c.counters.released == 0:  # noqa: ASYNC110  (polled, with a deadline)
            await anyio.sleep(0.01)
    before = sink.calls
    t0 = time.perf_counter()
    await c.aclose()
    elapsed = time.perf_counter() - t0
    left = Journal(journal)
    left.open()
    pending = left.counts().pending
    left.close()
    return elapsed, sink.calls - before, pending


async def one_in_flight(journal: Path, delay: float) -> tuple[float, int, int]:
    sink = SlowSink(delay)
    c = memwal.AsyncMemoryCollector(journal, sink)
    await c.start()
    for i in range(c.config.async_collection.batch_size):
        c.collect("feedback", f"{CONTENT} {i}")
    await sink.entered.wait()
    t0 = time.perf_counter()
    await c.aclose()
    elapsed = time.perf_counter() - t0
    return elapsed, sink.calls - 1, c.counters.delivered


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--delay", type=float, default=1.0)
    p.add_argument("--quick", action="store_true", help="2 rounds, 2,000 rows")
    a = p.parse_args()
    if a.quick:
        a.rounds, a.rows = 2, 2_000
    results: dict[str, list[tuple[float, int, int]]] = {"sink down": [], "1 batch in flight": []}
    for r in range(a.rounds):
        d = Path(tempfile.mkdtemp(prefix="bench_close"))
        try:
            results["sink down"].append(anyio.run(sink_down, d / f"down{r}.journal", a.rows))
            results["1 batch in flight"].append(anyio.run(one_in_flight, d / f"slow{r}.journal", a.delay))
        finally:
            shutil.rmtree(d)
    rows = []
    for name, runs in results.items():
        times = [t for t, _, _ in runs]
        rows.append([
            name, f"{statistics.median(times) * 1000:.1f}", f"{min(times) * 1000:.1f}", f"{max(times) * 1000:.1f}",
            str(max(n for _, n, _ in runs)), str(runs[-1][2]),
        ])
    print(table(["scenario", "aclose median ms", "min ms", "max ms", "sink calls during close (max)",
                 "rows left pending / delivered (last round)"], rows))
    path = write_results("bench_close", {"args": vars(a), "machine": machine(),
                                         "runs": {k: [list(x) for x in v] for k, v in results.items()}})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
