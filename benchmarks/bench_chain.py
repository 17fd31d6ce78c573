"""What the durability chain costs: fsyncs per memory and drain time, normal against full.

Each contender is a child process that collects ``--ops`` memories from one thread
into ``SQLiteSink``, flushes and closes (so every memory is delivered and acked).
Counted (not timed, so other load on the machine does not move it): fsync and
fdatasync calls per memory under ``strace -f -c`` (all files: the total is what a
disk pays). Timed, interleaved in one run: seconds per 1,000 memories, collected and
delivered or (``drain only``) delivered from a journal filled beforehand, as a
ratio full / normal.

Run it against another checkout with PYTHONPATH=that/checkout to compare
(e.g. main before the chain).

Run: .venv/bin/python benchmarks/bench_chain.py [--ops 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:  # run as a script (benchmarks/ on sys.path) or as a module
    from _common import CONTENT, table, write_results
except ImportError:  # pragma: no cover
    from benchmarks._common import CONTENT, table, write_results


def child(durability: str, ops: int, workdir: str, drain: bool) -> None:
    """Collect ``ops`` memories, flush, close; print the seconds it took. ``drain``: the
    rows are in the journal before the collector starts (only delivery is timed)."""
    import memwal
    from memwal._core.records import Priority
    from memwal._journal.journal import Journal

    config = memwal.load_config({"journal": {"durability": durability}})
    journal = Path(workdir) / "j.journal"
    if drain:
        j = Journal(journal, memwal.load_config({}).journal)
        j.open()
        for i in range(ops):
            j.append("bug", f"{i} {CONTENT}", {}, Priority.MEDIUM, (), None)
        j.close()
    t0 = time.perf_counter()
    with memwal.MemoryCollector(journal, memwal.SQLiteSink(Path(workdir) / "m.db"), config=config) as c:
        if not drain:
            for i in range(ops):
                c.collect("bug", f"{i} {CONTENT}")
        c.flush(timeout=600)
    print(time.perf_counter() - t0)


def run(durability: str, ops: int, strace: bool, drain: bool) -> tuple[float, int]:
    """One child: (seconds, fsync + fdatasync calls; 0 when not traced)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", durability, "--ops", str(ops), "--dir", tmp,
               *(["--drain"] if drain else [])]
        out = Path(tmp) / "strace.txt"
        if strace:
            cmd = ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out), *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        seconds = float(proc.stdout.strip().splitlines()[-1])
        calls = 0
        if strace:
            for line in out.read_text().splitlines():
                m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)$", line)
                if m:
                    calls += int(m.group(1))
        return seconds, calls


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ops", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child")
    p.add_argument("--dir")
    p.add_argument("--drain", action="store_true")
    a = p.parse_args()
    if a.child:
        child(a.child, a.ops, a.dir, a.drain)
        return
    if shutil.which("strace") is None:
        sys.exit("strace is needed to count fsyncs")
    cases = [(m, d) for d in (False, True) for m in ("normal", "full")]
    syncs = {c: run(*c[:1], a.ops, True, c[1])[1] / a.ops for c in cases}
    secs: dict[tuple[str, bool], list[float]] = {c: [] for c in cases}
    for _ in range(a.rounds):  # interleaved, so all see the same load
        for c in cases:
            secs[c].append(run(c[0], a.ops, False, c[1])[0])
    med = {c: statistics.median(secs[c]) * 1000 / a.ops for c in cases}
    print(f"memwal at {os.environ.get('PYTHONPATH') or 'this checkout'}, {a.ops} memories, 1 thread, {a.rounds} rounds")
    print(table(["phase", "durability", "fsyncs/memory", "s per 1,000 (median)"],
                [["drain only" if c[1] else "collect+drain", c[0], f"{syncs[c]:.3f}", f"{med[c]:.3f}"]
                 for c in cases]))
    for d in (False, True):
        print(f"{'drain only' if d else 'collect+drain'}: full / normal time ratio"
              f" {med[('full', d)] / med[('normal', d)]:.2f}")
    write_results("bench_chain", {
        "memwal": os.environ.get("PYTHONPATH") or "this checkout", "ops": a.ops, "rounds": a.rounds,
        "fsyncs_per_memory": {f"{m}{' drain' if d else ''}": syncs[(m, d)] for m, d in cases},
        "seconds": {f"{m}{' drain' if d else ''}": secs[(m, d)] for m, d in cases},
    })


if __name__ == "__main__":
    main()
