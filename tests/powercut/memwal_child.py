"""The power-cut campaigns' child: memwal collects from threads into SQLiteSink until SIGKILLed.

Prints ``started`` once the collector runs, then ``<id> <monotonic ns>`` for each
operation, flushed, only after ``collect`` returned its id (a printed id is a promise;
the time tells which later journal sync must have made its row durable). Checkpoints
are frequent (``checkpoint_pages`` small) so cuts land around them.

``SINK`` is ``store`` (SQLiteSink following the journal's durability) or ``nosync``
(a SQLiteSink that commits without fsync and ignores ``sync()``: the broken chain
the campaigns must catch).

Usage: python memwal_child.py JOURNAL STORE DURABILITY THREADS RUN SINK
"""

from __future__ import annotations

import sys
import threading
import time

import memwal

LIMIT = 100_000  # collects per thread; the parent kills the child long before


class NoSyncSink(memwal.SQLiteSink):
    """Breaks the durability chain on purpose: never makes its deliveries durable."""

    async def sync(self) -> None:
        return None


def child_config(durability: str) -> memwal.Config:
    """The config every run of the child uses."""
    return memwal.load_config({
        "journal": {"durability": durability, "checkpoint_pages": 40, "poll_interval": 0.01},
        "async_collection": {"batch_size": 20, "retry_delay": 0.05, "max_retry_delay": 0.5},
    })


def worker(c: memwal.MemoryCollector, tag: str, out: threading.Lock) -> None:
    for i in range(LIMIT):
        op_id = c.collect("bug", f"{tag} op {i}: " + "x" * (i % 200), {"tag": tag, "i": i}, tags=("powercut",))
        stamp = time.monotonic_ns()
        with out:
            sys.stdout.write(f"{op_id} {stamp}\n")
            sys.stdout.flush()


def main(journal: str, store: str, durability: str, threads: str, run: str, sink: str) -> None:
    out = threading.Lock()
    store_sink = memwal.SQLiteSink(store) if sink == "store" else NoSyncSink(store, durability="normal")
    with memwal.MemoryCollector(journal, store_sink, config=child_config(durability)) as c:
        print("started", flush=True)
        ts = [threading.Thread(target=worker, args=(c, f"{run}.{n}", out)) for n in range(int(threads))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()


if __name__ == "__main__":
    main(*sys.argv[1:])
