"""The simulator's own check: plain sqlite3 commits rows until SIGKILLed.

Each thread inserts one row per transaction on its own connection and prints the
row's id, flushed, only after COMMIT returned (a printed id is a promise). A small
``wal_autocheckpoint`` makes checkpoints (and so WAL restarts) happen during a run.

Usage: python sqlite_child.py DB SYNCHRONOUS THREADS RUN
"""

from __future__ import annotations

import sqlite3
import sys
import threading

LIMIT = 1_000_000  # rows per thread; the parent kills the child long before


def worker(db: str, sync: str, n: str, out: threading.Lock) -> None:
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={sync}")
    conn.execute("PRAGMA wal_autocheckpoint=50")
    for i in range(LIMIT):
        row_id = f"{n}-{i}"
        conn.execute("INSERT INTO t (id, body) VALUES (?, ?)", (row_id, "x" * (100 + i % 300)))
        with out:
            sys.stdout.write(row_id + "\n")
            sys.stdout.flush()


def main(db: str, sync: str, threads: str, run: str) -> None:
    out = threading.Lock()
    print("started", flush=True)
    ts = [threading.Thread(target=worker, args=(db, sync, f"{run}.{n}", out)) for n in range(int(threads))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


if __name__ == "__main__":
    main(*sys.argv[1:])
