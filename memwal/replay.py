"""memwal-replay: see what a journal holds, deliver it to a sink, repair and compact it.

Run it beside a running collector or after one crashed: it never touches operations
a live collector has leased, and every write is a short transaction. Commands:
status, list, show, replay, requeue, export, import, verify, compact
(``memwal-replay COMMAND --help`` shows each with an example).

Exit codes: 0 success; 1 some operations were not delivered (replay), not requeued
(requeue), not written (import, export) or are damaged (verify); 2 a bad option or a
journal that cannot be used (missing, not a journal, newer schema, locked), or an
unknown id; 130 interrupted; 141 output cut short by a closed pipe (``| head``), quietly,
as SIGPIPE would.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import math
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio
import msgspec

from . import __version__
from ._core.config import Config, load_config
from ._core.errors import MemwalError
from ._journal.journal import Journal
from ._observe.metrics import MetricFamily, Sample, journal_families, render
from ._recovery import inspect as rec
from ._recovery import redrive, repair

__all__ = ["main"]

PROG = "memwal-replay"


def _out(text: str = "") -> None:
    print(text, file=sys.stdout)


def _err(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


def _json(obj: Any) -> str:
    return msgspec.json.encode(obj).decode()


# -- status ------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    with _journal(args) as j:
        s = rec.status(j)
    if args.json:
        _out(_json(s))
    elif args.prometheus:
        sys.stdout.write(render(_families(s)))
    else:
        _print_status(s)
    return 0


def _print_status(s: rec.StatusReport) -> None:
    _out(
        f"journal    {s.journal} (schema {s.schema_version}; {s.journal_bytes} bytes, WAL {s.wal_bytes} bytes)"
    )
    _out(f"collector  {_collectors(s)}")
    _out(f"pending    {s.pending}")
    _out(f"leased     {s.leased} ({s.recoverable} recoverable: lease expired or its process is gone)")
    _out(f"dead       {s.dead}")
    _out(f"delivered  {s.delivered} (retained)")
    _out(f"held       {s.held} (delivered to a fallback sink, awaiting reconciliation to the primary)")
    if s.oldest_pending_age_seconds is None:
        _out("oldest     none undelivered")
    else:
        _out(f"oldest     undelivered operation is {s.oldest_pending_age_seconds:.1f}s old")
    states = ("pending", "leased", "dead", "delivered", "held")
    for title, table in (("category", s.categories), ("priority", s.priorities)):
        rows = {k: v for k, v in table.items() if any(v.values())}
        if rows:
            _out(f"\n{'by ' + title:<22}" + "".join(f"{st:>10}" for st in states))
            for name, counts in rows.items():
                _out(f"  {name:<20}" + "".join(f"{counts[st]:>10}" for st in states))
    if s.dead_by_reason:
        _out("\ndead letters by reason:")
        for reason, n in s.dead_by_reason.items():
            _out(f"  {n:>8}  {reason}")


def _collectors(s: rec.StatusReport) -> str:
    """Which collectors are alive on the journal, by heartbeat (and leases, for older ones)."""
    now = time.time()
    alive = [c for c in s.collectors if c.alive]
    if alive:
        who = ", ".join(f"{_who(c.owner)} (seen {max(0.0, now - c.seen_at):.0f}s ago)" for c in alive)
        return f"{len(alive)} alive: {who}"
    if s.consumer_running:  # leases held by a live process that writes no heartbeat (an older memwal)
        return f"alive ({s.live_leases} operations leased)"
    gone = s.collectors[0] if s.collectors else None
    return "none alive" + (f" (last: {_who(gone.owner)}, seen {_when(gone.seen_at)})" if gone else "")


def _who(owner: str) -> str:
    host, _, rest = owner.partition(":")
    return f"pid {rest.partition(':')[0]} on {host}"


def _gauge(name: str, help: str, samples: list[Sample]) -> MetricFamily:
    return MetricFamily(f"memwal_journal_{name}", "gauge", help, samples)


def _families(s: rec.StatusReport) -> list[MetricFamily]:
    states = {
        "pending": s.pending,
        "leased": s.leased,
        "dead": s.dead,
        "delivered": s.delivered,
        "held": s.held,
    }
    undelivered = {p: by.get("pending", 0) + by.get("leased", 0) for p, by in s.priorities.items()}
    return [
        # the gauges a live collector exports too, defined once in _observe.metrics
        *journal_families(states, undelivered, s.oldest_pending_age_seconds, s.journal_bytes, s.wal_bytes),
        _gauge(
            "category_operations",
            "Operations in the journal by category and state.",
            [
                Sample(n, {"category": c, "state": st})
                for c, by in s.categories.items()
                for st, n in by.items()
            ],
        ),
        _gauge(
            "priority_operations",
            "Operations in the journal by priority and state.",
            [
                Sample(n, {"priority": p, "state": st})
                for p, by in s.priorities.items()
                for st, n in by.items()
            ],
        ),
        _gauge(
            "recoverable_operations",
            "Leased operations whose lease expired or whose process is gone.",
            [Sample(s.recoverable)],
        ),
        _gauge("live_leases", "Operations leased by a running collector.", [Sample(s.live_leases)]),
        _gauge(
            "collectors_alive",
            "Collectors whose heartbeat on this journal is fresh.",
            [Sample(sum(c.alive for c in s.collectors))],
        ),
        _gauge(
            "dead_operations",
            "Dead letters by reason.",
            [Sample(n, {"reason": r}) for r, n in s.dead_by_reason.items()],
        ),
        _gauge("schema_version", "The journal's schema version.", [Sample(s.schema_version)]),
    ]


# -- list, show --------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    states = args.state or rec.UNDELIVERED
    with _journal(args) as j:
        rows = rec.list_ops(j, states=states, category=args.category, limit=args.limit)
        total = rec.count_ops(j, states=states, category=args.category) if len(rows) == args.limit else len(rows)
    if args.json:
        _out(_json(rows))
    else:
        _print_rows(rows)
    if total > len(rows):
        _err(f"listed {len(rows):,} of {total:,} operations; --limit N lists more")
    return 0


def _print_rows(rows: list[rec.OpRow]) -> None:
    _out(
        f"{'ID':<36}  {'STATE':<9}  {'CATEGORY':<14}  {'PRIORITY':<8}  {'TRIES':>5}  {'CREATED':<19}  DETAIL"
    )
    for r in rows:
        detail = r.damage or r.reason or r.last_error or (r.op.content if r.op else "")
        detail = " ".join(detail.split())
        _out(
            f"{r.id:<36}  {r.state:<9}  {r.category:<14}  {r.priority:<8}  {r.attempts or 0:>5}  "
            f"{_when(r.created_at):<19}  {detail[:60]}"
        )


def cmd_show(args: argparse.Namespace) -> int:
    with _journal(args) as j:
        row = rec.show_op(j, args.id)
    if row is None:
        _err(f"no operation {args.id} in journal {args.journal}")
        return 2
    if args.json:
        _out(_json(row))
        return 0
    for field in (
        "id",
        "state",
        "category",
        "priority",
        "attempts",
        "last_error",
        "reason",
        "holder",
        "lease_owner",
        "damage",
    ):
        value = getattr(row, field)
        if value is not None:
            _out(f"{field:<12} {value}")
    for field in ("created_at", "not_before", "lease_until", "at"):
        value = getattr(row, field)
        if value:
            _out(f"{field:<12} {_when(value)}")
    if row.op is not None:
        _out("operation:")
        _out(msgspec.json.format(msgspec.json.encode(row.op), indent=2).decode())
    return 0


# -- replay ------------------------------------------------------------------------


class _Progress:
    """A bar on a terminal, a plain line at most once a second otherwise (stderr)."""

    def __init__(self, tty: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.tty, self.clock, self.last, self.drawn = tty, clock, -1e9, False

    def __call__(self, p: redrive.ReplayProgress) -> None:
        done = p.delivered + p.dead
        self.show(done, p.total, f"{done}/{p.total}  delivered {p.delivered}  retried {p.retried}  dead {p.dead}")

    def imported(self, p: rec.ImportProgress) -> None:
        counts = f"imported {p.imported}  skipped {p.skipped}  bad lines {p.errors}"
        self.show(p.read_bytes, p.total_bytes or 0, counts)

    def show(self, done: int, total: int, counts: str) -> None:
        """Draw ``done`` of ``total`` (a bar only when ``total`` is known) and ``counts``."""
        if self.tty:
            if total > 0:
                filled = 30 * min(done, total) // total
                counts = f"[{'#' * filled}{'.' * (30 - filled)}] {counts}"
            sys.stderr.write(f"\r{counts}")
            sys.stderr.flush()
            self.drawn = True
        elif self.clock() - self.last >= 1.0:
            self.last = self.clock()
            print(f"{PROG}: progress {counts}", file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            self.drawn = False


# At most this many ids are named after a replay; the rest are counted (``list`` shows them).
_NAMED = 10


def cmd_replay(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else Config()
    sink = redrive.sink_from_uri(
        args.sink, user_id=args.user_id, agent_id=args.agent_id, run_id=args.run_id, api_key=args.api_key
    )
    progress = _Progress(sys.stderr.isatty())

    async def run(j: Journal) -> redrive.ReplayReport:
        if args.dry_run:
            return await redrive.replay(
                j, sink, category=args.category, include_dead=args.include_dead, dry_run=True
            )
        async with sink:
            return await redrive.replay(
                j,
                sink,
                category=args.category,
                include_dead=args.include_dead,
                rate=args.rate,
                batch_size=args.batch_size,
                config=config,
                progress=progress,
            )

    with _journal(args) as j:
        try:
            r = _run_async(run, j)
        finally:
            progress.end()
    if r.dry_run:
        cats = ", ".join(f"{c} {n}" for c, n in sorted(r.by_category.items())) or "none"
        _out(
            f"dry run: would deliver {r.selected} operations to {args.sink} ({cats});"
            f" {r.live_leased} leased by a running collector are left alone; nothing was written"
        )
        return 0
    _out(
        f"delivered {r.delivered}, retried {r.retried}, dead {r.dead}, requeued from dead {r.requeued};"
        f" remaining in the journal: {r.remaining} ({r.waiting} waiting for a retry,"
        f" {r.live_leased} leased by a running collector)"
    )
    if r.stopped:
        _err(f"stopped early: {r.stopped}; last error: {r.last_error or 'none'}")
    elif r.failed and r.last_error:
        _err(f"last error: {r.last_error}")
    for op_id in r.failed[:_NAMED]:
        _err(f"not delivered: {op_id} (see: {PROG} show {args.journal} {op_id})")
    if len(r.failed) > _NAMED:
        _err(f"... and {len(r.failed) - _NAMED} more not delivered (see: {PROG} list {args.journal})")
    return 0 if r.ok else 1


def _run_async(fn: Callable[[Journal], Any], j: Journal) -> Any:
    """``anyio.run``, with an error from inside a task group raised as itself, not as a group."""
    try:
        return anyio.run(fn, j)
    except BaseExceptionGroup as group:
        inner: BaseException = group
        while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
            inner = inner.exceptions[0]
        if inner is group:
            raise
        raise inner from group


# -- requeue, export, import -------------------------------------------------------


def cmd_requeue(args: argparse.Namespace) -> int:
    with _journal(args) as j:
        done, missing = rec.requeue(j, category=args.category, ids=args.id or (), reason=args.reason)
    _out(f"requeued {len(done)} dead operations to pending")
    for op_id in missing:
        _err(f"not a dead letter in {args.journal}: {op_id}")
    return 1 if missing else 0


def cmd_export(args: argparse.Namespace) -> int:
    with _journal(args) as j:
        if args.output is None:
            n, damaged = rec.export_ops(
                j, sys.stdout.buffer, states=args.state or rec.UNDELIVERED, category=args.category
            )
            sys.stdout.buffer.flush()
        else:
            n, damaged = _export_file(j, Path(args.output), args)
    where = "standard output" if args.output is None else args.output
    print(f"{PROG}: exported {n} operations to {where}", file=sys.stderr)
    for row in damaged:
        _err(f"not exported: {row.id} ({row.state}): {row.damage}; run `{PROG} verify`")
    return 1 if damaged else 0


def _export_file(j: Journal, path: Path, args: argparse.Namespace) -> tuple[int, list[rec.OpRow]]:
    # Write beside the target and rename, so a failed export never leaves half a file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            result = rec.export_ops(j, f, states=args.state or rec.UNDELIVERED, category=args.category)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return result


def cmd_import(args: argparse.Namespace) -> int:
    progress = _Progress(sys.stderr.isatty())
    with open(args.file, "rb") as f, _journal(args, create=args.create) as j:
        size = os.fstat(f.fileno()).st_size if Path(args.file).is_file() else None
        try:
            r = rec.import_ops(
                j, f, max_content_bytes=j.config.max_content_bytes, total_bytes=size, progress=progress.imported
            )
        finally:
            progress.end()
    _out(
        f"imported {r.imported} operations, skipped {len(r.skipped)} already in the journal,"
        f" {len(r.errors)} bad lines"
    )
    for line, msg in r.errors[:_NAMED]:
        _err(f"{args.file}:{line}: {msg} (nothing written for this line)")
    if len(r.errors) > _NAMED:
        _err(f"... and {len(r.errors) - _NAMED} more bad lines (nothing written for them)")
    return 1 if r.errors else 0


# -- verify, compact ---------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    if args.salvage:
        return _salvage(args)
    with _journal(args) as j:
        r = repair.verify(j, repair=args.repair)
    for p in r.problems:
        what = "REPAIRED" if p.repaired else "PROBLEM"
        _out(f"{what:<9} {p.where:<10} {p.id or '-':<36}  {p.detail}")
    fixed = sum(p.repaired for p in r.problems)
    _out(
        f"checked {r.checked} rows: {len(r.problems)} problems, {fixed} repaired;"
        f" {r.quarantined} damaged rows already quarantined in dead letters"
    )
    if not r.ok and not args.repair:
        _out(f"run `{PROG} verify --repair {args.journal}` to move damaged rows to dead letters")
    return 0 if r.ok else 1


def _salvage(args: argparse.Namespace) -> int:
    r = repair.salvage(args.journal, args.salvage)
    for table, lo, hi in r.gaps:
        _out(f"LOST      {table:<10} keys {lo:#x}..{hi:#x}: on pages SQLite cannot read")
    for e in r.errors:
        _out(f"ERROR     {e}")
    _out(f"saved {r.saved} rows into {args.salvage}; about {r.lost} lost on unreadable pages")
    return 1 if r.gaps or r.errors else 0


def cmd_compact(args: argparse.Namespace) -> int:
    with _journal(args, retention=args.retention) as j:
        r = repair.compact(j)
    _out(
        f"purged {r.purged} delivered operations; {r.bytes_before} -> {r.bytes_after} bytes"
        f" (reclaimed {r.reclaimed} bytes)"
    )
    if not r.checkpoint_complete:
        _out("the WAL was not fully truncated: another process was reading; run compact again later")
    return 0


# -- plumbing ----------------------------------------------------------------------


@contextlib.contextmanager
def _journal(args: argparse.Namespace, *, retention: float = 0.0, create: bool = False) -> Iterator[Journal]:
    """The journal named by ``args``, open for the length of a ``with`` block."""
    journal = rec.open_journal(
        args.journal, busy_timeout=args.busy_timeout, retention=retention, create=create
    )
    try:
        yield journal
    finally:
        journal.close()


EXAMPLES = {
    "status": "  memwal-replay status agent.journal\n  memwal-replay status agent.journal --json"
    "\n  memwal-replay status agent.journal --prometheus > /var/lib/node_exporter/memwal.prom",
    "list": "  memwal-replay list agent.journal --state dead --limit 20\n"
    "  memwal-replay list agent.journal --category bug --json",
    "show": "  memwal-replay show agent.journal 0190a5c1-7b2e-7c3d-8e4f-0123456789ab",
    "replay": "  memwal-replay replay agent.journal --sink sqlite:memories.db\n"
    "  MEMWAL_MEM0_USER_ID=alice memwal-replay replay agent.journal --sink mem0+oss://localhost:8888"
    " --include-dead --rate 20\n"
    "  memwal-replay replay agent.journal --sink sqlite:memories.db --category bug --dry-run",
    "requeue": "  memwal-replay requeue agent.journal --reason 'HTTP 503'\n"
    "  memwal-replay requeue agent.journal --id 0190a5c1-7b2e-7c3d-8e4f-0123456789ab",
    "export": "  memwal-replay export agent.journal --state dead --output dead.jsonl",
    "import": "  memwal-replay import new.journal dead.jsonl --create",
    "verify": "  memwal-replay verify agent.journal\n  memwal-replay verify agent.journal --repair"
    "\n  memwal-replay verify --salvage saved.journal agent.journal",
    "compact": "  memwal-replay compact agent.journal --retention 86400",
}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error: what was wrong and where the help is."""

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ")
        self.exit(2, f"{PROG}: {message} (see: {self.prog} --help)\n")


def _number(kind: type[int | float], low: float, *, above: bool) -> Callable[[str], Any]:
    """An argparse type: a ``kind`` number above ``low`` (or at least ``low``), else one clear line."""
    bound = f"above {low:g}" if above else f"at least {low:g}"
    what = "a whole number" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or math.isnan(value) or (value <= low if above else value < low):
            raise argparse.ArgumentTypeError(f"must be {what} {bound}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, 0, above=True)
_positive_float = _number(float, 0, above=True)
_seconds = _number(float, 0, above=False)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} (memwal) {__version__}")
    common = _Parser(add_help=False)
    common.add_argument("journal", metavar="JOURNAL", help="the journal file")
    common.add_argument(
        "--busy-timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for a lock held by another process (default 5)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log every operation touched")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            parents=[common],
            help=help,
            description=help,
            epilog=f"example:\n{EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    states = list(rec.STATES)
    p = add(
        "status", cmd_status, "counts by state, category and priority; dead letters by reason; file sizes"
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object")
    fmt.add_argument("--prometheus", action="store_true", help="Prometheus text exposition")
    p = add("list", cmd_list, "list operations (default: every undelivered state), at most --limit")
    p.add_argument("--state", action="append", choices=states, help="repeatable")
    p.add_argument("--category")
    p.add_argument("--limit", type=_positive_int, default=100, metavar="N", help="at most N rows (default 100)")
    p.add_argument("--json", action="store_true", help="a JSON array")
    p = add("show", cmd_show, "one operation in full, with its state, attempts and errors")
    p.add_argument("id", metavar="ID")
    p.add_argument("--json", action="store_true")
    p = add("replay", cmd_replay, "deliver pending (and with --include-dead, dead) operations to a sink")
    p.add_argument(
        "--sink",
        required=True,
        metavar="URI",
        help="sqlite:PATH, mem0+oss://HOST:PORT or mem0+platform://HOST",
    )
    p.add_argument("--include-dead", action="store_true", help="requeue the selected dead letters first")
    p.add_argument("--category")
    p.add_argument("--rate", type=_positive_float, metavar="N", help="at most N operations per second")
    p.add_argument(
        "--batch-size", type=_positive_int, default=100, metavar="N", help="operations per sink call (default 100)"
    )
    p.add_argument("--dry-run", action="store_true", help="show what would be delivered; write nothing")
    p.add_argument("--config", metavar="FILE", help="memwal config (retries, timeouts, breaker)")
    for opt, env in (
        ("user-id", "USER_ID"),
        ("agent-id", "AGENT_ID"),
        ("run-id", "RUN_ID"),
        ("api-key", "API_KEY"),
    ):
        p.add_argument(f"--{opt}", help=f"mem0 only (default: $MEMWAL_MEM0_{env})")
    p = add("requeue", cmd_requeue, "move dead letters back to pending, attempts reset")
    p.add_argument("--category")
    p.add_argument("--id", action="append", metavar="ID", help="repeatable")
    p.add_argument("--reason", metavar="TEXT", help="only dead letters whose reason contains TEXT")
    p = add("export", cmd_export, "write operations as JSON Lines (default: every undelivered state)")
    p.add_argument("--state", action="append", choices=states, help="repeatable")
    p.add_argument("--category")
    p.add_argument("--output", "-o", metavar="FILE", help="default: standard output")
    p = add("import", cmd_import, "append exported operations as pending, keeping their ids")
    p.add_argument("file", metavar="FILE", help="JSON Lines, as written by export")
    p.add_argument("--create", action="store_true", help="create JOURNAL if it does not exist")
    p = add("verify", cmd_verify, "integrity check, schema version, every payload's checksum")
    p.add_argument("--repair", action="store_true", help="move damaged rows to dead letters")
    p.add_argument(
        "--salvage",
        metavar="OUT",
        help="copy every row that can still be read from a damaged (malformed) JOURNAL into the new journal OUT",
    )
    p = add("compact", cmd_compact, "delete delivered rows past retention, checkpoint, VACUUM")
    p.add_argument(
        "--retention",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="keep delivered rows younger than this (default 0: delete all)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run memwal-replay; returns the exit code.

    Example:
        >>> main(["status", "agent.journal", "--json"])
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports usage errors itself
        return int(exc.code or 0)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    logger = logging.getLogger("memwal")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # here, so a reader that went away is seen as a broken pipe below
        return code
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as SIGPIPE would
        with contextlib.suppress(OSError, ValueError):  # no flush at exit may raise again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except MemwalError as exc:
        _err(str(exc))
    except OSError as exc:
        _err(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))
    except sqlite3.Error as exc:
        _err(f"sqlite error: {exc}")
    except KeyboardInterrupt:
        _err("interrupted; leased operations were given back to the journal")
        return 130
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
