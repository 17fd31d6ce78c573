"""memwal-replay: the installed console script on real journal files, and its library."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import memwal
from memwal._core.config import JournalConfig
from memwal._core.records import IdGenerator, Priority
from memwal._journal.journal import Journal, Settlement
from memwal._recovery import inspect as rec
from memwal._recovery import redrive
from memwal.replay import main
from memwal.testing import FlakySink, ManualClock, MemorySink

SCRIPT = Path(sys.executable).with_name("memwal-replay")
CHILD = Path(__file__).with_name("replay_collector_child.py")
N = 50  # operations the child collector collects


def cli(*args: Any, module: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed console script (or ``python -m memwal.replay``)."""
    cmd = [sys.executable, "-m", "memwal.replay"] if module else [str(SCRIPT)]
    return subprocess.run(
        [*cmd, *map(str, args)], check=False, capture_output=True, text=True, timeout=timeout
    )


def status(journal: Path) -> dict[str, Any]:
    """The journal's status, read in this process (the CLI's --json is tested once)."""
    j = rec.open_journal(journal)
    try:
        return msgspec.to_builtins(rec.status(j))  # type: ignore[no-any-return]
    finally:
        j.close()


def listed(journal: Path, *states: str) -> list[dict[str, Any]]:
    j = rec.open_journal(journal)
    try:
        return msgspec.to_builtins(rec.list_ops(j, states=states or rec.UNDELIVERED, limit=10_000))  # type: ignore[no-any-return]
    finally:
        j.close()


def stored_ids(store: Path) -> set[str]:
    async def read() -> set[str]:
        async with memwal.SQLiteSink(store) as s:
            rows = await s.recent(limit=10_000)
            assert await s.count() == len(rows)
            return {m.id for m in rows}

    return anyio.run(read) if store.exists() else set()


def make_journal(
    path: Path, n: int, *, category: str = "bug", retention: float = 0.0
) -> tuple[Journal, list[str]]:
    j = Journal(path, JournalConfig(retention_seconds=retention))
    j.open()
    ids = [
        j.append(category, f"memory {i} " + "x" * 20, {"i": i}, Priority.MEDIUM, (), None)[0].id
        for i in range(n)
    ]
    return j, ids


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()


def start_child(journal: Path) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(journal), str(N)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        kill(proc)
        pytest.fail(f"collector child exited with {proc.returncode} before it was ready")
    return proc, json.loads(line)


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A journal left by a SIGKILLed collector whose consumer held leases."""
    journal = tmp_path_factory.mktemp("crashed") / "agent.journal"
    proc, ids = start_child(journal)
    kill(proc)
    return journal, ids


@pytest.fixture
def crashed_copy(crashed: tuple[Path, list[str]], tmp_path: Path) -> tuple[Path, list[str]]:
    src, ids = crashed
    for suffix in ("", "-wal"):
        if Path(f"{src}{suffix}").exists():
            shutil.copy(f"{src}{suffix}", tmp_path / f"agent.journal{suffix}")
    return tmp_path / "agent.journal", ids


def test_the_console_script_is_installed() -> None:
    assert SCRIPT.exists(), f"{SCRIPT} is missing: pip install -e /work/main"


# -- crash recovery ----------------------------------------------------------------


def test_crashed_collector_journal_is_replayed_once_and_then_empty(
    crashed_copy: tuple[Path, list[str]], store_path: Path
) -> None:
    journal, ids = crashed_copy
    r = cli("status", journal, "--json")
    assert r.returncode == 0, r.stderr
    before = json.loads(r.stdout)
    assert all(type(before[k]) is int for k in ("pending", "leased", "dead"))
    assert before["pending"] + before["leased"] == N
    assert before["leased"] >= 1 and before["recoverable"] == before["leased"]  # the owner pid is gone
    assert before["live_leases"] == 0 and before["consumer_running"] is False

    r = cli("replay", journal, "--sink", f"sqlite:{store_path}")
    assert r.returncode == 0, r.stderr
    assert f"delivered {N}," in r.stdout
    assert "progress" in r.stderr  # plain progress lines when stderr is not a terminal
    assert stored_ids(store_path) == set(ids)
    after = status(journal)
    assert (after["pending"], after["leased"], after["dead"]) == (0, 0, 0)

    again = cli("replay", journal, "--sink", f"sqlite:{store_path}")
    assert again.returncode == 0, again.stderr
    assert "delivered 0," in again.stdout
    assert stored_ids(store_path) == set(ids)


def test_replay_delivers_each_operation_exactly_once(crashed_copy: tuple[Path, list[str]]) -> None:
    journal, ids = crashed_copy
    sink = MemorySink()
    j = rec.open_journal(journal)
    try:
        first = anyio.run(lambda: redrive.replay(j, sink, batch_size=7))
        second = anyio.run(lambda: redrive.replay(j, sink, batch_size=7))
    finally:
        j.close()
    assert first.ok and first.delivered == N
    assert second.delivered == 0 and second.selected == 0
    assert dict(sink.deliveries) == dict.fromkeys(ids, 1)


def test_replay_never_touches_rows_a_live_collector_holds(tmp_path: Path, store_path: Path) -> None:
    journal = tmp_path / "agent.journal"
    proc, ids = start_child(journal)
    try:
        live = status(journal)
        assert live["consumer_running"] is True and live["live_leases"] == live["leased"] >= 1
        r = cli("replay", journal, "--sink", f"sqlite:{store_path}")
        assert r.returncode == 0, r.stderr
        held = {row["id"] for row in listed(journal, "leased")}
        assert len(held) == live["leased"]
        assert f"{len(held)} leased by a running collector" in r.stdout
        assert stored_ids(store_path) == set(ids) - held
    finally:
        kill(proc)
    # Its process is gone now: the next replay takes its leases over at once.
    r = cli("replay", journal, "--sink", f"sqlite:{store_path}")
    assert r.returncode == 0, r.stderr
    assert stored_ids(store_path) == set(ids)
    assert status(journal)["leased"] == 0


# -- dead letters, failures, pacing ------------------------------------------------


def kill_some(j: Journal, reasons: list[str]) -> list[str]:
    leased, _ = j.lease(len(reasons))
    j.settle(Settlement(dead=[(g.key, why) for g, why in zip(leased, reasons, strict=True)]))
    return [g.op.id for g in leased]


def test_dead_letters_are_requeued_by_reason_then_delivered(journal_path: Path, store_path: Path) -> None:
    j, ids = make_journal(journal_path, 5)
    dead = kill_some(j, ["rejected: 422 too long", "rejected: 422 too long", "gave up after 9 attempts: 503"])
    j.close()
    s = status(journal_path)
    assert (s["pending"], s["dead"]) == (2, 3)
    assert s["dead_by_reason"] == {"rejected: 422 too long": 2, "gave up after 9 attempts: 503": 1}

    r = cli("requeue", journal_path, "--reason", "rejected")
    assert r.returncode == 0 and "requeued 2" in r.stdout
    s = status(journal_path)
    assert (s["pending"], s["dead"]) == (4, 1)
    requeued = [row for row in listed(journal_path, "pending") if row["id"] in dead]
    assert len(requeued) == 2 and all(row["attempts"] == 0 for row in requeued)

    r = cli("replay", journal_path, "--sink", f"sqlite:{store_path}", "--include-dead")
    assert r.returncode == 0, r.stderr
    assert "requeued from dead 1" in r.stdout
    assert stored_ids(store_path) == set(ids)
    assert status(journal_path)["dead"] == 0


def test_requeue_of_an_id_that_is_not_dead_is_reported(journal_path: Path) -> None:
    j, ids = make_journal(journal_path, 2)
    j.close()
    r = cli("requeue", journal_path, "--id", ids[0])
    assert r.returncode == 1
    assert f"not a dead letter in {journal_path}: {ids[0]}" in r.stderr


def refusing_store(path: Path) -> Path:
    """A memory store that opens but refuses every insert (a trigger aborts it)."""
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE memories (id TEXT PRIMARY KEY, category TEXT, content TEXT, metadata TEXT,"
        " priority TEXT, tags TEXT, project TEXT, created_at REAL, stored_at REAL)"
    )
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON memories BEGIN SELECT RAISE(ABORT, 'store refuses'); END"
    )
    conn.commit()
    conn.close()
    return path


def test_replay_exits_1_and_keeps_operations_the_sink_failed(journal_path: Path, store_path: Path) -> None:
    j, ids = make_journal(journal_path, 3)
    j.close()
    r = cli("replay", journal_path, "--sink", f"sqlite:{refusing_store(store_path)}")
    assert r.returncode == 1
    assert all(f"not delivered: {i}" in r.stderr for i in ids)
    assert "Traceback" not in r.stderr
    rows = listed(journal_path)
    assert {row["id"] for row in rows} == set(ids)
    assert all(
        row["attempts"] >= 1 and "store refuses" in (row["last_error"] or row["reason"]) for row in rows
    )


def test_replay_dead_letters_what_the_sink_rejects(journal_path: Path) -> None:
    j, ids = make_journal(journal_path, 4)
    sink = FlakySink(fail_ids={ids[1]}, permanent=True)
    report = anyio.run(lambda: redrive.replay(j, sink))
    assert not report.ok and report.failed == [ids[1]] and report.dead == 1 and report.delivered == 3
    assert set(sink.memories) == set(ids) - {ids[1]}
    assert (j.dead_reason(ids[1]) or "").startswith("rejected:")
    j.close()


def test_replay_rate_limit_paces_deliveries(journal_path: Path) -> None:
    j, ids = make_journal(journal_path, 25)
    clock = ManualClock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    sink = MemorySink()
    report = anyio.run(lambda: redrive.replay(j, sink, rate=10, batch_size=5, sleep=sleep, clock=clock))
    j.close()
    assert report.delivered == 25 and set(sink.memories) == set(ids)
    # 10 go at once (a second's burst), the other 15 at 10 per second.
    assert sum(slept) == pytest.approx(1.5)


def test_dry_run_counts_the_selection_and_writes_nothing(journal_path: Path, store_path: Path) -> None:
    j, _ = make_journal(journal_path, 4, category="bug")
    j.append("decision", "other", {}, Priority.LOW, (), None)
    kill_some(j, ["rejected: nope"])
    j.close()
    before = status(journal_path)
    r = cli(
        "replay",
        journal_path,
        "--sink",
        f"sqlite:{store_path}",
        "--include-dead",
        "--category",
        "bug",
        "--dry-run",
    )
    assert r.returncode == 0, r.stderr
    assert "would deliver 4 operations" in r.stdout and "(bug 4)" in r.stdout
    assert not store_path.exists()
    after = status(journal_path)
    assert {k: after[k] for k in ("pending", "leased", "dead")} == {
        k: before[k] for k in ("pending", "leased", "dead")
    }


# -- export, import ----------------------------------------------------------------


def test_export_then_import_into_a_fresh_journal_keeps_ids(journal_path: Path, tmp_path: Path) -> None:
    j, ids = make_journal(journal_path, 6)
    dead = kill_some(j, ["rejected: x"])
    j.close()
    dump = tmp_path / "ops.jsonl"
    r = cli("export", journal_path, "--output", dump)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert {o["id"] for o in lines} == set(ids)
    assert {o["id"]: o["state"] for o in lines}[dead[0]] == "dead"
    assert all(o["content"].startswith("memory ") and o["metadata"].keys() == {"i"} for o in lines)

    fresh = tmp_path / "fresh.journal"
    r = cli("import", fresh, dump)
    assert r.returncode == 2 and "no such journal file" in r.stderr and not fresh.exists()
    r = cli("import", fresh, dump, "--create")
    assert r.returncode == 0, r.stderr
    assert "imported 6 operations, skipped 0" in r.stdout
    rows = listed(fresh)
    assert {row["id"]: row["op"]["content"] for row in rows} == {o["id"]: o["content"] for o in lines}
    assert all(row["state"] == "pending" for row in rows)

    r = cli("import", fresh, dump)
    assert r.returncode == 0 and "imported 0 operations, skipped 6" in r.stdout
    assert status(fresh)["pending"] == 6


def test_import_reports_bad_lines_by_number_and_writes_nothing_for_them(
    journal_path: Path, tmp_path: Path
) -> None:
    j, _ = make_journal(journal_path, 1)
    new_id = IdGenerator().next
    good = json.dumps({"id": new_id()[0], "category": "bug", "content": "ok"})
    dump = tmp_path / "mixed.jsonl"
    dump.write_text(
        "\n".join(
            [
                "not json",
                json.dumps({"id": "not-an-id", "category": "bug", "content": "x"}),
                good,
                json.dumps({"id": new_id()[0], "category": "Bad Category!", "content": "x"}),
                json.dumps(
                    {
                        "id": new_id()[0],
                        "category": "bug",
                        "content": "x",
                        "metadata": ["not", "a", "mapping"],
                    }
                ),
            ]
        )
        + "\n"
    )
    j.close()
    r = cli("import", journal_path, dump)
    assert r.returncode == 1
    assert "imported 1 operations" in r.stdout and "4 bad lines" in r.stdout
    for line, word in ((1, "JSON"), (2, "id:"), (4, "category:"), (5, "metadata")):
        assert (
            f"{dump}:{line}: " in r.stderr and word in r.stderr.split(f"{dump}:{line}: ")[1].splitlines()[0]
        )
    assert status(journal_path)["pending"] == 2


# -- verify, compact ---------------------------------------------------------------


def damage(journal: Path, op_id: str, *, fix_crc: bool) -> None:
    conn = sqlite3.connect(journal)
    (payload,) = conn.execute("SELECT payload FROM ops WHERE id = ?", (op_id,)).fetchone()
    bad = bytearray(payload)
    bad[2] ^= 0x01 if not fix_crc else 0xFF  # a flipped bit / invalid JSON
    sql = "UPDATE ops SET payload = ?" + (", crc = ?" if fix_crc else "") + " WHERE id = ?"
    conn.execute(sql, (bytes(bad), zlib.crc32(bad), op_id) if fix_crc else (bytes(bad), op_id))
    conn.commit()
    conn.close()


@pytest.mark.parametrize(("fix_crc", "word"), [(False, "checksum mismatch"), (True, "undecodable payload")])
def test_verify_finds_a_damaged_payload_and_repair_quarantines_it(
    journal_path: Path, store_path: Path, fix_crc: bool, word: str
) -> None:
    j, ids = make_journal(journal_path, 4)
    j.close()
    damage(journal_path, ids[2], fix_crc=fix_crc)

    r = cli("verify", journal_path)
    assert r.returncode == 1
    assert ids[2] in r.stdout and word in r.stdout
    assert status(journal_path)["pending"] == 4  # verify alone writes nothing

    r = cli("verify", journal_path, "--repair")
    assert r.returncode == 0, r.stdout + r.stderr
    s = status(journal_path)
    assert (s["pending"], s["dead"]) == (3, 1)
    assert any(word in reason for reason in s["dead_by_reason"])
    r = cli("verify", journal_path)
    assert r.returncode == 0 and "1 damaged rows already quarantined" in r.stdout

    r = cli("replay", journal_path, "--sink", f"sqlite:{store_path}")
    assert r.returncode == 0 and stored_ids(store_path) == set(ids) - {ids[2]}


def file_bytes(journal: Path) -> int:
    return sum(Path(f"{journal}{s}").stat().st_size for s in ("", "-wal") if Path(f"{journal}{s}").exists())


def test_compact_purges_delivered_rows_past_retention_and_shrinks_the_files(journal_path: Path) -> None:
    j, _ = make_journal(journal_path, 1500, retention=3600)
    leased, _ = j.lease(1500)
    j.settle(Settlement(acked=[g.key for g in leased]))
    _, keep = make_journal(journal_path, 3)  # still undelivered: compact must keep them
    j.close()
    assert status(journal_path)["delivered"] == 1500

    r = cli("compact", journal_path, "--retention", "3600")
    assert r.returncode == 0 and "purged 0 delivered" in r.stdout
    assert status(journal_path)["delivered"] == 1500

    before = file_bytes(journal_path)
    r = cli("compact", journal_path)
    assert r.returncode == 0, r.stderr
    assert "purged 1500 delivered" in r.stdout
    after = file_bytes(journal_path)
    assert after < before / 4
    assert f"reclaimed {before - after} bytes" in r.stdout
    s = status(journal_path)
    assert (s["delivered"], s["pending"]) == (0, 3)
    assert {row["id"] for row in listed(journal_path)} == set(keep)


# -- status, list, show ------------------------------------------------------------


def test_status_prometheus_renders_the_journal_gauges(
    journal_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    j, _ = make_journal(journal_path, 3)
    kill_some(j, ['rejected: "quoted"'])
    j.close()
    assert main(["status", str(journal_path), "--prometheus"]) == 0
    text = capsys.readouterr().out
    assert 'memwal_journal_operations{state="pending"} 2\n' in text
    assert 'memwal_journal_dead_operations{reason="rejected: \\"quoted\\""} 1\n' in text
    assert 'memwal_journal_file_bytes{file="journal"} ' in text
    # the same family a live collector's metrics_text exports (defined once)
    assert "# TYPE memwal_oldest_pending_age_seconds gauge" in text
    assert 'memwal_journal_undelivered{priority="medium"} 2\n' in text
    assert 'memwal_journal_priority_operations{priority="medium",state="dead"} 1\n' in text


def test_show_prints_the_operation_and_unknown_ids_exit_2(
    journal_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    j, ids = make_journal(journal_path, 2)
    kill_some(j, ["rejected: too long"])
    j.close()
    assert main(["show", str(journal_path), ids[0]]) == 0
    out = capsys.readouterr().out
    assert (
        "state        dead" in out
        and "reason       rejected: too long" in out
        and '"content": "memory 0' in out
    )
    other = ids[0][:-4] + ("0000" if not ids[0].endswith("0000") else "1111")
    assert main(["show", str(journal_path), other]) == 2
    err = capsys.readouterr().err
    assert err == f"memwal-replay: no operation {other} in journal {journal_path}\n"
    assert main(["show", str(journal_path), "nonsense"]) == 2
    assert "not a memwal operation id" in capsys.readouterr().err


def test_list_filters_by_state_category_and_limit(
    journal_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    j, bugs = make_journal(journal_path, 5, category="bug")
    j.append("decision", "chose sqlite", {}, Priority.HIGH, (), None)
    j.close()
    assert main(["list", str(journal_path), "--category", "bug", "--limit", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["id"] for row in rows] == bugs[:3]
    assert main(["list", str(journal_path), "--state", "dead"]) == 0
    assert capsys.readouterr().out.count("\n") == 1  # the header only


# -- errors and help ---------------------------------------------------------------


@pytest.fixture
def locked(journal_path: Path) -> Iterator[Path]:
    make_journal(journal_path, 1)[0].close()
    conn = sqlite3.connect(journal_path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    yield journal_path
    conn.execute("ROLLBACK")
    conn.close()


def _text(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("not a database\n")
    return tmp / "notes.txt"


def _foreign(tmp: Path) -> Path:
    conn = sqlite3.connect(tmp / "app.db")
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    return tmp / "app.db"


def _newer(tmp: Path) -> Path:
    make_journal(tmp / "new.journal", 1)[0].close()
    conn = sqlite3.connect(tmp / "new.journal")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    return tmp / "new.journal"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.journal", "no such journal file"),
        (_text, "not a memwal journal (file is not a database)"),
        (_foreign, "not a memwal journal (no memwal application_id)"),
        (_newer, "schema version 99 is newer than this memwal reads"),
    ],
    ids=["missing", "text-file", "foreign-sqlite", "newer-schema"],
)
@pytest.mark.parametrize(
    "command", [["status"], ["verify", "--repair"], ["replay", "--sink", "sqlite:{tmp}/s.db"]]
)
def test_a_file_that_is_not_a_usable_journal_gives_one_line_and_exit_2(
    tmp_path: Path, make: Any, message: str, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = make(tmp_path)
    before = path.read_bytes() if path.exists() else None
    args = [command[0], str(path), *(a.format(tmp=tmp_path) for a in command[1:])]
    if command == ["status"]:  # through the installed script: no traceback may escape
        r = cli(*args)
        code, out, err = r.returncode, r.stdout, r.stderr
    else:
        code = main(args)
        out, err = capsys.readouterr()
    assert code == 2
    assert err.startswith(f"memwal-replay: {message}") and err.endswith(f"(journal {path})\n")
    assert err.count("\n") == 1 and out == ""
    assert (path.read_bytes() if path.exists() else None) == before  # nothing was written or created
    assert not (tmp_path / "s.db").exists()


def test_a_locked_journal_gives_one_line_and_exit_2(locked: Path) -> None:
    r = cli("status", locked, "--busy-timeout", "0.2")
    assert r.returncode == 2
    assert r.stderr == (
        f"memwal-replay: journal is locked by another process past the busy timeout (0.2s) (journal {locked})\n"
    )


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    r = cli("replay", tmp_path / "x.journal")  # --sink is required
    assert r.returncode == 2 and "--sink" in r.stderr
    make_journal(tmp_path / "j.journal", 1)[0].close()
    r = cli("replay", tmp_path / "j.journal", "--sink", "ftp://example")
    assert r.returncode == 2
    assert r.stderr.startswith("memwal-replay: --sink: 'ftp://example' is not sqlite:PATH")
    r = cli("replay", tmp_path / "j.journal", "--sink", f"sqlite:{tmp_path}")  # a directory
    assert r.returncode == 2
    assert r.stderr == f"memwal-replay: --sink: {str(tmp_path)!r} is not a file\n"
    assert status(tmp_path / "j.journal")["pending"] == 1


@pytest.mark.parametrize(
    "command", ["status", "list", "show", "replay", "requeue", "export", "import", "verify", "compact"]
)
def test_help_of_every_subcommand_shows_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"memwal-replay {command} " in out.split("example:")[1]


def test_help_through_the_module_and_the_script() -> None:
    for r in (cli("replay", "--help", module=True), cli("replay", "--help")):
        assert r.returncode == 0 and "example:" in r.stdout and "--sink URI" in r.stdout


# -- mem0 sinks --------------------------------------------------------------------


def test_mem0_uris_take_ids_and_key_from_options_before_the_environment() -> None:
    env = {"MEMWAL_MEM0_USER_ID": "env-user", "MEMWAL_MEM0_API_KEY": "env-key"}
    oss: Any = redrive.sink_from_uri("mem0+oss://127.0.0.1:8888", agent_id="bot", env=env)
    assert (oss.base_url, oss.api) == ("http://127.0.0.1:8888", "oss")
    assert oss.entity == {"user_id": "env-user", "agent_id": "bot"}
    assert oss.headers["X-API-Key"] == "env-key"
    platform: Any = redrive.sink_from_uri(
        "mem0+platform://api.mem0.ai", user_id="alice", api_key="k", env=env
    )
    assert (platform.base_url, platform.api, platform.entity) == (
        "https://api.mem0.ai",
        "platform",
        {"user_id": "alice"},
    )
    assert platform.headers["Authorization"] == "Token k"


def test_replay_to_a_mem0_server(journal_path: Path) -> None:
    j, ids = make_journal(journal_path, 5)
    j.close()
    server = subprocess.Popen(
        [sys.executable, "-m", "memwal._testing.fake_mem0", "--port", "0", "--api", "oss"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:")
        r = cli("replay", journal_path, "--sink", f"mem0+oss://{url.removeprefix('http://')}")
        assert r.returncode == 2 and "one of user_id, agent_id, run_id is required" in r.stderr
        r = cli(
            "replay",
            journal_path,
            "--sink",
            f"mem0+oss://{url.removeprefix('http://')}",
            "--user-id",
            "alice",
        )
        assert r.returncode == 0, r.stderr
        assert "delivered 5," in r.stdout
        with urllib.request.urlopen(f"{url}/_control/memories") as resp:
            stored = json.load(resp)["results"]
        assert sorted(m["metadata"]["memwal_id"] for m in stored) == sorted(ids)  # each once
        assert all(m["user_id"] == "alice" for m in stored)
    finally:
        kill(server)
    assert status(journal_path)["pending"] == 0


def test_export_to_stdout_names_damaged_rows_it_cannot_write(journal_path: Path) -> None:
    j, ids = make_journal(journal_path, 3)
    j.close()
    damage(journal_path, ids[1], fix_crc=False)
    r = cli("export", journal_path)
    assert r.returncode == 1
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == [ids[0], ids[2]]
    assert f"not exported: {ids[1]} (pending): checksum mismatch" in r.stderr


def test_progress_draws_a_bar_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from memwal.replay import _Progress

    bar = _Progress(tty=True)
    bar(redrive.ReplayProgress(total=10, delivered=4, retried=1, dead=1))
    bar.end()
    err = capsys.readouterr().err
    assert err == "\r[" + "#" * 15 + "." * 15 + "] 5/10  delivered 4  retried 1  dead 1\n"
