"""Call a sink once and classify what happened: the one place a sink's answer becomes an outcome.

The consumer, the reconciler, ``FallbackSink`` and memwal-replay all go through
``call_sink``: a timeout around the call, every answer mapped to an ``Outcome`` (None,
a DeliveryReport, or the exception to plan with), the breaker told once, by one rule.
Nothing a sink does (a wrong return type, KeyError, a BaseException subclass, a
CancelledError it raised itself) escapes from here; only memwal's own cancellation,
KeyboardInterrupt and SystemExit go on.

Poison isolation (AWS Lambda's BisectBatchOnFunctionError) lives here too: a batch
that fails as a whole for a reason that may be one operation's fault is split in
halves until the failing operations stand alone. ``should_bisect`` and ``halves`` are
plain functions; ``deliver_isolating`` does the calls.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from .._core.errors import CircuitOpen, SinkError, SinkRejected, SinkUnavailable
from .base import DeliveryReport, Sink

if TYPE_CHECKING:
    from .._core.records import MemoryOperation
    from .._policy.breaker import CircuitBreaker

__all__ = [
    "Outcome",
    "SinkFault",
    "call_sink",
    "deliver_isolating",
    "halves",
    "is_unexpected",
    "own_cancellation",
    "record",
    "require_async_deliver",
    "should_bisect",
]

log = logging.getLogger("memwal")

Outcome = DeliveryReport | BaseException | None
T = TypeVar("T")

# Never swallowed: the user's Ctrl-C and an explicit exit belong to the process.
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


class SinkFault(SinkUnavailable):
    """A sink broke its contract (wrong return type, a BaseException, its own CancelledError).

    Transient like any unexpected error: retried with backoff up to ``max_retries``.
    """


def require_async_deliver(sink: Sink) -> None:
    """Raise TypeError unless ``sink.deliver`` is a coroutine function (checked before anything is sent).

    A plain ``def deliver`` would store the batch, then fail on ``await None``, so every
    retry would store it again and the operations would end dead-lettered although stored.
    """
    deliver = getattr(sink, "deliver", None)
    if not inspect.iscoroutinefunction(deliver):
        raise TypeError(
            f"{type(sink).__name__}.deliver must be an async function (async def deliver(self, ops)),"
            f" got {deliver!r}"
        )


def own_cancellation() -> bool:
    """Is the current task being cancelled by a cancel scope (memwal's own or its caller's)?"""
    return anyio.current_effective_deadline() == -math.inf


def _check_result(result: object, name: str) -> Outcome:
    if result is None or isinstance(result, DeliveryReport):
        return result
    return SinkFault(f"{name}.deliver returned {type(result).__name__}, expected a DeliveryReport or None")


def is_unexpected(outcome: Outcome) -> bool:
    """An exception that is no SinkError (a bug, a contract breach): logged with its traceback."""
    return isinstance(outcome, BaseException) and (
        not isinstance(outcome, SinkError) or isinstance(outcome, SinkFault)
    )


def record(breaker: CircuitBreaker | None, outcome: Outcome, n: int) -> None:
    """Tell ``breaker`` how a call of ``n`` operations went: the one breaker rule.

    A rejection is an answer (the operations are at fault, the sink is up); a refusal
    by an open breaker (or operations a sink hands back unsent) was no call. Every other
    exception, or a report that failed every operation it sent transiently, is a failure.
    """
    if breaker is None or isinstance(outcome, CircuitOpen):
        return
    if isinstance(outcome, SinkRejected):
        breaker.record_success()
        return
    if isinstance(outcome, DeliveryReport):
        # Operations a sink handed back unsent (CircuitOpen in the report) were no call either.
        errors = [e for e in outcome.failed.values() if not isinstance(e, CircuitOpen)]
        tried = n - (len(outcome.failed) - len(errors))
        if tried <= 0:
            return
        every = len(errors) >= tried and not any(isinstance(e, SinkRejected) for e in errors)
    else:
        every = outcome is not None
    (breaker.record_failure if every else breaker.record_success)()


async def call_sink(
    deliver: Callable[[Sequence[MemoryOperation]], Awaitable[Any]],
    ops: Sequence[MemoryOperation],
    *,
    name: str,
    timeout: float | None,
    breaker: CircuitBreaker | None = None,
) -> Outcome:
    """Call ``deliver(ops)`` within ``timeout`` behind ``breaker``; never raises what the sink did.

    Returns None (all stored), a DeliveryReport, or the exception to plan with:
    CircuitOpen when the breaker refused, SinkUnavailable on timeout, SinkFault for a
    wrong return type or a non-Exception the sink raised, else what the sink raised.

    Example:
        >>> outcome = await call_sink(sink.deliver, ops, name=sink.name, timeout=30.0)
    """
    if breaker is not None and not breaker.allow():
        return CircuitOpen(f"{breaker.name} circuit breaker is open", retry_after=breaker.retry_in())
    outcome: Outcome
    try:
        with anyio.fail_after(timeout):
            outcome = _check_result(await deliver(ops), name)
    except TimeoutError:
        outcome = SinkUnavailable(f"{name} timed out after {timeout:g}s; outcome unknown")
    except anyio.get_cancelled_exc_class() as exc:
        if own_cancellation():
            raise
        outcome = SinkFault(f"{name} raised {type(exc).__name__} without being cancelled")
    except _PASS_THROUGH:
        raise
    except Exception as exc:  # noqa: BLE001  (every sink error is an outcome for plan())
        outcome = exc
    except BaseException as exc:  # noqa: BLE001  (a sink's BaseException subclass is its bug, not ours)
        outcome = SinkFault(f"{name} raised {type(exc).__name__}: {exc}")
        outcome.__cause__ = exc
    record(breaker, outcome, len(ops))
    return outcome


# -- poison isolation ------------------------------------------------------------


def should_bisect(outcome: Outcome, size: int) -> bool:
    """Split a batch of ``size`` after this outcome? (no I/O)

    Yes when it failed as a whole for a reason that may be one operation's fault: a
    rejection of the whole batch, or an exception that is no SinkUnavailable (a bug,
    a contract breach). A transient outage, a timeout or an open breaker says nothing
    about the operations; a DeliveryReport already names each failure.
    """
    if size < 2 or not isinstance(outcome, BaseException):
        return False
    return isinstance(outcome, SinkRejected) or is_unexpected(outcome)


def halves(items: Sequence[T]) -> tuple[list[T], list[T]]:
    """The first and second half of ``items`` (the first is the shorter on odd sizes)."""
    mid = len(items) // 2
    return list(items[:mid]), list(items[mid:])


async def deliver_isolating(
    call: Callable[[list[T]], Awaitable[Outcome]],
    items: list[T],
    *,
    time_left: Callable[[], float] = lambda: math.inf,
) -> list[tuple[list[T], Outcome]]:
    """Deliver ``items`` through ``call``, bisecting failed batches; each part with its outcome.

    A batch that fails as a whole is searched in halves for one failing operation: a
    half that fails is searched further, the other is set aside; a half that succeeds
    points to the other. The halves set aside are then delivered together, in one call
    (searched again if that fails too). One bad operation in n costs ceil(log2(n)) + 1
    extra calls. The parts cover ``items`` exactly once, not in order. Once
    ``time_left()`` (the lease) runs out, parts not yet tried come back as
    SinkUnavailable: retried later, their lease is not overrun.
    """
    out: list[tuple[list[T], Outcome]] = []
    todo = list(items)
    while todo:
        if out and time_left() <= 0:
            out.append((todo, _not_tried()))
            break
        outcome = await call(todo)
        if not should_bisect(outcome, len(todo)):
            out.append((todo, outcome))
            break
        part, aside = todo, []
        while part:
            if len(part) == 1:  # known to fail: it is the isolated operation
                out.append((part, outcome))
                break
            if time_left() <= 0:
                out.append((part, _not_tried()))
                break
            first, second = halves(part)
            o = await call(first)
            if should_bisect(o, len(first)):
                part, outcome = first, o
                aside += second
            elif _failed(o):  # first holds a failure it reports or cannot split: second is unknown
                out.append((first, o))
                aside += second
                break
            else:  # the whole failed and its first half did not: the second half holds the fault
                out.append((first, o))
                part = second
        todo = aside
    return out


def _failed(outcome: Outcome) -> bool:
    return outcome is not None and (isinstance(outcome, BaseException) or bool(outcome.failed))


def _not_tried() -> SinkUnavailable:
    return SinkUnavailable("not tried: the lease ran out while isolating a failing operation")
