"""Public test doubles: sinks that record or fail on cue, and a manual clock.

Example:
    >>> sink = FlakySink(fail_next=3)          # the next 3 deliver() calls fail
    >>> async with AsyncMemoryCollector("t.journal", sink) as c: ...
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from ._core.errors import SinkRejected, SinkUnavailable
from ._core.records import Memory, MemoryOperation
from ._sinks.base import DeliveryReport, Sink

if TYPE_CHECKING:
    from ._testing.fake_mem0 import FakeMem0

__all__ = ["FakeMem0", "FlakySink", "ManualClock", "MemorySink"]


class ManualClock:
    """A clock that moves only when told to: pass it wherever memwal takes ``clock``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemorySink(Sink):
    """Keeps delivered operations in a dict; idempotent on the id; counts deliveries."""

    def __init__(self) -> None:
        self.memories: dict[str, MemoryOperation] = {}
        self.deliveries: Counter[str] = Counter()  # id -> times delivered (redeliveries too)
        self.calls = 0
        self.batches: list[list[str]] = []

    async def deliver(self, ops: Sequence[MemoryOperation]) -> DeliveryReport | None:
        self.calls += 1
        self.batches.append([op.id for op in ops])
        for op in ops:
            self.deliveries[op.id] += 1
            self.memories.setdefault(op.id, op)
        return None

    async def get(self, op_id: str) -> Memory | None:
        op = self.memories.get(op_id)
        return None if op is None else Memory(**{f: getattr(op, f) for f in op.__struct_fields__})

    async def recent(self, category: str | None = None, *, limit: int = 20) -> list[Memory]:
        ops = [o for o in self.memories.values() if category is None or o.category == category]
        ops.sort(key=lambda o: o.created_at, reverse=True)
        return [Memory(**{f: getattr(o, f) for f in o.__struct_fields__}) for o in ops[:limit]]

    async def search(self, query: str, *, category: str | None = None, tags: Sequence[str] | None = None,
                     project: str | None = None, limit: int = 10) -> list[Memory]:
        words = query.lower().split()
        hits = [
            o for o in self.memories.values()
            if all(w in o.content.lower() for w in words)
            and (category is None or o.category == category)
            and (project is None or o.project == project)
            and all(t in o.tags for t in tags or ())
        ]
        return [Memory(**{f: getattr(o, f) for f in o.__struct_fields__}) for o in hits[:limit]]


class FlakySink(MemorySink):
    """A MemorySink that fails on cue.

    - ``fail_next``: the next N calls raise (SinkUnavailable, or SinkRejected if ``permanent``)
    - ``fail_ids``: these ids fail in every call's report (transient unless ``permanent``)
    - ``hang``: calls block until cancelled (for timeouts and cancellation tests)
    - ``write_then_fail``: store the batch, then raise SinkUnavailable (ambiguous outcome)
    - ``retry_after``: attached to transient failures
    """

    def __init__(
        self,
        *,
        fail_next: int = 0,
        fail_ids: Iterable[str] = (),
        permanent: bool = False,
        hang: bool = False,
        write_then_fail: int = 0,
        retry_after: float | None = None,
    ) -> None:
        super().__init__()
        self.fail_next = fail_next
        self.fail_ids = set(fail_ids)
        self.permanent = permanent
        self.hang = hang
        self.write_then_fail = write_then_fail
        self.retry_after = retry_after
        self.failures = 0

    def _error(self, what: str) -> SinkUnavailable | SinkRejected:
        if self.permanent:
            return SinkRejected(f"flaky sink rejects {what}")
        return SinkUnavailable(f"flaky sink unavailable for {what}", retry_after=self.retry_after)

    async def deliver(self, ops: Sequence[MemoryOperation]) -> DeliveryReport | None:
        if self.hang:
            await anyio.sleep_forever()
        if self.fail_next > 0:
            self.fail_next -= 1
            self.failures += 1
            raise self._error("this call")
        if self.write_then_fail > 0:
            self.write_then_fail -= 1
            await super().deliver(ops)
            self.failures += 1
            raise SinkUnavailable("flaky sink stored the batch, then the connection dropped")
        good = [op for op in ops if op.id not in self.fail_ids]
        await super().deliver(good)
        failed = {op.id: self._error(op.id) for op in ops if op.id in self.fail_ids}
        return DeliveryReport(failed=failed) if failed else None


def __getattr__(name: str) -> Any:
    # FakeMem0 is an aiohttp server: import it (and aiohttp) only when it is used.
    if name == "FakeMem0":
        from ._testing.fake_mem0 import FakeMem0

        globals()["FakeMem0"] = FakeMem0
        return FakeMem0
    raise AttributeError(f"module 'memwal.testing' has no attribute {name!r}")
