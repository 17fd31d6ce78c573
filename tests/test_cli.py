"""memwal-replay as a user meets it: option errors, an unreachable sink, pipes, cut listings,
--version, help, one word per meaning, import pages and progress, collector liveness."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import memwal
from memwal._core.config import JournalConfig
from memwal._core.records import IdGenerator, Priority
from memwal._journal import heartbeat
from memwal._journal.journal import Journal, Settlement
from memwal._recovery import inspect as rec
from memwal.replay import _Progress, main
from memwal.testing import ManualClock

SCRIPT = Path(sys.executable).with_name("memwal-replay")


def make_journal(path: Path, n: int, *, category: str = "bug", content: str = "memory") -> list[str]:
    j = Journal(path)
    j.open()
    try:
        return [j.append(category, f"{content} {i}", {"i": i}, Priority.MEDIUM, (), None)[0].id for i in range(n)]
    finally:
        j.close()


def counts(path: Path) -> rec.StatusReport:
    j = rec.open_journal(path)
    try:
        return rec.status(j)
    finally:
        j.close()


def run(args: list[Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# -- every bad option: one line, exit 2, nothing written ---------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "J", "--sink", "sqlite:S", "--rate", "0"], "--rate: must be a number above 0, got '0'"),
        (["replay", "J", "--sink", "sqlite:S", "--rate", "-5"], "--rate: must be a number above 0, got '-5'"),
        (["replay", "J", "--sink", "sqlite:S", "--rate", "nan"], "--rate: must be a number above 0, got 'nan'"),
        (["replay", "J", "--sink", "sqlite:S", "--rate", "fast"], "--rate: must be a number above 0, got 'fast'"),
        (
            ["replay", "J", "--sink", "sqlite:S", "--batch-size", "0"],
            "--batch-size: must be a whole number above 0, got '0'",
        ),
        (
            ["replay", "J", "--sink", "sqlite:S", "--batch-size", "2.5"],
            "--batch-size: must be a whole number above 0, got '2.5'",
        ),
        (["list", "J", "--limit", "0"], "--limit: must be a whole number above 0, got '0'"),
        (["list", "J", "--state", "gone"], "--state: invalid choice: 'gone'"),
        (["status", "J", "--busy-timeout", "-1"], "--busy-timeout: must be a number at least 0, got '-1'"),
        (["compact", "J", "--retention", "-3"], "--retention: must be a number at least 0, got '-3'"),
        (["status", "J", "--bogus"], "unrecognized arguments: --bogus"),
        (["replay", "J"], "the following arguments are required: --sink"),
        (["frobnicate", "J"], "COMMAND: invalid choice: 'frobnicate'"),
    ],
)
def test_a_bad_option_is_one_line_and_exit_2_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "agent.journal"
    make_journal(journal, 20)
    before = journal.read_bytes()
    args = [a.replace("J", str(journal)).replace("sqlite:S", f"sqlite:{tmp_path / 's.db'}") for a in args]
    code, out, err = run(args, capsys)
    assert code == 2
    assert err.startswith(f"memwal-replay: {message}") and err.count("\n") == 1, err
    assert "--help)" in err and out == ""
    assert journal.read_bytes() == before and not (tmp_path / "s.db").exists()
    assert counts(journal).pending == 20


def test_the_installed_script_reports_a_bad_rate_without_a_traceback(tmp_path: Path) -> None:
    journal = tmp_path / "agent.journal"
    make_journal(journal, 3)
    r = subprocess.run(
        [SCRIPT, "replay", journal, "--sink", f"sqlite:{tmp_path / 's.db'}", "--rate", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert counts(journal).pending == 3


def test_the_library_refuses_a_bad_rate_or_batch_size(tmp_path: Path) -> None:
    import anyio

    from memwal._recovery import redrive
    from memwal.testing import MemorySink

    journal = tmp_path / "agent.journal"
    make_journal(journal, 2)
    j = rec.open_journal(journal)
    try:
        for kwargs, field in (({"rate": 0.0}, "rate"), ({"batch_size": 0}, "batch_size"), ({"rate": -1.0}, "rate")):
            with pytest.raises(memwal.InvalidOperation, match=f"^{field}: "):
                anyio.run(lambda kw=kwargs: redrive.replay(j, MemorySink(), **kw))  # type: ignore[misc]
        assert rec.status(j).pending == 2
    finally:
        j.close()


# -- a sink that cannot be reached ---------------------------------------------------------


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed): connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_replay_to_an_unreachable_sink_names_the_cause_and_the_true_remaining_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "agent.journal"
    make_journal(journal, 300)
    sink = f"mem0+oss://127.0.0.1:{refused_port()}"
    code, out, err = run(["replay", journal, "--sink", sink, "--user-id", "alice", "--batch-size", "10"], capsys)
    assert code == 1
    assert "remaining in the journal: 300 (" in out
    lines = err.splitlines()
    stop = [line for line in lines if "last error:" in line]
    assert len(stop) == 1 and "stopped early:" in stop[0]
    assert "Cannot connect to host 127.0.0.1" in stop[0] or "refused" in stop[0].lower()
    named = [line for line in lines if line.startswith("memwal-replay: not delivered:")]
    assert 1 <= len(named) <= 10
    more = [line for line in lines if line.startswith("memwal-replay: ... and ")]
    assert len(more) == 1 and more[0].endswith(f"more not delivered (see: memwal-replay list {journal})")
    assert "Traceback" not in err
    assert counts(journal).pending == 300


# -- pipes, cut listings, --version, help, words --------------------------------------------


def test_a_reader_that_goes_away_ends_the_listing_quietly(tmp_path: Path) -> None:
    journal = tmp_path / "agent.journal"
    make_journal(journal, 3000, content="a memory long enough to fill a pipe buffer " * 2)
    proc = subprocess.Popen(
        [SCRIPT, "list", journal, "--limit", "3000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"ID ")
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141
    assert err == b""


def test_a_cut_listing_says_how_many_there_are_and_how_to_see_more(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "agent.journal"
    make_journal(journal, 5)
    code, out, err = run(["list", journal, "--limit", "3"], capsys)
    assert code == 0 and len(out.splitlines()) == 1 + 3
    assert err == "memwal-replay: listed 3 of 5 operations; --limit N lists more\n"
    code, out, err = run(["list", journal, "--limit", "3", "--json"], capsys)
    assert len(json.loads(out)) == 3 and "listed 3 of 5" in err
    code, out, err = run(["list", journal, "--limit", "5"], capsys)
    assert code == 0 and len(out.splitlines()) == 6 and err == ""
    j = rec.open_journal(journal)
    try:
        assert rec.count_ops(j) == 5 and rec.count_ops(j, states=["dead"]) == 0
        assert rec.count_ops(j, category="bug", states=["pending", "dead"]) == 5
        assert rec.count_ops(j, states=[]) == 0
    finally:
        j.close()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"memwal-replay (memwal) {memwal.__version__}\n"


def test_top_level_help_names_the_commands_not_private_modules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("status", "list", "show", "replay", "requeue", "export", "import", "verify", "compact"):
        assert f"\n    {command} " in out
    assert "_recovery" not in out and "_redrive" not in out and "_repair" not in out and "memwal._" not in out
    assert "Exit codes:" in out and "--version" in out


def test_held_means_only_delivered_to_a_fallback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = tmp_path / "agent.journal"
    make_journal(journal, 2)
    store = f"sqlite:{tmp_path / 's.db'}"
    for args in (["replay", journal, "--sink", store, "--dry-run"], ["replay", journal, "--sink", store]):
        code, out, err = run(args, capsys)
        words = (out + err).replace(str(tmp_path), "TMP").split()
        assert code == 0 and "held" not in words and "leased by a running collector" in out
    code, out, _ = run(["status", journal], capsys)
    held = [line for line in out.splitlines() if "held" in line.split()[:1]]
    assert held == ["held       0 (delivered to a fallback sink, awaiting reconciliation to the primary)"]


# -- import: pages, duplicates, progress -------------------------------------------------------


def export_lines(n: int) -> list[str]:
    new_id = IdGenerator().next
    return [json.dumps({"id": new_id()[0], "category": "bug", "content": f"m {i}", "tags": ["t"]}) for i in range(n)]


def test_import_writes_pages_skips_duplicates_and_reports_progress(tmp_path: Path) -> None:
    journal = tmp_path / "agent.journal"
    lines = export_lines(1200)  # three pages of 500
    clash = json.loads(lines[7])
    clash["id"] = clash["id"][:-12] + "ffffffffffff"  # same key (time and random bits), another id
    body = [*lines, lines[3], "{broken", json.dumps(clash), ""]
    dump = tmp_path / "ops.jsonl"
    dump.write_text("\n".join(body) + "\n")
    seen: list[rec.ImportProgress] = []
    j = rec.open_journal(journal, create=True)
    try:
        with dump.open("rb") as f:
            r = rec.import_ops(j, f, total_bytes=dump.stat().st_size, progress=seen.append)
        assert r.imported == 1200 and r.skipped == [json.loads(lines[3])["id"]]
        assert [n for n, _ in r.errors] == [1202, 1203]
        assert "not a JSON object" in r.errors[0][1] and "journal key of another operation" in r.errors[1][1]
        assert rec.status(j).pending == 1200
        assert j.depth_estimate == 1200  # the back-pressure count sees the imported rows
        assert [p.imported for p in seen] == [500, 1000, 1200]
        assert seen[-1].read_bytes == seen[-1].total_bytes == dump.stat().st_size
        with dump.open("rb") as f:
            again = rec.import_ops(j, f)
        assert again.imported == 0 and len(again.skipped) == 1201
    finally:
        j.close()


def test_import_lists_at_most_ten_bad_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = tmp_path / "agent.journal"
    dump = tmp_path / "bad.jsonl"
    dump.write_text("nope\n" * 25)
    code, out, err = run(["import", journal, dump, "--create"], capsys)
    assert code == 1 and "imported 0 operations, skipped 0 already in the journal, 25 bad lines" in out
    assert err.count(f"{dump}:") == 10 and err.endswith("... and 15 more bad lines (nothing written for them)\n")


def test_progress_bar_for_import_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    bar = _Progress(tty=True)
    bar.imported(rec.ImportProgress(read_bytes=50, total_bytes=100, imported=4, skipped=1, errors=0))
    bar.imported(rec.ImportProgress(read_bytes=7, total_bytes=None, imported=5, skipped=1, errors=0))
    bar.end()
    bar.end()  # a second end draws nothing more
    err = capsys.readouterr().err
    assert err == (
        "\r[" + "#" * 15 + "." * 15 + "] imported 4  skipped 1  bad lines 0"
        "\rimported 5  skipped 1  bad lines 0\n"
    )


def test_progress_off_a_terminal_is_a_line_at_most_once_a_second(capsys: pytest.CaptureFixture[str]) -> None:
    clock = ManualClock()
    bar = _Progress(tty=False, clock=clock)
    for _ in range(3):
        bar.show(1, 2, "a")
    clock.advance(1.0)
    bar.show(2, 2, "b")
    bar.end()
    assert capsys.readouterr().err == "memwal-replay: progress a\nmemwal-replay: progress b\n"


# -- collector liveness ----------------------------------------------------------------------


def test_heartbeat_is_alive_while_fresh_and_stale_after(tmp_path: Path) -> None:
    clock = ManualClock(start=1_000_000.0)
    j = Journal(tmp_path / "agent.journal", JournalConfig(), clock=clock)
    j.open()
    try:
        assert heartbeat.collectors(j) == []
        heartbeat.beat(j)
        clock.advance(heartbeat.STALE - 0.5)
        (seen,) = heartbeat.collectors(j)
        assert seen.alive and seen.owner == j.owner and seen.started_at == 1_000_000.0
        heartbeat.beat(j)  # a beat moves seen_at, not started_at
        clock.advance(heartbeat.STALE + 0.5)
        (seen,) = heartbeat.collectors(j)
        assert not seen.alive and seen.started_at == 1_000_000.0
        assert rec.status(j).consumer_running is False
        heartbeat.leave(j)
        assert heartbeat.collectors(j) == []
    finally:
        j.close()


def test_a_beat_removes_rows_of_collectors_long_gone(tmp_path: Path) -> None:
    clock = ManualClock(start=1_000_000.0)
    old = Journal(tmp_path / "agent.journal", clock=clock)
    old.open()
    heartbeat.beat(old)
    old.close()  # without leave: as a process killed with SIGKILL
    clock.advance(heartbeat.STALE_ROW + 1)
    j = Journal(tmp_path / "agent.journal", clock=clock)
    j.open()
    try:
        assert len(heartbeat.collectors(j)) == 1
        heartbeat.beat(j)
        assert [c.owner for c in heartbeat.collectors(j)] == [j.owner]
    finally:
        j.close()


IDLE_CHILD = textwrap.dedent(
    """
    import sys, anyio, memwal
    from memwal.testing import MemorySink

    async def main(path):
        async with memwal.AsyncMemoryCollector(path, MemorySink()):
            print("ready", flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)  # idle until told to close (or killed)

    anyio.run(main, sys.argv[1])
    """
)


def start_idle_collector(journal: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", IDLE_CHILD, str(journal)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n", "the collector child did not start"
    return proc


def test_status_sees_a_live_idle_collector_and_not_a_killed_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "agent.journal"
    proc = start_idle_collector(journal)
    try:
        s = counts(journal)
        assert s.consumer_running and s.live_leases == 0 and s.leased == 0
        assert [c.alive for c in s.collectors] == [True] and f":{proc.pid}:" in s.collectors[0].owner
        code, out, _ = run(["status", journal], capsys)
        assert code == 0 and f"collector  1 alive: pid {proc.pid} on {socket.gethostname()}" in out
        code, out, _ = run(["status", journal, "--prometheus"], capsys)
        assert "memwal_journal_collectors_alive 1\n" in out
        # The consumer's housekeeping refreshes the beat every INTERVAL seconds while idle.
        deadline = time.monotonic() + 10 * heartbeat.INTERVAL
        while (c := counts(journal).collectors[0]).seen_at == c.started_at:
            assert time.monotonic() < deadline, "the heartbeat was never refreshed"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()
    s = counts(journal)
    assert not s.consumer_running and [c.alive for c in s.collectors] == [False]
    code, out, _ = run(["status", journal], capsys)
    assert f"collector  none alive (last: pid {proc.pid} on " in out


def test_a_collector_that_closes_removes_its_heartbeat(tmp_path: Path) -> None:
    journal = tmp_path / "agent.journal"
    proc = start_idle_collector(journal)
    assert proc.stdin is not None and proc.stdout is not None
    assert counts(journal).consumer_running
    proc.stdin.write("\n")
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    proc.stdout.close()
    s = counts(journal)
    assert s.collectors == [] and not s.consumer_running


def test_status_without_heartbeats_falls_back_to_live_leases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "agent.journal"
    make_journal(journal, 3)
    j = Journal(journal)  # leases in this (live) process, no heartbeat: as an older memwal
    j.open()
    try:
        leased, _ = j.lease(2)
        s = counts(journal)
        assert s.consumer_running and s.collectors == [] and s.live_leases == 2
        assert "collector  alive (2 operations leased)\n" in run(["status", journal], capsys)[1]
        j.settle(Settlement(acked=[g.key for g in leased]))
    finally:
        j.close()
    assert not counts(journal).consumer_running


# -- the rest of each command's output and error paths ---------------------------------------


def dead_journal(path: Path) -> tuple[list[str], list[str]]:
    """Four bug and two decision operations; the first bug and first decision dead-lettered."""
    bugs = make_journal(path, 4)
    decisions = make_journal(path, 2, category="decision")
    j = Journal(path)
    j.open()
    try:
        leased, _ = j.lease(6)
        by_id = {g.op.id: g.key for g in leased}
        j.settle(Settlement(dead=[(by_id[bugs[0]], "rejected: 422 too long"), (by_id[decisions[0]], "gave up")],
                            release=[k for i, k in by_id.items() if i not in (bugs[0], decisions[0])]))
    finally:
        j.close()
    return bugs, decisions


def test_status_text_shows_counts_by_category_priority_and_dead_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "agent.journal"
    dead_journal(journal)
    code, out, _ = run(["status", journal], capsys)
    assert code == 0
    assert "pending    4\n" in out and "dead       2\n" in out
    assert "  bug                          3         0         1         0         0" in out
    assert "  decision                     1         0         1         0         0" in out
    assert "  medium                       4         0         2         0         0" in out
    assert "dead letters by reason:\n         1  gave up\n         1  rejected: 422 too long\n" in out
    code, out, _ = run(["status", journal, "--json"], capsys)
    s = json.loads(out)
    assert (s["pending"], s["dead"], s["collectors"], s["consumer_running"]) == (4, 2, [], False)


def test_show_json_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = tmp_path / "agent.journal"
    bugs, _ = dead_journal(journal)
    code, out, _ = run(["show", journal, bugs[0], "--json"], capsys)
    row = json.loads(out)
    assert code == 0 and row["state"] == "dead" and row["reason"] == "rejected: 422 too long"
    assert row["op"]["content"] == "memory 0"
    code, out, _ = run(["show", journal, bugs[1]], capsys)
    assert code == 0 and "state        pending" in out and "created_at" in out and '"content": "memory 1"' in out


def test_requeue_by_category_and_by_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = tmp_path / "agent.journal"
    bugs, decisions = dead_journal(journal)
    code, out, err = run(["requeue", journal, "--category", "decision"], capsys)
    assert (code, out, err) == (0, "requeued 1 dead operations to pending\n", "")
    code, out, err = run(["requeue", journal, "--id", bugs[0], "--id", decisions[0]], capsys)
    assert code == 1 and out == "requeued 1 dead operations to pending\n"
    assert err == f"memwal-replay: not a dead letter in {journal}: {decisions[0]}\n"
    s = counts(journal)
    assert (s.pending, s.dead) == (6, 0)


def test_export_to_a_directory_that_does_not_exist_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "agent.journal"
    make_journal(journal, 2)
    code, out, err = run(["export", journal, "--output", tmp_path / "missing" / "ops.jsonl"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "No such file or directory" in err
    code, out, err = run(["export", journal, "--output", tmp_path / "ops.jsonl", "--state", "pending"], capsys)
    assert code == 0 and err == f"memwal-replay: exported 2 operations to {tmp_path / 'ops.jsonl'}\n"
    assert sorted(p.name for p in tmp_path.iterdir() if "ops" in p.name) == ["ops.jsonl"]  # no temporary left


def test_export_that_fails_midway_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = tmp_path / "agent.journal"
    make_journal(journal, 2)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rec, "export_ops", broken)
    assert main(["export", str(journal), "--output", str(tmp_path / "ops.jsonl")]) == 2
    assert [p.name for p in tmp_path.iterdir() if "ops" in p.name] == []


def test_import_of_a_missing_file_creates_no_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["import", tmp_path / "new.journal", tmp_path / "nope.jsonl", "--create"], capsys)
    assert code == 2 and out == "" and err == f"memwal-replay: {tmp_path / 'nope.jsonl'}: No such file or directory\n"
    assert not (tmp_path / "new.journal").exists()


def test_a_directory_is_not_a_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["status", tmp_path], capsys)
    assert code == 2 and err == (
        f"memwal-replay: not a journal file (it is a directory or device) (journal {tmp_path})\n"
    )


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (KeyboardInterrupt(), 130, "interrupted; leased operations were given back to the journal"),
        (__import__("sqlite3").OperationalError("disk I/O error"), 2, "sqlite error: disk I/O error"),
        (OSError("no space"), 2, "no space"),
        (memwal.JournalError("cannot write: full", path="x.journal"), 2, "cannot write: full (journal x.journal)"),
    ],
    ids=["interrupt", "sqlite", "oserror", "journal"],
)
def test_failures_inside_a_command_are_one_line_with_their_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    error: BaseException, code: int, line: str,
) -> None:
    journal = tmp_path / "agent.journal"
    make_journal(journal, 1)

    def fail(_: Any) -> Any:
        raise error

    monkeypatch.setattr(rec, "status", fail)
    got, out, err = run(["status", journal], capsys)
    assert got == code and out == "" and err == f"memwal-replay: {line}\n"


def test_an_error_inside_a_task_group_is_reported_as_itself() -> None:
    import anyio

    from memwal.replay import _run_async

    async def inner(_: Any) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 0)
            raise memwal.SinkRejected("no")

    with pytest.raises(memwal.SinkRejected, match="no"):
        _run_async(inner, None)  # type: ignore[arg-type]

    async def two(_: Any) -> None:
        raise ExceptionGroup("two failures", [ValueError("a"), KeyError("b")])

    with pytest.raises(ExceptionGroup, match="two failures"):  # more than one: kept whole
        _run_async(two, None)  # type: ignore[arg-type]


def test_verbose_logs_each_operation_touched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = tmp_path / "agent.journal"
    bugs, _ = dead_journal(journal)
    code, _, err = run(["requeue", journal, "--id", bugs[0], "-v"], capsys)
    assert code == 0 and f"memwal-replay: operation {bugs[0]} requeued from dead letters\n" in err
    code, _, err = run(["requeue", journal, "--category", "decision"], capsys)
    assert code == 0 and err == ""  # without -v: no per-operation lines


def test_a_replay_report_carries_the_last_error_and_what_remains(tmp_path: Path) -> None:
    import anyio

    from memwal._recovery import redrive
    from memwal.testing import FlakySink

    journal = tmp_path / "agent.journal"
    ids = make_journal(journal, 6)
    j = rec.open_journal(journal)
    try:
        sink = FlakySink(fail_ids={ids[1], ids[4]})
        report = anyio.run(lambda: redrive.replay(j, sink))
        assert report.delivered == 4 and report.remaining == 2 and report.failed == sorted([ids[1], ids[4]])
        assert report.last_error is not None and "flaky sink unavailable" in report.last_error
        clean = anyio.run(lambda: redrive.replay(j, FlakySink()))
        assert clean.ok and clean.remaining == 0 and clean.last_error is None and clean.delivered == 2
    finally:
        j.close()
