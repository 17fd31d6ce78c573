"""FallbackSink: try sinks in order, each behind its own circuit breaker.

Operations stored by a fallback are reported as ``held``; the consumer moves them to
the journal's ``held`` table in the same transaction as the ack, and its reconciler
sends them to the primary (``reconcile``) once the primary's breaker lets calls through.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from .._core.config import CircuitBreakerConfig, Config
from .._core.errors import CircuitOpen, SinkRejected, SinkUnavailable
from .._core.records import Memory, MemoryOperation
from .._policy.breaker import CircuitBreaker
from .base import DeliveryReport, Sink
from .call import Outcome, call_sink, is_unexpected, require_async_deliver

__all__ = ["FallbackSink"]

log = logging.getLogger("memwal")


class FallbackSink(Sink):
    """A sink that is a chain of sinks: the primary first, then each fallback.

    Example:
        >>> sink = FallbackSink(Mem0Sink("http://127.0.0.1:8888", user_id="agent"),
        ...                     SQLiteSink("memories.db"))
    """

    manages_breakers = True
    reconciles = True

    def __init__(self, primary: Sink, *fallbacks: Sink) -> None:
        if not fallbacks:
            raise ValueError("FallbackSink needs at least one fallback sink")
        for sink in (primary, *fallbacks):
            require_async_deliver(sink)
        self.sinks: tuple[Sink, ...] = (primary, *fallbacks)
        self._timeout: float | None = None
        self._touched: set[int] = set()  # sinks that stored something since their last sync
        self._make_breakers(CircuitBreakerConfig(), time.monotonic, None)

    def _make_breakers(self, config: CircuitBreakerConfig, clock: Any, on_change: Any) -> None:
        names = [s.name for s in self.sinks]
        labels = [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]
        self._breakers = tuple(CircuitBreaker(lbl, config, clock=clock, on_change=on_change) for lbl in labels)

    def __repr__(self) -> str:
        return f"<FallbackSink {' -> '.join(b.name for b in self._breakers)}>"

    @property
    def name(self) -> str:
        return "FallbackSink(" + ", ".join(s.name for s in self.sinks) + ")"

    @property
    def primary(self) -> Sink:
        return self.sinks[0]

    def bind_journal(self, journal: str | os.PathLike[str]) -> None:
        for sink in self.sinks:
            sink.bind_journal(journal)

    def bind(self, config: Config, clock: Any, on_change: Any = None) -> None:
        self._make_breakers(config.circuit_breaker, clock, on_change)
        self._timeout = config.performance.operation_timeout
        for sink in self.sinks:
            sink.bind(config, clock)

    def breakers(self) -> Sequence[CircuitBreaker]:
        return self._breakers

    async def _call(self, i: int, ops: Sequence[MemoryOperation]) -> Outcome:
        sink = self.sinks[i]
        outcome = await call_sink(sink.deliver, ops, name=self._breakers[i].name, timeout=self._timeout,
                                  breaker=self._breakers[i])
        if not isinstance(outcome, BaseException):
            self._touched.add(i)  # it stored something: sync() must cover it
        return outcome

    async def sync(self) -> None:
        """Sync each sink that stored something since its last sync (a sink that is
        down and took nothing is not asked)."""
        touched, self._touched = self._touched, set()
        for i in sorted(touched):
            try:
                await self.sinks[i].sync()
            except BaseException:
                self._touched |= {j for j in touched if j >= i}
                raise

    async def deliver(self, ops: Sequence[MemoryOperation]) -> DeliveryReport:
        remaining = list(ops)
        failed: dict[str, SinkUnavailable | SinkRejected] = {}
        held: dict[str, str] = {}
        last: SinkUnavailable | None = None
        tried = False
        for i, breaker in enumerate(self._breakers):
            if not remaining:
                break
            outcome = await self._call(i, remaining)
            if isinstance(outcome, CircuitOpen):
                continue  # the breaker refused: no call was made
            tried = True
            if isinstance(outcome, SinkRejected):  # the sink answered; the operations are at fault
                failed.update((op.id, outcome) for op in remaining)
                return DeliveryReport(failed=failed, held=held)
            if isinstance(outcome, BaseException):
                last = outcome if isinstance(outcome, SinkUnavailable) else SinkUnavailable(
                    f"{breaker.name}: {outcome!r}")
                if is_unexpected(outcome):
                    log.warning("unexpected error from %s: %r", breaker.name, outcome, exc_info=outcome)
                continue
            remaining, last = self._sort(i, remaining, outcome, failed, held, last)
        if remaining and not tried:
            wait = min(b.retry_in() for b in self._breakers)
            raise CircuitOpen(f"every sink's circuit breaker is open ({self})", retry_after=wait)
        for op in remaining:
            failed[op.id] = last or CircuitOpen("no sink in the chain could take it")
        return DeliveryReport(failed=failed, held=held)

    def _sort(
        self, i: int, remaining: list[MemoryOperation], report: DeliveryReport | None,
        failed: dict[str, SinkUnavailable | SinkRejected], held: dict[str, str], last: SinkUnavailable | None,
    ) -> tuple[list[MemoryOperation], SinkUnavailable | None]:
        """Record what sink ``i`` stored or rejected; return the operations still to place."""
        errors = report.failed if report else {}
        name = self._breakers[i].name
        still: list[MemoryOperation] = []
        for op in remaining:
            err = errors.get(op.id)
            if err is None:
                if i > 0:
                    held[op.id] = name
                    log.info("operation %s delivered to fallback %s", op.id, name)
            elif isinstance(err, SinkRejected):
                failed[op.id] = err
            else:
                still.append(op)
                last = err
        return still, last

    async def reconcile(self, ops: Sequence[MemoryOperation]) -> DeliveryReport | None:
        """Deliver held operations to the primary only, behind its breaker."""
        outcome = await self._call(0, ops)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _readable(self) -> Sink:
        for sink, breaker in zip(self.sinks, self._breakers, strict=True):
            if breaker.state.value == "closed":
                return sink
        return self.sinks[-1]

    async def get(self, op_id: str) -> Memory | None:
        return await self._readable().get(op_id)

    async def search(self, query: str, **kw: Any) -> list[Memory]:
        return await self._readable().search(query, **kw)

    async def recent(self, category: str | None = None, *, limit: int = 20) -> list[Memory]:
        return await self._readable().recent(category, limit=limit)

    async def aclose(self) -> None:
        for sink in self.sinks:
            await sink.aclose()
