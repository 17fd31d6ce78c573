"""Journal edges the collectors reach only in other processes: a fork's child, snapshots of a closed journal."""

from __future__ import annotations

from pathlib import Path

import pytest

from memwal import JournalError
from memwal._core.config import JournalConfig
from memwal._core.records import Priority
from memwal._journal import base
from memwal._journal.journal import Journal


def test_a_forked_childs_journal_drops_the_parents_connections_unused_and_refuses_work(tmp_path: Path) -> None:
    path = tmp_path / "a.journal"
    j = Journal(path, JournalConfig(durability="full"))  # full: it also holds the WAL's descriptor
    j.open()
    op, _ = j.append("bug", "before the fork", {}, Priority.MEDIUM, (), None)
    snap = j.own_snapshot()
    snap.close()  # back to the pool: the child must drop pooled connections too
    before = len(base.inherited)
    lock = j._wlock  # held by "another parent thread" at the fork
    lock.acquire()
    try:
        j.forget_after_fork()  # what os.register_at_fork runs in the child
    finally:
        lock.release()
    assert j._wlock is not lock and not j._wlock.locked()  # fresh locks, never inherited held
    assert not j.is_open and "closed" in repr(j)
    assert len(base.inherited) == before + 2  # the connections and the snapshot pool, kept, never used
    with pytest.raises(JournalError, match="journal is closed"):
        j.append("bug", "in the child", {}, Priority.MEDIUM, (), None)
    again = Journal(path)  # the file is intact for a journal the child opens itself
    again.open()
    try:
        assert again.find(op.id) is not None
    finally:
        again.close()


def test_a_snapshot_of_a_closed_journal_says_so_and_keeps_no_connection(tmp_path: Path) -> None:
    j = Journal(tmp_path / "b.journal")
    j.open()
    j.close()
    with pytest.raises(JournalError, match="journal is closed"):
        j.own_snapshot()
    assert j._snapshot_pool == []
