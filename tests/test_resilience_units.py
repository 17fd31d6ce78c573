"""Pure decisions: plan() (memwal/_consumer.py), backoff, circuit breaker, token bucket."""

from __future__ import annotations

import logging

import pytest

from memwal import BreakerState, CircuitBreaker, CircuitOpen, DeliveryReport, SinkRejected, SinkUnavailable
from memwal._core.config import CircuitBreakerConfig
from memwal._core.records import MemoryOperation
from memwal._delivery.plan import group_by_category, plan
from memwal._journal.journal import LeasedOp
from memwal._policy.retry import backoff_delay, next_attempt_at
from memwal._policy.throttle import TokenBucket
from memwal.testing import ManualClock


def leased(n: int, attempts: int = 0, category: str = "bug") -> list[LeasedOp]:
    return [LeasedOp(i, MemoryOperation(id=f"id{i}", category=category, content="c"), attempts) for i in range(n)]


def decide(group, outcome, max_retries=3, now=100.0, rng=lambda: 0.5):
    return plan(group, outcome, max_retries=max_retries, retry_delay=1.0, max_retry_delay=30.0, now=now, rng=rng)


class TestPlan:
    def test_none_acks_everything(self) -> None:
        s = decide(leased(3), None)
        assert s.acked == [0, 1, 2] and not (s.retry or s.dead or s.release or s.held)

    def test_transient_failure_retries_with_backoff(self) -> None:
        s = decide(leased(2, attempts=2), SinkUnavailable("503"))
        assert [(k, err) for k, err, _ in s.retry] == [(0, "SinkUnavailable: 503"), (1, "SinkUnavailable: 503")]
        assert all(when == 100.0 + 0.5 * 4.0 for _, _, when in s.retry)

    def test_retry_after_wins_when_longer(self) -> None:
        s = decide(leased(1), SinkUnavailable("429", retry_after=42.0))
        assert s.retry[0][2] == 142.0

    def test_dead_letter_after_max_retries_with_last_error(self) -> None:
        s = decide(leased(1, attempts=3), SinkUnavailable("still down"), max_retries=3)
        assert s.dead == [(0, "gave up after 4 attempts: SinkUnavailable: still down")]

    def test_rejected_is_dead_lettered_at_once(self) -> None:
        s = decide(leased(2), SinkRejected("422 bad"))
        assert s.dead == [(0, "rejected: 422 bad"), (1, "rejected: 422 bad")]

    def test_circuit_open_releases_without_using_an_attempt(self) -> None:
        s = decide(leased(2, attempts=3), CircuitOpen("open"))
        assert s.release == [0, 1] and not s.retry and not s.dead

    def test_unexpected_exceptions_are_transient(self) -> None:
        s = decide(leased(1), KeyError("surprise"))
        assert s.retry[0][1] == "KeyError: 'surprise'"

    def test_partial_report_settles_each_operation_on_its_own(self) -> None:
        group = leased(4)
        report = DeliveryReport(
            failed={"id1": SinkUnavailable("timeout"), "id2": SinkRejected("400")}, held={"id3": "SQLiteSink"}
        )
        s = decide(group, report)
        assert s.acked == [0]
        assert [k for k, _, _ in s.retry] == [1]
        assert s.dead == [(2, "rejected: 400")]
        assert s.held == [(3, "SQLiteSink")]

    def test_batches_are_grouped_by_category_and_bounded(self) -> None:
        items = [*leased(3, category="bug"), LeasedOp(9, MemoryOperation(id="q", category="qa", content="c"), 0)]
        groups = group_by_category(items, 2)
        assert [[g.key for g in grp] for grp in groups] == [[0, 1], [2], [9]]


class TestBackoff:
    def test_full_jitter_doubles_then_caps(self) -> None:
        top = [backoff_delay(a, 1.0, 10.0, rng=lambda: 1.0) for a in range(6)]
        assert top == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
        assert backoff_delay(3, 1.0, 10.0, rng=lambda: 0.0) == 0.0

    def test_huge_attempt_counts_do_not_overflow(self) -> None:
        assert backoff_delay(10_000, 1.0, 300.0, rng=lambda: 1.0) == 300.0

    def test_retry_after_longer_than_the_backoff_is_honoured(self) -> None:
        assert next_attempt_at(0.0, 0, 1.0, 10.0, retry_after=60.0, rng=lambda: 1.0) == 60.0
        assert next_attempt_at(0.0, 5, 1.0, 10.0, retry_after=0.5, rng=lambda: 1.0) == 10.0
        # a sink's non-finite retry_after would park the row forever: the backoff decides
        for bad in (float("inf"), float("nan")):
            assert next_attempt_at(0.0, 5, 1.0, 10.0, retry_after=bad, rng=lambda: 1.0) == 10.0


class TestBreaker:
    def make(self, clock: ManualClock, **kw) -> CircuitBreaker:
        cfg = CircuitBreakerConfig(**{"failure_threshold": 3, "recovery_timeout": 10.0, "test_requests": 2,
                                      "success_threshold": 2, **kw})
        return CircuitBreaker("mem0", cfg, clock=clock)

    def test_defaults_are_the_original_frameworks(self) -> None:
        cfg = CircuitBreakerConfig()
        assert (cfg.failure_threshold, cfg.recovery_timeout, cfg.test_requests, cfg.success_threshold) == (5, 60.0, 3, 2)

    def test_full_cycle(self, caplog: pytest.LogCaptureFixture) -> None:
        clock = ManualClock()
        changes: list[tuple[str, str]] = []
        b = self.make(clock)
        b.on_change = lambda name, old, new: changes.append((old.value, new.value))
        caplog.set_level(logging.INFO, "memwal")
        for _ in range(2):
            b.record_failure()
        assert b.allow() and b.state is BreakerState.CLOSED
        b.record_failure()
        assert b.state is BreakerState.OPEN and not b.allow()
        assert b.retry_in() == 10.0
        clock.advance(10.0)
        assert b.allow() and b.allow() and not b.allow()  # two probes in half-open
        b.record_success()
        assert b.state is BreakerState.HALF_OPEN
        b.record_success()
        assert b.state is BreakerState.CLOSED
        assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
        assert "circuit breaker mem0: closed -> open" in caplog.text
        assert b.statistics().opened == 1

    def test_a_failure_while_half_open_opens_again(self) -> None:
        clock = ManualClock()
        b = self.make(clock, failure_threshold=1)
        b.record_failure()
        clock.advance(10.0)
        assert b.allow()
        b.record_failure()
        assert b.state is BreakerState.OPEN and b.statistics().opened == 2

    def test_a_success_resets_the_consecutive_count(self) -> None:
        b = self.make(ManualClock())
        b.record_failure()
        b.record_failure()
        b.record_success()
        b.record_failure()
        b.record_failure()
        assert b.state is BreakerState.CLOSED

    def test_reset_forces_closed(self) -> None:
        b = self.make(ManualClock(), failure_threshold=1)
        b.record_failure()
        b.reset()
        assert b.state is BreakerState.CLOSED and b.allow()


class TestTokenBucket:
    def test_no_rate_means_no_wait(self) -> None:
        assert TokenBucket(None).delay(10**6) == 0.0

    def test_rate_limits_and_refills(self) -> None:
        clock = ManualClock(0.0)
        b = TokenBucket(100.0, clock=clock)
        assert b.delay(100) == 0.0
        assert b.delay(50) == pytest.approx(0.5)
        clock.advance(1.5)
        assert b.delay(50) == 0.0

    def test_rate_can_change_at_run_time(self) -> None:
        clock = ManualClock(0.0)
        b = TokenBucket(10.0, clock=clock)
        b.delay(10)
        b.set_rate(1000.0)
        clock.advance(0.1)
        assert b.delay(100) == 0.0


def test_when_to_lease_decides_without_a_loop() -> None:
    from memwal._delivery.plan import LeaseView, when_to_lease

    idle = LeaseView(fatal=False, inflight=0, max_inflight=4, urgent=False, batch_waits=False,
                     linger_left=0.0, breaker_wait=0.0, poll=0.05)
    assert when_to_lease(idle) == ("lease", 0.0)  # a lone row after a quiet spell leaves at once
    assert when_to_lease(idle._replace(fatal=True)) == ("nap", 0.05)
    assert when_to_lease(idle._replace(max_inflight=0)) == ("progress", 0.05)  # another process delivers
    assert when_to_lease(idle._replace(inflight=1)) == ("gather", 0.05)  # rows gather behind a batch
    assert when_to_lease(idle._replace(inflight=1, batch_waits=True)) == ("lease", 0.0)
    assert when_to_lease(idle._replace(inflight=1, urgent=True)) == ("lease", 0.0)  # a flush waits
    assert when_to_lease(idle._replace(linger_left=0.008)) == ("gather", 0.008)
    assert when_to_lease(idle._replace(linger_left=0.008, urgent=True)) == ("lease", 0.0)
    assert when_to_lease(idle._replace(breaker_wait=30.0)) == ("nap", 0.05)
    assert when_to_lease(idle._replace(breaker_wait=0.01)) == ("nap", 0.01)
