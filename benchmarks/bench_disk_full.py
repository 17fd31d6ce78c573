"""A full disk: the least free space that lets a journal of N rows drain.

Run (as root: it mounts a tmpfs): .venv/bin/python benchmarks/bench_disk_full.py [--rows 500 1000 2000 4000 8000]

For each N: a fresh journal on a 64 MiB tmpfs gets N appends of a ~330-byte memory
(never checkpointed: the worst case, every row only in the WAL), a ballast fills the
disk to the last byte, then the ballast shrinks by F bytes and the journal drains
through the consumer's write paths (``lease`` of 64, ``settle`` acking them; a write
that finds no room checkpoints and truncates the WAL, then retries). F is found by
bisection in 4 KiB steps (tmpfs allocates pages): the least F with which the journal
empties. Counts, not time: the figures do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import tempfile
import uuid
from pathlib import Path

from memwal import JournalError, Priority
from memwal._journal.journal import Journal
from memwal._journal.rows import Settlement

PAGE = 4096


def fill(path: Path) -> None:
    with open(path, "ab", buffering=0) as f:
        for size in (1 << 20, 64 << 10, 4 << 10, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass


def trial(where: Path, rows: int, free: int) -> tuple[bool, int, int]:
    """Drain with ``free`` bytes freed; (emptied, WAL bytes before, main bytes before)."""
    for p in where.iterdir():
        p.unlink()
    j = Journal(where / "a.journal")
    j.open()
    try:
        for i in range(rows):
            j.append("bug", f"memory {i} " + uuid.uuid4().hex * 8, {}, Priority.MEDIUM, (), None)
        wal, main = os.path.getsize(f"{j.path}-wal"), os.path.getsize(j.path)
        ballast = where / "ballast"
        fill(ballast)
        try:  # the collect that finds the disk full (the journal notes it)
            j.append("bug", "no room", {}, Priority.MEDIUM, (), None)
        except JournalError:
            pass
        os.truncate(ballast, max(0, ballast.stat().st_size - free))
        failures = 0
        while j.counts().pending and failures < 3:
            try:
                leased, _ = j.lease(64)
                j.settle(Settlement(acked=[g.key for g in leased]))
                failures = 0
            except JournalError:
                failures += 1
        return j.counts().pending == 0, wal, main
    finally:
        j.close()


def least_free(where: Path, rows: int) -> tuple[int, int, int]:
    lo, hi = 0, 64
    ok, wal, main = trial(where, rows, hi * PAGE)
    while not ok:
        lo, hi = hi, hi * 2
        ok, wal, main = trial(where, rows, hi * PAGE)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if trial(where, rows, mid * PAGE)[0]:
            hi = mid
        else:
            lo = mid
    return hi * PAGE, wal, main


def main() -> None:
    logging.getLogger("memwal").setLevel(logging.ERROR)  # each trial logs its full disk
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[500, 1000, 2000, 4000, 8000])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        where = Path(d)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", d], check=True)
        try:
            print("| rows | WAL before | main file before | least free space to drain | free / WAL |")
            print("|---:|---:|---:|---:|---:|")
            for n in args.rows:
                free, wal, main_ = least_free(where, n)
                print(f"| {n} | {wal / 1024:.0f} KiB | {main_ / 1024:.0f} KiB | {free / 1024:.0f} KiB | {free / wal:.2f} |")
        finally:
            subprocess.run(["umount", "-l", d], check=False)


if __name__ == "__main__":
    main()
