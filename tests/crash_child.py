"""The child program of the crash tests: collect in a loop until SIGKILLed.

Prints ``started`` once the collector runs, then each operation's id on its own line,
flushed, only after ``collect_async`` returned it (so a printed id is a promise that
the operation survives the kill). Modes:

- ``plain``: deliver to ``SQLiteSink(store)``.
- ``fallback``: deliver to ``FallbackSink(SQLiteSink(store), SQLiteSink(local))``; the
  store lives in a directory the parent creates later, so the primary first fails with
  SinkUnavailable.
- ``hang``: a sink that prints ``delivering`` and never returns, so rows stay leased;
  collects ``--count`` operations and waits to be killed.

Usage: python crash_child.py MODE JOURNAL STORE [--local PATH] --proc P --round R --seed S
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence

import anyio

import memwal
from memwal import MemoryOperation, Sink

CATEGORIES = ("bug", "error", "feedback", "performance", "architecture", "operation")
PRIORITIES = (None, "critical", "high", "medium", "low")
LIFETIME = 90.0  # exit on our own if the parent forgot us


def crash_config(mode: str) -> memwal.Config:
    """The config the child and the parent's final collector share."""
    if mode == "fallback":
        return memwal.load_config({
            "circuit_breaker": {"recovery_timeout": 0.2},
            "async_collection": {"retry_delay": 0.05, "max_retry_delay": 0.5},
            "fallback": {"reconcile_rate": 10_000},
        })
    if mode == "hang":
        return memwal.load_config({"journal": {"lease_seconds": 3600}})
    return memwal.load_config({"async_collection": {"retry_delay": 0.05, "max_retry_delay": 0.5}})


class HangSink(Sink):
    """Announces each delivery on stdout, then never returns (until killed)."""

    async def deliver(self, ops: Sequence[MemoryOperation]) -> None:
        say(f"delivering {len(ops)}")
        await anyio.sleep_forever()


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def make_sink(args: argparse.Namespace) -> Sink:
    if args.mode == "hang":
        return HangSink()
    store = memwal.SQLiteSink(args.store)
    if args.mode == "fallback":
        return memwal.FallbackSink(store, memwal.SQLiteSink(args.local))
    return store


async def run(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    deadline = time.monotonic() + LIFETIME
    async with memwal.AsyncMemoryCollector(args.journal, make_sink(args), config=crash_config(args.mode)) as c:
        say("started")
        i = 0
        while time.monotonic() < deadline and (args.count is None or i < args.count):
            op_id = await c.collect_async(
                rng.choice(CATEGORIES),
                f"proc {args.proc} round {args.round} op {i}: " + "x" * rng.randrange(200),
                {"proc": args.proc, "round": args.round, "i": i},
                rng.choice(PRIORITIES),
                tags=("crash",),
            )
            say(op_id)
            i += 1
            # Let the consumer run between collects, sometimes for a while, so kills
            # land at every stage: appending, leasing, delivering, settling.
            await anyio.sleep(rng.choice((0, 0, 0, 0.001, 0.005)))
        await anyio.sleep(max(0.0, deadline - time.monotonic()))


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("plain", "fallback", "hang"))
    p.add_argument("journal")
    p.add_argument("store")
    p.add_argument("--local")
    p.add_argument("--proc", type=int, default=0)
    p.add_argument("--round", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int)
    args = p.parse_args(argv)
    anyio.run(run, args)


if __name__ == "__main__":
    main(sys.argv[1:])
