"""Shared helpers for the benchmarks: content, percentiles, machine facts, result files."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import sys
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

# ~200 bytes of realistic agent text (the same string for every contender).
CONTENT = (
    "Parser fails on empty input: tokenize() returns None when the buffer is empty and the "
    "caller dereferences it. Seen in 3 of 40 runs of the ingestion agent; fix by returning []. "
    "Stack: ingest.py:212 -> lexer.py:88"
)
assert 190 <= len(CONTENT.encode()) <= 230, len(CONTENT.encode())


def percentiles(samples_ns: array[int] | Sequence[int], qs: Sequence[float] = (0.5, 0.99, 0.999)) -> list[float]:
    """Nearest-rank percentiles of nanosecond samples, returned in microseconds."""
    data = sorted(samples_ns)
    n = len(data)
    return [data[min(n - 1, max(0, int(q * n + 0.5) - 1))] / 1000 for q in qs]


def median_of(rows: Sequence[Sequence[float]]) -> list[float]:
    """Column-wise median of per-round rows (e.g. [[p50, p99, p999], ...])."""
    return [statistics.median(col) for col in zip(*rows, strict=True)]


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare figures: CPU, cores, Python, SQLite."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }


def wal_connection(path: Path) -> sqlite3.Connection:
    """An autocommit connection in WAL mode with synchronous=NORMAL (the floor's settings)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` (plus the machine) to benchmarks/results/<name>-<time>.json."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    payload = {"benchmark": name, "command": " ".join([Path(sys.executable).name, *sys.argv]),
               "machine": machine(), **data}
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A small fixed-width text table."""
    cells = [[str(h) for h in headers]] + [[f"{c:.1f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
