"""A child process for tests/test_exit.py: collects, prints each id once collect returned
it, and never closes its collector (the point of the tests).

    lifecycle_child.py sync JOURNAL STORE COUNT      MemoryCollector, healthy SQLiteSink
    lifecycle_child.py sync-down JOURNAL STORE COUNT MemoryCollector, a sink that is down
    lifecycle_child.py forever JOURNAL STORE 0        collect until SIGINT
    lifecycle_child.py async JOURNAL STORE COUNT     AsyncMemoryCollector under asyncio.run
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import memwal
from memwal import SinkUnavailable


class DownSink(memwal.Sink):
    async def deliver(self, ops: Sequence[Any]) -> None:
        raise SinkUnavailable("down for the test")


def config() -> memwal.Config:
    return memwal.load_config(
        {"journal": {"poll_interval": 0.01, "shutdown_timeout": 60.0},
         "async_collection": {"retry_delay": 0.01, "max_retry_delay": 0.05}},
        env={},
    )


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main(mode: str, journal: str, store: str, count: int) -> None:
    if mode == "async":
        asyncio.run(async_main(journal, store, count))
        return
    sink: memwal.Sink = DownSink() if mode == "sync-down" else memwal.SQLiteSink(store)
    c = memwal.MemoryCollector(journal, sink, config=config())
    i = 0
    while mode == "forever" or i < count:
        say(c.collect("qa", f"op {i}"))
        i += 1
    say("done")


async def async_main(journal: str, store: str, count: int) -> None:
    c = memwal.AsyncMemoryCollector(journal, memwal.SQLiteSink(store), config=config())
    await c.start()
    for i in range(count):
        say(c.collect("qa", f"op {i}"))
    say("done")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
