"""MemoryCollector, the thread-safe facade: what it adds over AsyncMemoryCollector works as named."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from helpers import fast_config

import memwal
from memwal.testing import FlakySink, MemorySink


def test_a_collector_that_cannot_open_leaves_no_thread_behind(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "agent.journal"
    with pytest.raises(memwal.JournalError, match="the directory does not exist"):
        memwal.MemoryCollector(path, MemorySink())
    # its loop thread is named after the journal (other tests' threads may come and go)
    assert [t.name for t in threading.enumerate() if str(path) in t.name] == []


def test_the_original_helpers_collect_their_category(journal_path: Path) -> None:
    sink = MemorySink()
    with memwal.MemoryCollector(journal_path, sink, config=fast_config()) as c:
        assert repr(c).startswith("<MemoryCollector ")
        ids = {
            "bug": c.collect_bug("b"),
            "error": c.collect_error("e"),
            "feedback": c.collect_feedback("f", {"who": "u"}),
            "performance": c.collect_performance("p", priority="low"),
            "architecture": c.collect_architecture("a", tags=["x"]),
            "operation": c.collect_operation("o", project="demo"),
        }
        c.flush(timeout=30)
    assert {cat: sink.memories[i].category for cat, i in ids.items()} == {cat: cat for cat in ids}
    assert sink.memories[ids["performance"]].priority == memwal.Priority.LOW
    assert sink.memories[ids["operation"]].project == "demo"


def test_a_full_journal_rejects_or_blocks_the_calling_thread_only(journal_path: Path) -> None:
    sink = FlakySink(hang=True)
    config = fast_config(async_collection={"max_queue_size": 2, "on_full": "reject"},
                         journal={"shutdown_timeout": 0.1})
    with memwal.MemoryCollector(journal_path, sink, config=config) as c:
        c.collect("qa", "a")
        c.collect("qa", "b")
        with pytest.raises(memwal.QueueFull, match="limit is 2"):
            c.collect("qa", "no room")
    blocking = fast_config(async_collection={"max_queue_size": 2, "on_full": "block", "collect_timeout": 30})
    store = MemorySink()
    with memwal.MemoryCollector(journal_path, store, config=blocking) as c:
        # the two rows left above are delivered first, then there is room for the third
        op_id = c.collect("qa", "waits for room")
        c.flush(timeout=30)
    assert op_id in store.memories and len(store.memories) == 3


def test_alert_callbacks_can_be_removed_and_unknown_ones_are_refused(journal_path: Path) -> None:
    def on_alert(alert: object) -> None:
        raise AssertionError("never called: no transition happens here")

    with memwal.MemoryCollector(journal_path, MemorySink(), config=fast_config()) as c:
        c.add_alert_callback(on_alert)
        c.remove_alert_callback(on_alert)
        with pytest.raises(ValueError):
            c.remove_alert_callback(on_alert)


def test_reset_circuit_breaker_lets_delivery_resume_at_once(journal_path: Path) -> None:
    sink = FlakySink(fail_next=10**6)
    config = fast_config(circuit_breaker={"failure_threshold": 2, "recovery_timeout": 3600},
                         async_collection={"max_retries": 50}, journal={"shutdown_timeout": 0.1})
    with memwal.MemoryCollector(journal_path, sink, config=config) as c:
        op_id = c.collect("bug", "x")
        deadline = time.monotonic() + 30
        while c.stats().breaker_transitions.get("FlakySink:open", 0) == 0:
            assert time.monotonic() < deadline, "the breaker never opened"
            time.sleep(0.01)
        sink.fail_next = 0
        c.reset_circuit_breaker()
        c.flush(timeout=30)
        assert op_id in sink.memories
    c.close()  # closing again is a no-op
