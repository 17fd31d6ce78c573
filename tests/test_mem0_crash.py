"""SIGKILL of a collecting process while mem0 is slow, then a restart: nothing lost, nothing duplicated."""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest

from memwal import AsyncMemoryCollector, Mem0Sink, load_config
from memwal.testing import FakeMem0

pytestmark = pytest.mark.anyio
CHILD = Path(__file__).with_name("mem0_child.py")
ROUNDS = 5 if os.environ.get("MEMWAL_LONG") == "1" else 1


async def crash_once(journal: Path, fake: FakeMem0, count: int) -> list[str]:
    """Run the child until it has printed ``count // 2`` ids and adds are in flight; SIGKILL it."""
    printed: list[str] = []
    base = len(fake.memories) - fake.requests["POST /memories"]  # other users' memories (fill)
    async with await anyio.open_process([sys.executable, str(CHILD), str(journal), fake.url, str(count)]) as proc:
        assert proc.stdout is not None
        buf = b""
        with anyio.fail_after(60):
            async for chunk in proc.stdout:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                printed += [ln.decode() for ln in lines if ln and ln != b"DONE"]
                stored = len(fake.memories) - base
                adds_in_flight = fake.requests["POST /memories"] - stored
                if len(printed) >= count // 2 and adds_in_flight > 0 and stored:
                    proc.send_signal(signal.SIGKILL)
                    break
            async for chunk in proc.stdout:  # ids already in the pipe were printed before death
                buf += chunk
            printed += [ln.decode() for ln in buf.split(b"\n") if ln and ln != b"DONE"]
        assert await proc.wait() == -signal.SIGKILL
    return printed


async def test_sigkill_while_mem0_is_slow_then_restart(tmp_path: Path) -> None:
    # Latency applies to every request, so an add the killed process sent is handled
    # before the restarted process's lookup (the precondition Mem0Sink documents). The
    # table of other users' memories makes /search approximate, as on a real server.
    async with FakeMem0(api="oss", latency=0.2) as fake:
        fake.fill(1500)
        printed: list[str] = []
        for round_ in range(ROUNDS):
            journal = tmp_path / f"crash{round_}.journal"
            printed += await crash_once(journal, fake, 300)
            in_mem0_at_kill = len(fake.memories) - 1500
            config = load_config({"journal": {"poll_interval": 0.01}})
            # settle: the fake handles every request within its 0.2 s latency
            sink = Mem0Sink(fake.url, user_id="crash", ledger=f"{journal}.mem0-ledger", settle=1)
            async with AsyncMemoryCollector(journal, sink, config=config) as c:
                await c.flush_queue(timeout=60)
                assert c.journal.counts().dead == 0
            assert sink.counts["found"] > 0  # adds in flight at the kill landed and were not sent again
            assert sink.counts["lookups"] > 0 and sink.counts["lookups"] <= 10  # only the ones in flight
            counts = Counter({k: n for k, n in fake.count_by().items() if not str(k).startswith("fill-")})
            assert 0 < in_mem0_at_kill < len(counts)  # the kill landed mid-delivery
            assert [i for i in printed if counts[i] != 1] == []  # nothing lost
            assert {i: n for i, n in counts.items() if n != 1} == {}  # nothing duplicated
