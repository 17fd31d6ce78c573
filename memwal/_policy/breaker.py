"""A circuit breaker per sink: synchronous, table-driven, with an injected clock.

    closed --failure_threshold consecutive failures--> open
    open --recovery_timeout elapsed--> half_open (lets test_requests calls through)
    half_open --success_threshold successes--> closed
    half_open --any failure--> open
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from .._core.config import CircuitBreakerConfig

__all__ = ["BreakerState", "BreakerStats", "CircuitBreaker", "breaker_for", "breakers_of", "retry_in"]

log = logging.getLogger("memwal")


class BreakerState(enum.StrEnum):
    """A circuit breaker's state: closed (calls go through), open (refused), half_open (one probe).

    Example:
        >>> memwal.CircuitBreaker("mem0").state
        <BreakerState.CLOSED: 'closed'>
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# (state, event) -> next state; events not listed keep the state.
TRANSITIONS: dict[tuple[BreakerState, str], BreakerState] = {
    (BreakerState.CLOSED, "trip"): BreakerState.OPEN,
    (BreakerState.OPEN, "cool_down"): BreakerState.HALF_OPEN,
    (BreakerState.HALF_OPEN, "failure"): BreakerState.OPEN,
    (BreakerState.HALF_OPEN, "recovered"): BreakerState.CLOSED,
    (BreakerState.OPEN, "reset"): BreakerState.CLOSED,
    (BreakerState.HALF_OPEN, "reset"): BreakerState.CLOSED,
}


class BreakerStats(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one breaker."""

    name: str
    state: BreakerState
    consecutive_failures: int
    calls: int
    failures: int
    opened: int
    retry_at: float | None


class CircuitBreaker:
    """Fail fast while a sink is down.

    Example:
        >>> b = CircuitBreaker("mem0", CircuitBreakerConfig(failure_threshold=1))
        >>> b.record_failure(); b.allow()
        False
    """

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self.config = config or CircuitBreakerConfig()
        self.clock = clock
        self.on_change = on_change
        self.state = BreakerState.CLOSED
        self._consecutive = 0
        self._successes = 0
        self._probes = 0
        self._opened_at = 0.0
        self.calls = 0
        self.failures = 0
        self.opened = 0

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name} {self.state.value} failures={self._consecutive}>"

    def _fire(self, event: str) -> None:
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            return
        old, self.state = self.state, new
        self._successes = self._probes = 0
        if new is BreakerState.OPEN:
            self._opened_at = self.clock()
            self.opened += 1
        if new is BreakerState.CLOSED:
            self._consecutive = 0
        level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
        log.log(level, "circuit breaker %s: %s -> %s", self.name, old.value, new.value)
        if self.on_change is not None:
            self.on_change(self.name, old, new)

    def allow(self) -> bool:
        """May a call go to the sink now? Counts half-open probes."""
        if self.state is BreakerState.OPEN and self.clock() - self._opened_at >= self.config.recovery_timeout:
            self._fire("cool_down")
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.HALF_OPEN and self._probes < self.config.test_requests:
            self._probes += 1
            return True
        return False

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.config.recovery_timeout - self.clock())

    def record_success(self) -> None:
        self.calls += 1
        self._consecutive = 0
        if self.state is BreakerState.HALF_OPEN:
            self._successes += 1
            if self._successes >= self.config.success_threshold:
                self._fire("recovered")

    def record_failure(self) -> None:
        self.calls += 1
        self.failures += 1
        self._consecutive += 1
        if self.state is BreakerState.HALF_OPEN:
            self._fire("failure")
        elif self._consecutive >= self.config.failure_threshold:
            self._fire("trip")

    def reset(self) -> None:
        """Force the breaker closed."""
        self._fire("reset")
        self._consecutive = 0

    def statistics(self) -> BreakerStats:
        return BreakerStats(
            name=self.name,
            state=self.state,
            consecutive_failures=self._consecutive,
            calls=self.calls,
            failures=self.failures,
            opened=self.opened,
            retry_at=self._opened_at + self.config.recovery_timeout if self.state is BreakerState.OPEN else None,
        )


# -- who owns which breaker (the one rule for the consumer, replay, health and reset) --------


class _BreakerOwner(Protocol):
    @property
    def name(self) -> str: ...

    manages_breakers: bool

    def breakers(self) -> Sequence[CircuitBreaker]: ...


def breaker_for(
    sink: _BreakerOwner,
    config: CircuitBreakerConfig,
    *,
    clock: Callable[[], float] = time.monotonic,
    on_change: Callable[[str, BreakerState, BreakerState], None] | None = None,
) -> CircuitBreaker | None:
    """The breaker a caller keeps in front of ``sink``: None when the sink keeps its own (FallbackSink)."""
    if sink.manages_breakers:
        return None
    return CircuitBreaker(sink.name, config, clock=clock, on_change=on_change)


def breakers_of(own: CircuitBreaker | None, sink: _BreakerOwner) -> list[CircuitBreaker]:
    """Every breaker guarding deliveries to ``sink``: the caller's own, else the sink's."""
    return [own] if own is not None else list(sink.breakers())


def retry_in(breakers: Sequence[CircuitBreaker]) -> float:
    """Seconds until one of ``breakers`` lets a call through (0 when one would now, or none exist)."""
    return min((b.retry_in() for b in breakers), default=0.0)
