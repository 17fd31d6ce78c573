"""validate() instruction counts: run under callgrind with N=0 and N=20000 and divide the difference by N.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python benchmarks/validate_icount.py plain 20000
"""
import sys
from memwal._records import validate
cases = {
 "plain": ("bug", "NPE in parser at line 42 while reading config", {"file": "a.py", "line": 42, "ok": True}, None, (), None, 1<<20),
 "custom": ("deploy-notes", "NPE in parser at line 42 while reading config", None, None, ("a","b"), "proj", 1<<20),
 "nested": ("bug", "x"*200, {"a": {"b": [1, 2, {"c": "d"}]}, "e": "f"}, "high", (), None, 1<<20),
 "unicode": ("bug", "Fehler beim Öffnen der Datei – ünïcödé "*3, {"f": "ä"}, None, (), None, 1<<20),
}
a = cases[sys.argv[1]]
n = int(sys.argv[2])
for _ in range(n): validate(*a)
