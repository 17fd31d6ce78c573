"""Damage is contained (issue 16.4): one damaged row, written into a real journal file
the way a bit flip or a foreign writer leaves it, is quarantined to the dead letters
with its reason and never blocks the other rows or raises into the caller;
``verify --repair`` handles each case; a file SQLite calls malformed is reported in
one line and ``verify --salvage`` copies out every row that can still be read."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import fast_config, wait_for

from memwal import AsyncMemoryCollector, Priority
from memwal._journal.journal import Journal
from memwal._recovery.repair import salvage, verify
from memwal.testing import MemorySink

N = 200


def fill(path: Path, n: int = N) -> list[str]:
    j = Journal(path)
    j.open()
    ids = [j.append("bug", f"memory {i}", {"i": i}, Priority.MEDIUM, (), None)[0].id for i in range(n)]
    j.close()
    return ids


def damage(path: Path, sql: str, *, text_factory: type = str) -> None:
    """Run ``sql`` on the journal behind memwal's back (a foreign writer, a flipped bit)."""
    c = sqlite3.connect(path, isolation_level=None)
    c.text_factory = text_factory
    try:
        c.execute(sql)
    finally:
        c.close()


# Each damages the 11th row (by key order) only.
TENTH = "(SELECT k FROM ops ORDER BY k LIMIT 1 OFFSET 10)"
DAMAGE: dict[str, tuple[str, str]] = {
    "text payload": (f"UPDATE ops SET payload = CAST(payload AS TEXT) WHERE k = {TENTH}", "payload stored as TEXT"),
    "non-utf8 text payload": (
        f"UPDATE ops SET payload = CAST(X'7bff22' AS TEXT) WHERE k = {TENTH}", "payload stored as TEXT, not BLOB"),
    "non-utf8 id": (f"UPDATE ops SET id = CAST(X'30313930ff' AS TEXT) WHERE k = {TENTH}", "id column is not valid UTF-8"),
    "non-utf8 category": (
        f"UPDATE ops SET category = CAST(X'6275ff' AS TEXT) WHERE k = {TENTH}", None),
    "bad checksum": (f"UPDATE ops SET crc = crc + 1 WHERE k = {TENTH}", "checksum mismatch"),
    "truncated payload": (
        f"UPDATE ops SET payload = substr(payload, 1, 20), crc = -1 WHERE k = {TENTH}", "checksum mismatch"),
    "text checksum": (f"UPDATE ops SET crc = 'abc' WHERE k = {TENTH}", "checksum stored as TEXT"),
    "text attempts": (f"UPDATE ops SET attempts = 'x' WHERE k = {TENTH}", "attempts stored as TEXT"),
}
CASES = [pytest.param(sql, reason, id=name) for name, (sql, reason) in DAMAGE.items()]


@pytest.mark.anyio
@pytest.mark.parametrize(("sql", "reason"), CASES)
async def test_one_damaged_row_is_quarantined_and_the_rest_delivered(tmp_path: Path, sql: str,
                                                                      reason: str | None) -> None:
    path = tmp_path / "j.journal"
    ids = fill(path)
    damage(path, sql)
    sink = MemorySink()
    async with AsyncMemoryCollector(path, sink, config=fast_config()) as c:
        # Reads that merge the journal's undelivered rows do not raise either.
        await c.recent(limit=10)
        await c.get(ids[10])
        await wait_for(lambda: c.journal.counts().pending + c.journal.counts().leased == 0)
        counts = c.journal.counts()
    delivered = set(sink.memories)
    if reason is None:  # a damaged category alone does not stop delivery: the payload holds the truth
        assert len(delivered) == N and counts.dead == 0
        return
    assert len(delivered) == N - 1 and counts.dead == 1 and counts.pending == counts.leased == 0
    j = Journal(path)
    j.open()
    try:
        (dead_id, why), = j.read("SELECT id, reason FROM dead")
    finally:
        j.close()
    assert reason in why
    assert dead_id not in delivered


@pytest.mark.parametrize(("sql", "reason"), [p for p in CASES if p.values[1] is not None])
def test_verify_repair_quarantines_every_kind_of_damaged_row(tmp_path: Path, sql: str, reason: str) -> None:
    path = tmp_path / "j.journal"
    fill(path)
    damage(path, sql)
    j = Journal(path)
    j.open()
    try:
        found = verify(j)
        assert [p.detail for p in found.problems if reason in p.detail] and not found.ok
        fixed = verify(j, repair=True)
        assert fixed.ok and len(fixed.problems) == 1
        again = verify(j)
        # Counted as quarantined, unless the repair itself undid the damage (a TEXT
        # payload becomes the BLOB it was, a good dead letter that requeue can revive).
        assert again.ok and again.problems == [] and again.quarantined == (0 if reason == "payload stored as TEXT" else 1)
        assert j.counts().pending == N - 1 and j.counts().dead == 1
        # The dead letter reads back as text (ids and categories never fail a read again).
        (dead_id, category, ptype), = j.read("SELECT id, category, typeof(payload) FROM dead")
        assert isinstance(dead_id, str) and isinstance(category, str) and ptype == "blob"
    finally:
        j.close()


def replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "memwal.replay", *args], check=False, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize(("sql", "reason"), [p for p in CASES if p.values[1] is not None])
def test_replay_verify_repair_reports_without_a_traceback(tmp_path: Path, sql: str, reason: str) -> None:
    path = tmp_path / "j.journal"
    fill(path, 20)
    damage(path, sql)
    first = replay("verify", str(path))
    assert first.returncode == 1 and "Traceback" not in first.stderr and reason in first.stdout
    fixed = replay("verify", "--repair", str(path))
    assert fixed.returncode == 0 and "REPAIRED" in fixed.stdout and "Traceback" not in fixed.stderr
    status = replay("status", str(path))
    assert status.returncode == 0 and "Traceback" not in status.stderr


# -- files SQLite calls malformed -----------------------------------------------


def flip_bits(path: Path, seed: int, flips: int, *, start: int = 0) -> None:
    data = bytearray(path.read_bytes())
    rnd = random.Random(seed)
    for _ in range(flips):
        i = rnd.randrange(start, len(data))
        data[i] ^= 1 << rnd.randrange(8)
    path.write_bytes(bytes(data))


def malformed_copy(tmp_path: Path, n: int = 2000) -> tuple[Path, list[str]]:
    """A journal whose B-tree pages are damaged in the middle: SQLite calls it malformed."""
    path = tmp_path / "j.journal"
    ids = fill(path, n)
    size = path.stat().st_size
    data = bytearray(path.read_bytes())
    page = 4096
    victim = (size // page) // 2  # a leaf page in the middle of ops
    data[victim * page : victim * page + 64] = bytes(64)  # its header wiped
    path.write_bytes(bytes(data))
    return path, ids


def test_status_and_verify_report_a_malformed_file_in_one_line(tmp_path: Path) -> None:
    path, _ = malformed_copy(tmp_path)
    for cmd in ("status", "verify"):
        r = replay(cmd, str(path))
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        lines = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
        assert any("malformed" in ln and "--salvage" in ln for ln in lines), lines
        assert len(lines) <= 2, lines


def test_salvage_copies_every_readable_row_into_a_new_journal(tmp_path: Path) -> None:
    path, ids = malformed_copy(tmp_path)
    out = tmp_path / "saved.journal"
    report = salvage(path, out)
    really_lost = len(ids) - report.saved
    assert 0 < really_lost < 40, report  # one page of rows lost, the rest saved
    assert really_lost / 2 <= report.lost <= really_lost * 2, report  # the estimate is in range
    j = Journal(out)
    j.open()
    try:
        assert verify(j).ok
        assert j.counts().pending == report.saved
        saved = {r[0] for r in j.read("SELECT id FROM ops")}
    finally:
        j.close()
    assert saved <= set(ids)
    r = replay("verify", "--salvage", str(tmp_path / "again.journal"), str(path))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"saved {report.saved}" in r.stdout


@pytest.mark.parametrize("seed", range(6))
def test_random_bit_flips_never_raise_anything_but_a_journal_error(tmp_path: Path, seed: int) -> None:
    # Bit flips anywhere past the header: whatever SQLite makes of the file, opening,
    # verifying and repairing it end in a report or a JournalError, never a traceback,
    # and salvage saves what can be read.
    path = tmp_path / "j.journal"
    fill(path, 300)
    flip_bits(path, seed, flips=20, start=100)
    r = replay("verify", "--repair", str(path))
    assert "Traceback" not in r.stderr, r.stderr
    s = replay("verify", "--salvage", str(tmp_path / "s.journal"), str(path))
    assert "Traceback" not in s.stderr, s.stderr
    assert "saved" in s.stdout


def test_bit_flips_in_the_wal_are_contained(tmp_path: Path) -> None:
    # Rows still in the WAL (no checkpoint): flip bits in their frames. SQLite drops
    # frames whose checksum fails (and every one after), so what it reads is an older,
    # consistent journal; memwal opens and verifies it without a traceback.
    path = tmp_path / "j.journal"
    j = Journal(path)
    j.open()
    for i in range(300):
        j.append("bug", f"memory {i}", {}, Priority.MEDIUM, (), None)
    wal = Path(f"{path}-wal")
    copy = tmp_path / "c.journal"
    # Copy the file and its WAL as a crash would leave them (the journal still open).
    copy.write_bytes(path.read_bytes())
    Path(f"{copy}-wal").write_bytes(wal.read_bytes())
    j.close()
    flip_bits(Path(f"{copy}-wal"), 7, flips=10, start=32)
    r = replay("verify", "--repair", str(copy))
    assert "Traceback" not in r.stderr and r.returncode in (0, 1), r.stderr
    j2 = Journal(copy)
    j2.open()
    try:
        assert verify(j2, repair=True).ok
        assert j2.counts().pending <= 300
    finally:
        j2.close()


