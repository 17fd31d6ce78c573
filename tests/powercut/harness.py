"""Run a child under the power-cut shim, SIGKILL it after some promises, cut the power."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import undo

WAIT = 60.0  # guard against a hung child; never reached when things work


@dataclass
class CutRun:
    """One child's life: the ids it promised (with the monotonic ns each promise was made at)."""

    ids: list[str] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    report: undo.CutReport | None = None
    stderr: str = ""
    syncs: list[tuple[int, int, str]] = field(default_factory=list)  # (start ns, end ns, path)


def run_and_cut(
    args: list[str], data_dir: Path, work: Path, shim: Path, *, kill_after: int,
    torn: random.Random | None = None, extra_env: dict[str, str] | None = None,
) -> CutRun:
    """Start ``python args`` under the shim; after ``started`` and ``kill_after`` ids, SIGKILL
    it, then undo what a power cut would lose. Lines are ``id`` or ``id ns``."""
    log = work / "powercut.log"
    for old in (log, Path(f"{log}.syncs")):
        old.unlink(missing_ok=True)
    e = undo.env(shim, data_dir, log)
    e.update(extra_env or {})
    err = work / "child.err"
    run = CutRun()
    with err.open("wb") as errf:
        proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=errf, env=e, text=True)
    timer = threading.Timer(WAIT, lambda: proc.kill())
    timer.start()
    try:
        assert proc.stdout is not None
        started = False
        for line in proc.stdout:
            if not line.endswith("\n"):
                break  # cut mid-line by the kill: not a promise
            text = line.split()
            if not started:
                started = text == ["started"]
                if started and kill_after == 0:
                    os.kill(proc.pid, signal.SIGKILL)
                continue
            run.ids.append(text[0])
            run.times.append(int(text[1]) if len(text) > 1 else 0)
            if len(run.ids) >= kill_after:
                os.kill(proc.pid, signal.SIGKILL)
        proc.stdout.close()
        proc.wait()
    finally:
        timer.cancel()
    run.stderr = err.read_text(errors="replace")
    if proc.returncode != -signal.SIGKILL:
        raise AssertionError(f"child exited with {proc.returncode}, not by SIGKILL: {run.stderr[-3000:]}")
    run.syncs = syncs(Path(f"{log}.syncs"))
    run.report = undo.cut(log, data_dir, torn)
    return run


def syncs(log_syncs: Path) -> list[tuple[int, int, str]]:
    """The shim's sync lines: (start ns, end ns, path)."""
    if not log_syncs.exists():
        return []
    out = []
    for line in log_syncs.read_text().splitlines():
        a, b, path = line.split(" ", 2)
        out.append((int(a), int(b), path))
    return out
