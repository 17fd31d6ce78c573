"""validate() instruction counts: run under callgrind with N=0 and N=20000, divide the difference by N.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python benchmarks/validate_icount.py plain 20000
"""

from __future__ import annotations

import sys

from memwal._core.records import validate

CONTENT = "NPE in parser at line 42 while reading config"
CASES = {
    "plain": ("bug", CONTENT, {"file": "a.py", "line": 42, "ok": True}, None, (), None, 1 << 20),
    "custom": ("deploy-notes", CONTENT, None, None, ("a", "b"), "proj", 1 << 20),
    "nested": ("bug", "x" * 200, {"a": {"b": [1, 2, {"c": "d"}]}, "e": "f"}, "high", (), None, 1 << 20),
    "unicode": ("bug", "Fehler beim \u00d6ffnen der Datei \u2013 \u00fcn\u00efc\u00f6d\u00e9 " * 3,
                {"f": "\u00e4"}, None, (), None, 1 << 20),
}

if __name__ == "__main__":
    args = CASES[sys.argv[1]]
    for _ in range(int(sys.argv[2])):
        validate(*args)
