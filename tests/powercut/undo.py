"""Build the power-cut shim and undo, after a SIGKILL, every write no fsync covered.

``build(dest)`` compiles ``shim.c`` with gcc (``Unavailable`` says why it cannot).
``env(shim, data_dir, log)`` is the environment a child runs under. After the child
is killed, ``cut(log, data_dir)`` replays the shim's log backwards: every write,
truncation, creation and unlink that no later fsync (of the file, or of its directory
for names) covered is undone, as an OS that loses its whole page cache would lose
them. ``cut(..., torn=rng)`` instead keeps each 512-byte sector of an uncovered write
at random, keeps or drops each uncovered size change, creation and unlink at random:
a disk that wrote some of its queue in any order. SQLite's ``-shm`` files are deleted
(they are a memory map SQLite rebuilds from the WAL).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("shim.c")
SECTOR = 512


class Unavailable(Exception):
    """The simulator cannot run here (no gcc, no LD_PRELOAD); the message says why."""


class ModelError(Exception):
    """The child did something the simulator cannot undo (recorded as an 'X' record)."""


def build(dest: Path) -> Path:
    """Compile the shim into ``dest``; Unavailable when gcc is missing or fails."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise Unavailable("gcc is not on PATH: the power-cut shim is C, compiled at test time")
    out = dest / "powercut.so"
    proc = subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(out), str(SOURCE), "-ldl", "-lpthread"],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise Unavailable(f"gcc could not build the power-cut shim: {proc.stderr.strip()[-500:]}")
    return out


def env(shim: Path, data_dir: Path, log: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child whose writes under ``data_dir`` may be cut."""
    e = dict(os.environ if base is None else base)
    e["LD_PRELOAD"] = str(shim)
    e["POWERCUT_DIR"] = str(data_dir.resolve())
    e["POWERCUT_LOG"] = str(log.resolve())
    return e


@dataclasses.dataclass
class Record:
    kind: str  # W write, T size change, C create, U unlink, S sync, A sync all, X unsupported
    dev: int
    ino: int
    path: str
    off: int = 0
    length: int = 0
    old_size: int = 0
    pre: bytes = b""
    extra: str = ""


def read_log(log: Path) -> list[Record]:
    """Parse the shim's log; a record cut short by the kill is dropped (its change never began)."""
    data = log.read_bytes() if log.exists() else b""
    out: list[Record] = []
    pos = 0
    try:
        while pos < len(data):
            kind = chr(data[pos])
            dev, ino, n = struct.unpack_from("<QQI", data, pos + 1)
            pos += 21
            path = data[pos : pos + n].decode()
            if len(path.encode()) != n:
                break
            pos += n
            rec = Record(kind, dev, ino, path)
            if kind in "WT":
                rec.off, rec.length, rec.old_size, have = struct.unpack_from("<qQqQ", data, pos)
                pos += 32
                rec.pre = data[pos : pos + have]
                if len(rec.pre) != have:
                    break
                pos += have
            elif kind in "UX":
                (m,) = struct.unpack_from("<I", data, pos)
                rec.extra = data[pos + 4 : pos + 4 + m].decode()
                if len(rec.extra.encode()) != m:
                    break
                pos += 4 + m
            elif kind not in "CSA":
                raise ModelError(f"unknown record {kind!r} at byte {pos} of {log}")
            out.append(rec)
    except struct.error:
        pass  # the tail was cut by the kill
    return out


@dataclasses.dataclass
class CutReport:
    """What a cut undid: writes and names left uncovered, and how many were kept (torn)."""

    undone_writes: int = 0
    kept_sectors: int = 0
    undone_names: int = 0


def pending(records: list[Record]) -> list[Record]:
    """The records no later sync covered, in log order."""
    errors = [r for r in records if r.kind == "X"]
    if errors:
        raise ModelError("; ".join(f"{r.extra} ({r.path})" for r in errors))
    out: list[Record] = []
    for r in records:
        if r.kind == "S":
            out = [p for p in out if (p.dev, p.ino) != (r.dev, r.ino)]
        elif r.kind == "A":
            out = []
        else:
            out.append(r)
    return out


def cut(log: Path, data_dir: Path, torn: random.Random | None = None) -> CutReport:
    """Undo (or, with ``torn``, partly keep) every uncovered change, newest first."""
    report = CutReport()
    for r in reversed(pending(read_log(log))):
        if r.kind in "WT":
            _undo_write(r, torn, report)
        elif r.kind == "C":
            if torn is None or torn.random() < 0.5:
                Path(r.path).unlink(missing_ok=True)
                report.undone_names += 1
        elif r.kind == "U" and not Path(r.path).exists() and (torn is None or torn.random() < 0.5):
            os.link(r.extra, r.path)
            report.undone_names += 1
    for shm in data_dir.glob("*-shm"):
        shm.unlink()
    for bak in log.parent.glob(log.name + ".bak.*"):
        bak.unlink()
    log.unlink(missing_ok=True)
    return report


def _undo_write(r: Record, torn: random.Random | None, report: CutReport) -> None:
    path = Path(r.path)
    if not path.exists():
        return  # its creation was undone (or it was unlinked for good)
    report.undone_writes += 1
    with path.open("r+b") as f:
        if torn is None or r.kind == "T":  # a size change is all or nothing
            if torn is not None and torn.random() < 0.5:
                return
            f.seek(r.off)
            f.write(r.pre)  # a shrink's cut-off bytes; nothing for a write past the old end
            if r.off + r.length > r.old_size or r.kind == "T":
                f.truncate(r.old_size)
            return
        end = r.off + r.length
        keep_size = torn.random() < 0.5
        start = r.off
        while start < end:
            stop = min(end, (start // SECTOR + 1) * SECTOR)
            if torn.random() < 0.5:
                report.kept_sectors += 1
            else:
                lo, hi = start - r.off, stop - r.off
                old = r.pre[lo:hi]
                old += b"\0" * (hi - lo - len(old))  # past the old end: what a grown file reads
                f.seek(start)
                f.write(old)
            start = stop
        if not keep_size and end > r.old_size:
            f.truncate(r.old_size)
