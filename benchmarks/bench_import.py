"""How long `import memwal` takes against its core dependencies, in fresh processes.

Each round starts three fresh interpreters with ``-X importtime``: one importing memwal, one
importing its core dependencies (anyio, msgspec, sqlite3, cachetools) and one importing
memwal's optional HTTP stack (aiohttp) for reference. The figure of a process is the sum of the
cumulative times of its top-level imports (what the interpreter itself spends at start-up is
left out). memwal's modules are compiled to bytecode first, as a pip install compiles them.
Rounds interleave the contenders; the report is the median of each and the median of
the per-round ratios.

    .venv/bin/python benchmarks/bench_import.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CONTENDERS = {
    "memwal": "import memwal",
    "core deps": "import anyio, msgspec, sqlite3, cachetools",
    "aiohttp": "import aiohttp",
}
# Imported before the clock starts in every contender: the interpreter's own start-up.
BASELINE = {"encodings", "site", "zipimport", "codecs", "io", "abc", "_frozen_importlib_external"}


def import_us(stmt: str) -> int:
    """Microseconds of top-level imports made by ``stmt`` in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", stmt], capture_output=True, text=True,
                         check=True).stderr
    total = 0
    for line in out.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, raw = line[len("import time:"):].split("|")
        name = raw.strip()
        if raw[1:] == raw[1:].lstrip() and name not in BASELINE:  # top level: one space, no indent
            total += int(cumulative)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    # A pip install compiles every module to bytecode, as the dependencies' are here; an
    # editable checkout (and PYTHONDONTWRITEBYTECODE) would compile memwal's on each import.
    pkg = subprocess.run([sys.executable, "-c", "import memwal, os; print(os.path.dirname(memwal.__file__))"],
                         capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "compileall", "-q", pkg], check=True)
    times: dict[str, list[int]] = {k: [] for k in CONTENDERS}
    ratios = []
    for _ in range(args.rounds):
        for name, stmt in CONTENDERS.items():
            times[name].append(import_us(stmt))
        ratios.append(times["memwal"][-1] / times["core deps"][-1])
    for name, values in times.items():
        print(f"{name:10s} median {statistics.median(values) / 1000:7.1f} ms"
              f"  (min {min(values) / 1000:.1f}, max {max(values) / 1000:.1f})")
    print(f"import memwal / core deps: median of per-round ratios {statistics.median(ratios):.2f}x"
          f" over {args.rounds} rounds (target <= 1.5x)")
    print("aiohttp imported by `import memwal`:",
          "aiohttp" in subprocess.run([sys.executable, "-c", "import sys, memwal; print(sorted(sys.modules))"],
                                      capture_output=True, text=True, check=True).stdout)


if __name__ == "__main__":
    main()
