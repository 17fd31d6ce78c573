"""Power loss as a tested promise: real children, SIGKILL, then a simulated power cut.

A shim (tests/powercut/shim.c, built here with gcc, loaded with LD_PRELOAD) logs the
pre-image of every write under the data directory; after the SIGKILL every write no
fsync covered is undone, as if the OS lost its whole page cache (tests/powercut/undo.py).

First the simulator is checked against plain sqlite3: ``synchronous=FULL`` loses no
committed row across cuts, ``OFF`` loses them (a simulator that finds no loss there
would prove nothing). Then the campaigns (tests/powercut/campaign.py): with
``durability: full`` no id ``collect`` returned is lost, the journal and the
SQLiteSink store both under the cut, with 1 and 8 collecting threads; with
``normal`` an id is lost only if ``collect`` returned it after the journal's last
sync; the journal and the store open and pass integrity_check after every cut.

MEMWAL_LONG=1 runs 60 cuts per campaign instead of 8, and torn-write campaigns (each
512-byte sector of an unsynced write kept or lost at random). MEMWAL_POWERCUT_SEED
fixes the seed; a failure names it.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from powercut import campaign, harness, undo

LONG = os.environ.get("MEMWAL_LONG") == "1"
CUTS = 60 if LONG else 8
HERE = Path(__file__).parent
pytestmark = pytest.mark.timeout(3600 if LONG else 240)


def _seed() -> int:
    return int(os.environ.get("MEMWAL_POWERCUT_SEED") or random.randrange(1 << 32))


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled shim, once it is shown to see a child's writes (else skip, saying why)."""
    build = tmp_path_factory.mktemp("powercut")
    try:
        so = undo.build(build)
    except undo.Unavailable as exc:
        pytest.skip(str(exc))
    data = build / "probe"
    data.mkdir()
    log = build / "probe.log"
    code = f"open({str(data / 'f')!r}, 'wb').write(b'x')"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=undo.env(so, data, log), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not undo.read_log(log):
        pytest.skip(f"LD_PRELOAD does not reach this Python's file writes (rc {proc.returncode}: {proc.stderr[-300:]})")
    return so


# -- the simulator itself ---------------------------------------------------------

WRITER = """
import os, sys, time
d = sys.argv[1]
fd = os.open(os.path.join(d, "f"), os.O_RDWR)
os.pwrite(fd, b"A" * 1024, 0)
os.fsync(fd)
os.pwrite(fd, b"B" * 1024, 512)
os.ftruncate(fd, 4096)
new = os.open(os.path.join(d, "new"), os.O_RDWR | os.O_CREAT, 0o644)
os.write(new, b"new file")
os.fsync(new)  # its data, but not its name: the directory is never synced
os.unlink(os.path.join(d, "old"))
print("started", flush=True)
time.sleep(60)
"""


def _write_and_cut(tmp_path: Path, shim: Path, torn: random.Random | None) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"0" * 2048)
    (data / "old").write_bytes(b"still here")
    harness.run_and_cut(["-c", WRITER, str(data)], data, tmp_path, shim, kill_after=0, torn=torn)
    return data


def test_cut_undoes_every_unsynced_change_and_keeps_synced_ones(tmp_path: Path, shim: Path) -> None:
    data = _write_and_cut(tmp_path, shim, None)
    assert (data / "f").read_bytes() == b"A" * 1024 + b"0" * 1024  # synced A kept; B and the resize undone
    assert not (data / "new").exists()  # created, its directory never synced
    assert (data / "old").read_bytes() == b"still here"  # the unlink undone


def test_torn_cut_keeps_each_sector_old_or_new(tmp_path: Path, shim: Path) -> None:
    seen: set[bytes] = set()
    for seed in range(6):
        (tmp_path / str(seed)).mkdir()
        data = _write_and_cut(tmp_path / str(seed), shim, random.Random(seed))
        f = (data / "f").read_bytes()
        assert f[:512] == b"A" * 512  # synced and not rewritten
        for s in range(512, 1536, 512):
            sector = f[s : s + 512]
            assert sector in (b"A" * 512 if s < 1024 else b"0" * 512, b"B" * 512), f"seed {seed}: sector {s} mixed"
            seen.add(bytes([sector[0]]) + s.to_bytes(2, "big"))
    # across the seeds, both outcomes occurred for the unsynced sectors
    assert {b"A" + (512).to_bytes(2, "big"), b"B" + (512).to_bytes(2, "big")} <= seen


def _sqlite_campaign(
    tmp_path: Path, shim: Path, sync: str, threads: int, cuts: int, seed: int, torn: bool = False
) -> tuple[int, int]:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "t.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, body TEXT)")
    conn.close()
    rng = random.Random(seed)
    acked = lost = 0
    for n in range(cuts):
        run = harness.run_and_cut(
            [str(HERE / "powercut" / "sqlite_child.py"), str(db), sync, str(threads), str(n)], data, tmp_path, shim,
            kill_after=rng.randrange(1, 300), torn=random.Random(rng.random()) if torn else None,
        )
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", f"seed {seed}"
        have = {r[0] for r in conn.execute("SELECT id FROM t")}
        conn.close()
        acked += len(run.ids)
        lost += sum(1 for i in run.ids if i not in have)
    return acked, lost


@pytest.mark.parametrize(("threads", "torn"), [(1, False), (4, False), *([(4, True)] if LONG else [])])
def test_simulator_sqlite_synchronous_full_loses_no_committed_row(
    tmp_path: Path, shim: Path, threads: int, torn: bool
) -> None:
    seed = _seed()
    acked, lost = _sqlite_campaign(tmp_path, shim, "FULL", threads, 4 if not LONG else 30, seed, torn)
    assert acked > 0
    assert lost == 0, f"seed {seed}: {lost} of {acked} committed rows lost with synchronous=FULL (torn: {torn})"


def test_simulator_sqlite_synchronous_off_loses_committed_rows(tmp_path: Path, shim: Path) -> None:
    seed = _seed()
    acked, lost = _sqlite_campaign(tmp_path, shim, "OFF", 2, 3, seed)
    # Nothing is ever fsynced, so the whole run (its WAL file included) is undone.
    assert lost == acked > 0, f"seed {seed}: the simulator lost {lost} of {acked} rows with synchronous=OFF"


# -- memwal ---------------------------------------------------------------------------


def _campaign(tmp_path: Path, shim: Path, durability: str, threads: int, *, torn: bool = False,
              sink: str = "store", cuts: int = CUTS) -> campaign.Tally:
    seed = _seed()
    tally = campaign.campaign(tmp_path, shim, durability, threads, cuts, random.Random(seed), torn=torn, sink=sink)
    print(tally.line(f"seed {seed}: durability {durability}, {threads} thread(s){', torn' if torn else ''}"))
    assert tally.acknowledged > 0, f"seed {seed}: no id was acknowledged, the campaign proved nothing"
    return tally


@pytest.mark.parametrize("threads", [1, 8])
def test_full_durability_loses_no_acknowledged_memory(tmp_path: Path, shim: Path, threads: int) -> None:
    tally = _campaign(tmp_path, shim, "full", threads)
    assert tally.violations == [], tally.line("full") + f"; first lost: {tally.violations[:5]}"


def test_normal_durability_loses_only_collects_after_the_last_journal_sync(tmp_path: Path, shim: Path) -> None:
    tally = _campaign(tmp_path, shim, "normal", 8)
    assert tally.undone_writes > 0, tally.line("normal")  # the cuts took back unsynced commits
    assert tally.violations == [], tally.line("normal") + f"; lost before the last sync: {tally.violations[:5]}"


def test_a_sink_that_does_not_sync_is_caught(tmp_path: Path, shim: Path) -> None:
    # The chain matters, and the campaign sees it broken: a store that commits without
    # fsync and ignores sync() loses acknowledged memories under `full`.
    tally = _campaign(tmp_path, shim, "full", 1, sink="nosync", cuts=4)
    assert tally.violations, tally.line("full with a sink that never syncs")


@pytest.mark.skipif(not LONG, reason="torn-write campaigns run with MEMWAL_LONG=1")
@pytest.mark.parametrize(("durability", "threads"), [("full", 1), ("full", 8), ("normal", 8)])
def test_torn_writes(tmp_path: Path, shim: Path, durability: str, threads: int) -> None:
    tally = _campaign(tmp_path, shim, durability, threads, torn=True)
    assert tally.kept_sectors > 0, tally.line(durability)  # some writes were torn
    assert tally.violations == [], tally.line(durability) + f"; first lost: {tally.violations[:5]}"


STORE_CHILD = """
import sys, anyio, memwal
from memwal import MemoryOperation

async def main(path, do_sync):
    async with memwal.SQLiteSink(path, durability="normal") as s:
        for i in range(20):
            op = MemoryOperation(id=f"op{i:03d}", category="bug", content="x" * 300, created_at=1.0)
            await s.deliver([op])
        if do_sync == "sync":
            await s.sync()
        print("started", flush=True)
        for i in range(20):
            print(f"op{i:03d}", flush=True)
        await anyio.sleep(60)

anyio.run(main, *sys.argv[1:])
"""


@pytest.mark.parametrize(("call_sync", "survive"), [("sync", 20), ("no-sync", 0)])
def test_sqlite_sink_sync_makes_normal_deliveries_survive_a_cut(
    tmp_path: Path, shim: Path, call_sync: str, survive: int
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    campaign.prepare(data)  # creates the store (and a journal) outside the shim
    store = data / "memories.db"
    run = harness.run_and_cut(["-c", STORE_CHILD, str(store), call_sync], data, tmp_path, shim, kill_after=20)
    conn = sqlite3.connect(store)
    kept = {r[0] for r in conn.execute("SELECT id FROM memories")}
    conn.close()
    assert len(run.ids) == 20
    assert len(kept & set(run.ids)) == survive
