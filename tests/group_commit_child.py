"""The child of test_group_commit: many threads collect with ``durability: full`` until SIGKILLed.

Prints ``started``, then each id on its own line only after ``MemoryCollector.collect``
returned it (a printed id is a promise that its row is committed and synced). Nothing
is delivered (``max_inflight_batches: 0``), so every promised row stays in the journal.

Usage: python group_commit_child.py JOURNAL THREADS
"""

from __future__ import annotations

import sys
import threading
import time

import memwal
from memwal.testing import MemorySink

LIFETIME = 60.0  # exit on our own if the parent forgot us


def main() -> None:
    journal, threads = sys.argv[1], int(sys.argv[2])
    config = memwal.load_config(
        {"journal": {"durability": "full"}, "performance": {"max_inflight_batches": 0}}, env={}
    )
    c = memwal.MemoryCollector(journal, MemorySink(), config=config)
    out = threading.Lock()
    print("started", flush=True)

    def produce(t: int) -> None:
        i = 0
        while True:
            op_id = c.collect("feedback", f"thread {t} op {i}")
            with out:
                sys.stdout.write(op_id + "\n")
                sys.stdout.flush()
            i += 1

    for t in range(threads):
        threading.Thread(target=produce, args=(t,), daemon=True).start()
    time.sleep(LIFETIME)


if __name__ == "__main__":
    main()
