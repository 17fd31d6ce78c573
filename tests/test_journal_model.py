"""The journal against a plain Python model: nothing lost, nothing after its ack, priority order.

A hypothesis state machine drives a real ``Journal`` on a real SQLite file (a fresh
temp dir per example) with a ManualClock as ``journal.clock`` (lease expiry and
``not_before`` read it), and checks each step against ``Model``.

Reopen closes the journal and opens a new ``Journal`` object on the same file. The
old object's leases belong to a live process (this one: same pid, another owner
token), so ``recover`` must leave them alone; they stay leased until they expire.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from memwal._core.config import JournalConfig
from memwal._core.records import PRIORITY_BY_RANK
from memwal._journal.journal import Journal, Settlement
from memwal.testing import ManualClock

LONG = os.environ.get("MEMWAL_LONG") == "1"
pytestmark = pytest.mark.timeout(1800 if LONG else 120)
LEASE_SECONDS = 30.0
CATEGORIES = ("bug", "error", "feedback", "performance")


@dataclass
class Row:
    """The model of one appended operation."""

    index: int  # append order: FIFO within a priority
    op_id: str
    key: int  # the journal key returned by lease, learnt the first time it is leased
    rank: int
    category: str
    content: str
    state: str = "pending"  # pending | leased | dead | acked
    not_before: float = 0.0
    lease_until: float = 0.0
    mine: bool = False  # leased by the current Journal object (not one closed by reopen)
    attempts: int = 0


class JournalModel(RuleBasedStateMachine):
    """Rules mirror what consumers do; invariants compare the journal with the model."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="memwal-model-"))
        self.path = self.dir / "model.journal"
        self.clock = ManualClock()
        self.journal = self._open()
        self.rows: dict[str, Row] = {}
        self.by_key: dict[int, Row] = {}

    def _open(self) -> Journal:
        j = Journal(self.path, JournalConfig(lease_seconds=LEASE_SECONDS), clock=self.clock)
        j.open()
        return j

    def teardown(self) -> None:
        self.journal.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model's view --------------------------------------------------------

    def _ready(self) -> list[Row]:
        now = self.clock()
        ready = [
            r for r in self.rows.values()
            if (r.state == "pending" and r.not_before <= now) or (r.state == "leased" and r.lease_until < now)
        ]
        return sorted(ready, key=lambda r: (r.rank, r.index))

    def _mine(self) -> list[Row]:
        return sorted((r for r in self.rows.values() if r.state == "leased" and r.mine), key=lambda r: r.index)

    # -- rules -------------------------------------------------------------------

    @rule(category=st.sampled_from(CATEGORIES), rank=st.integers(0, 3), content=st.text(min_size=1, max_size=20))
    def append(self, category: str, rank: int, content: str) -> None:
        prio = PRIORITY_BY_RANK[rank]
        op, dropped = self.journal.append(category, content, {"n": len(self.rows)}, prio, (), None)
        assert dropped is None
        assert op.id not in self.rows
        self.rows[op.id] = Row(len(self.rows), op.id, -1, rank, category, content)

    @rule(n=st.integers(1, 8))
    def lease(self, n: int) -> None:
        expected = self._ready()[:n]
        leased, bad = self.journal.lease(n)
        assert bad == []
        got = [g.op.id for g in leased]
        # Priority rank first, FIFO within a rank, and only ready rows (never an acked one).
        assert got == [r.op_id for r in expected], (got, [r.op_id for r in expected])
        for g, r in zip(leased, expected, strict=True):
            assert g.op.content == r.content and g.op.category == r.category
            assert g.op.priority is PRIORITY_BY_RANK[r.rank]
            assert g.attempts == r.attempts
            r.key = g.key
            self.by_key[g.key] = r
            r.state, r.mine, r.lease_until = "leased", True, self.clock() + LEASE_SECONDS

    @precondition(lambda self: self._mine())
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        picked = data.draw(st.lists(st.sampled_from(self._mine()), min_size=1, unique_by=lambda r: r.op_id))
        self.journal.settle(Settlement(acked=[r.key for r in picked]))
        for r in picked:
            r.state, r.mine = "acked", False

    @precondition(lambda self: self._mine())
    @rule(data=st.data(), delay=st.sampled_from([0.0, 0.0, 5.0, 100.0]))
    def fail(self, data: st.DataObject, delay: float) -> None:
        picked = data.draw(st.lists(st.sampled_from(self._mine()), min_size=1, unique_by=lambda r: r.op_id))
        when = self.clock() + delay
        self.journal.settle(Settlement(retry=[(r.key, "SinkUnavailable: down", when) for r in picked]))
        for r in picked:
            r.state, r.mine, r.not_before, r.attempts = "pending", False, when, r.attempts + 1

    @precondition(lambda self: self._mine())
    @rule(data=st.data())
    def dead_letter(self, data: st.DataObject) -> None:
        picked = data.draw(st.lists(st.sampled_from(self._mine()), min_size=1, unique_by=lambda r: r.op_id))
        self.journal.settle(Settlement(dead=[(r.key, f"rejected: {r.op_id}") for r in picked]))
        for r in picked:
            r.state, r.mine = "dead", False
            assert self.journal.dead_reason(r.op_id) == f"rejected: {r.op_id}"

    @precondition(lambda self: self._mine())
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        picked = data.draw(st.lists(st.sampled_from(self._mine()), min_size=1, unique_by=lambda r: r.op_id))
        self.journal.settle(Settlement(release=[r.key for r in picked]))
        for r in picked:  # not_before is kept; no attempt is used
            r.state, r.mine = "pending", False

    @rule(seconds=st.sampled_from([1.0, 6.0, LEASE_SECONDS, LEASE_SECONDS + 0.5, 101.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: any(r.state == "leased" and not r.mine for r in self.rows.values()))
    @rule()
    def stale_settle_is_ignored(self) -> None:
        # A consumer may not retry or release a row another owner leased (the closed object's).
        stale = [r for r in self.rows.values() if r.state == "leased" and not r.mine]
        self.journal.settle(
            Settlement(retry=[(r.key, "late", 0.0) for r in stale], release=[r.key for r in stale])
        )

    @rule()
    def reopen(self) -> None:
        self.journal.close()
        self.journal = self._open()
        for r in self.rows.values():
            r.mine = False
        # The old object's owner is this live process: its leases stay until they expire.
        assert self.journal.recover() == 0

    # -- invariants --------------------------------------------------------------

    @invariant()
    def nothing_lost(self) -> None:
        states = [r.state for r in self.rows.values()]
        c = self.journal.counts()
        assert (c.pending, c.leased, c.dead, c.delivered, c.held) == (
            states.count("pending"), states.count("leased"), states.count("dead"), 0, 0
        )
        # Every appended id is in exactly one state, and the journal holds the undelivered ones.
        assert c.pending + c.leased + c.dead + states.count("acked") == len(self.rows)

    @invariant()
    def find_sees_exactly_the_undelivered(self) -> None:
        for r in self.rows.values():
            op = self.journal.find(r.op_id)
            if r.state in ("pending", "leased"):
                assert op is not None and op.id == r.op_id and op.content == r.content
            else:
                assert op is None, (r.op_id, r.state)

    @invariant()
    def undelivered_lists_the_same_rows(self) -> None:
        listed = {op.id for op in self.journal.undelivered(limit=10_000)}
        assert listed == {r.op_id for r in self.rows.values() if r.state in ("pending", "leased")}


JournalModel.TestCase.settings = settings(
    max_examples=600 if LONG else 80,
    stateful_step_count=100 if LONG else 40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestJournalModel = JournalModel.TestCase

