"""A collector process for test_replay: its sink never completes, so it holds its leases.

Usage: python replay_collector_child.py JOURNAL N. Collects N operations, waits until
its consumer holds a lease, prints the ids as one JSON line, then waits for SIGKILL.
"""

from __future__ import annotations

import json
import sys
import time

import anyio

import memwal
from memwal.testing import FlakySink


async def main(path: str, n: int) -> None:
    config = memwal.load_config({"async_collection": {"batch_size": 10}})
    async with memwal.AsyncMemoryCollector(path, FlakySink(hang=True), config=config) as c:
        ids = []
        for i in range(n):
            category = ("bug", "decision", "pattern")[i % 3]
            priority = ("critical", "high", "medium", "low")[i % 4]
            ids.append(await c.collect_async(category, f"memory {i}", {"i": i}, priority, tags=["t"]))
        deadline = time.monotonic() + 30
        while c.journal.counts().leased == 0:
            if time.monotonic() > deadline:
                sys.exit("the consumer never leased a batch")
            await anyio.sleep(0.01)
        print(json.dumps(ids), flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]))
