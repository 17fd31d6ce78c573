"""Power-cut campaigns on memwal: collect, SIGKILL, cut the power, count what was lost.

``campaign`` runs ``cuts`` children (memwal_child.py) one after another on the same
journal and store, each killed after a random number of promised ids, and checks
after every cut that the journal and the store open (and pass integrity_check) and
where each promised id is. An id is *lost* when it is in neither the journal (any
table) nor the store. With ``durability: normal`` an id may be lost when its collect
returned after the journal's last sync (``late``); losing one that returned before is
a *violation*, as is any loss with ``full``.

Run by hand for figures (also against another checkout with PYTHONPATH=...):
    python -m powercut.campaign --durability full --threads 8 --cuts 20   (from tests/)
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sqlite3
import tempfile
from pathlib import Path

import anyio

from . import harness, undo

CHILD = Path(__file__).with_name("memwal_child.py")


@dataclasses.dataclass
class Tally:
    """Figures of one campaign."""

    cuts: int = 0
    acknowledged: int = 0
    lost: int = 0  # in neither the journal nor the store
    late: int = 0  # of the lost: returned after the journal's last sync (normal may lose these)
    store_side: int = 0  # of the lost: the journal row is gone (its delete survived the cut)
    violations: list[str] = dataclasses.field(default_factory=list)
    undone_writes: int = 0  # what the cuts took back: writes undone, sectors kept (torn)
    kept_sectors: int = 0

    def line(self, name: str) -> str:
        return (f"{name}: {self.cuts} cuts, {self.acknowledged} ids acknowledged, {self.lost} lost"
                f" ({self.late} after the journal's last sync), {len(self.violations)} violations;"
                f" the cuts undid {self.undone_writes} writes, kept {self.kept_sectors} torn sectors")


def prepare(data: Path) -> tuple[Path, Path]:
    """Create the journal and the store outside the shim (their names are durable)."""
    from memwal import SQLiteSink
    from memwal._journal.journal import Journal

    journal, store = data / "memwal.journal", data / "memories.db"
    j = Journal(journal)
    j.open()
    j.close()

    async def make_store() -> None:
        async with SQLiteSink(store):
            pass

    anyio.run(make_store)
    return journal, store


def _ids(path: Path, tables: tuple[str, ...]) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise AssertionError(f"{path} fails integrity_check after a cut: {check}")
        return {r[0] for t in tables for r in conn.execute(f"SELECT id FROM {t}")}
    finally:
        conn.close()


def check_cut(run: harness.CutRun, journal: Path, store: Path, durability: str, tally: Tally) -> None:
    """Count where each promised id of ``run`` is after the cut (the journal must open)."""
    from memwal._journal.journal import Journal

    j = Journal(journal)
    j.open()  # after any cut the journal opens (recovery included)
    j.close()
    in_journal = _ids(journal, ("ops", "dead", "held", "done"))
    in_store = _ids(store, ("memories",))
    wal = str(journal.resolve()) + "-wal"
    last_sync = max((s for s, _, p in run.syncs if p in (wal, "*")), default=-1)
    tally.cuts += 1
    tally.acknowledged += len(run.ids)
    if run.report is not None:
        tally.undone_writes += run.report.undone_writes
        tally.kept_sectors += run.report.kept_sectors
    for op_id, t in zip(run.ids, run.times, strict=True):
        if op_id in in_journal or op_id in in_store:
            continue
        tally.lost += 1
        late = t >= last_sync
        tally.late += late
        tally.store_side += not late
        if durability == "full" or not late:
            tally.violations.append(op_id)


def campaign(
    work: Path, shim: Path, durability: str, threads: int, cuts: int, rng: random.Random, *,
    torn: bool = False, extra_env: dict[str, str] | None = None, sink: str = "store",
) -> Tally:
    """``cuts`` children, each SIGKILLed after a random number of ids, then a power cut."""
    data = work / "data"
    data.mkdir()
    journal, store = prepare(data)
    tally = Tally()
    for n in range(cuts):
        kill_after = rng.choice((0, rng.randrange(1, 40), rng.randrange(40, 300), rng.randrange(40, 300)))
        run = harness.run_and_cut(
            [str(CHILD), str(journal), str(store), durability, str(threads), f"r{n}", sink], data, work, shim,
            kill_after=kill_after, torn=random.Random(rng.random()) if torn else None, extra_env=extra_env,
        )
        check_cut(run, journal, store, durability, tally)
    return tally


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--durability", choices=("normal", "full"), required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cuts", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torn", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shim = undo.build(Path(tmp))
        t = campaign(Path(tmp), shim, a.durability, a.threads, a.cuts, random.Random(a.seed), torn=a.torn)
    print(t.line(f"durability {a.durability}, {a.threads} thread(s){', torn writes' if a.torn else ''}"),
          f"store-side {t.store_side}")


if __name__ == "__main__":
    main()
