"""Prometheus text exposition (format 0.0.4): metric families rendered to text.

No I/O: ``families`` maps a Health snapshot to MetricFamily values and ``render``
escapes label values and HELP text as the format requires. ``metrics_text`` is the
one call users make.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec

if TYPE_CHECKING:
    from .health import Health, Histogram

__all__ = ["MetricFamily", "Sample", "SupportsHealth", "families", "journal_families", "metrics_text", "render"]


class SupportsHealth(Protocol):
    """Anything with ``health()``: AsyncMemoryCollector and MemoryCollector."""

    def health(self) -> Health: ...

_STATUSES = ("ok", "degraded", "failing")


class Sample(msgspec.Struct, frozen=True):
    """One line: ``suffix`` is appended to the family name (``_bucket``, ``_sum`` ...)."""

    value: float
    labels: Mapping[str, str] = {}
    suffix: str = ""


class MetricFamily(msgspec.Struct, frozen=True):
    name: str
    type: Literal["counter", "gauge", "histogram", "summary", "untyped"]
    help: str
    samples: Sequence[Sample] = ()


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items()) + "}"


def render(families: Iterable[MetricFamily]) -> str:
    """The exposition text for ``families``, one HELP and TYPE line each."""
    lines: list[str] = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        lines.extend(f"{fam.name}{s.suffix}{_labels(s.labels)} {_number(s.value)}" for s in fam.samples)
    return "\n".join(lines) + "\n"


# -- metrics ---------------------------------------------------------------------


def _counter(name: str, help: str, value: float, **labels: str) -> MetricFamily:
    return MetricFamily(f"memwal_{name}_total", "counter", help, [Sample(value, labels)])


def _gauge(name: str, help: str, samples: Sequence[Sample]) -> MetricFamily:
    return MetricFamily(f"memwal_{name}", "gauge", help, list(samples))


def _hist(name: str, help: str, h: Histogram) -> MetricFamily:
    samples = [Sample(n, {"le": _le(le)}, "_bucket") for le, n in h.buckets]
    samples += [Sample(h.sum, suffix="_sum"), Sample(h.count, suffix="_count")]
    return MetricFamily(f"memwal_{name}", "histogram", help, samples)


def _le(v: float) -> str:
    return "+Inf" if v == float("inf") else repr(v)


def families(h: Health) -> list[MetricFamily]:
    """The Prometheus metric families of a Health snapshot."""
    fams = [
        _gauge("health_status", "1 for the collector's current status.",
               [Sample(float(h.status == s), {"status": s}) for s in _STATUSES]),
        _counter("collected", "Operations collected by this process.", h.collected),
        _counter("delivered", "Operations delivered (acknowledged) by this process.", h.delivered),
        _counter("retried", "Delivery attempts scheduled for retry.", h.retried),
        _counter("dead_letters", "Operations dead-lettered by this process.", h.dead),
        MetricFamily("memwal_dropped_total", "counter", "Operations dropped, by reason.",
                     [Sample(n, {"reason": r}) for r, n in sorted(h.drops_by_reason.items())]),
        _counter("batches", "Batches settled.", h.batches),
        *journal_families(h.depth, h.depth_by_priority, h.oldest_pending_age, h.journal_bytes, h.wal_bytes),
        _gauge("queue_capacity", "max_queue_size: the journal's limit on undelivered operations.",
               [Sample(h.max_queue_size)]),
        _gauge("batch_size", "The batch size the consumer uses now.", [Sample(h.batch_size)]),
        _gauge("sink_breaker_state", "1 for each sink breaker's current state.",
               [Sample(float(s.state == st), {"sink": s.name, "state": st})
                for s in h.sinks for st in ("closed", "open", "half_open")]),
        _gauge("sink_error_rate", "Failed share of sink calls over the health window.",
               [Sample(s.error_rate, {"sink": s.name}) for s in h.sinks]),
        MetricFamily("memwal_sink_calls_total", "counter", "Sink calls through each breaker.",
                     [Sample(s.calls, {"sink": s.name}) for s in h.sinks]),
        MetricFamily("memwal_sink_failures_total", "counter", "Failed sink calls through each breaker.",
                     [Sample(s.failures, {"sink": s.name}) for s in h.sinks]),
        MetricFamily("memwal_faults_total", "counter",
                     "Faults kept inside the collector (logged, retried), by where and exception type.",
                     [Sample(n, dict(zip(("where", "type"), k.split(":", 1), strict=True)))
                      for k, n in sorted(h.faults.items())]),
        _counter("bisections", "Failed batches split in halves to isolate the operations at fault.",
                 h.bisections),
        _gauge("journal_gauges_age_seconds", "Age of the journal gauges (read off the event loop).",
               [Sample(h.journal_age)]),
        _gauge("sink_concurrency_limit", "A remote sink's adaptive limit on requests in flight.",
               [Sample(c["limit"], {"sink": n}) for n, c in sorted(h.sink_concurrency.items())]),
        _gauge("sink_requests_in_flight", "A remote sink's requests in flight now.",
               [Sample(c["in_flight"], {"sink": n}) for n, c in sorted(h.sink_concurrency.items())]),
    ]
    if h.cache_hit_rate is not None:
        fams.append(_gauge("cache_hit_ratio", "Read cache hits per lookup.", [Sample(h.cache_hit_rate)]))
    if h.memory_bytes is not None:
        fams.append(_gauge("process_resident_memory_bytes", "Resident memory of this process.",
                           [Sample(h.memory_bytes)]))
    if h.collect_histogram is not None:
        fams.append(_hist("collect_latency_seconds", "Time collect() took, journal commit included.",
                          h.collect_histogram))
    if h.delivery_histogram is not None:
        fams.append(_hist("delivery_latency_seconds", "Time from collect to acknowledged delivery.",
                          h.delivery_histogram))
    return fams


def journal_families(
    depth: dict[str, int],
    by_priority: dict[str, int],
    oldest_age: float | None,
    journal_bytes: int,
    wal_bytes: int,
) -> list[MetricFamily]:
    """The journal's own gauges (also what ``memwal-replay status --prometheus`` can print)."""
    fams = [
        _gauge("journal_operations", "Journal rows by state (every process sharing the journal).",
               [Sample(n, {"state": s}) for s, n in depth.items()]),
        _gauge("journal_undelivered", "Undelivered operations by priority.",
               [Sample(n, {"priority": p}) for p, n in by_priority.items()]),
        _gauge("journal_file_bytes", "Size of the journal file and its WAL.",
               [Sample(journal_bytes, {"file": "journal"}), Sample(wal_bytes, {"file": "wal"})]),
    ]
    if oldest_age is not None:
        fams.append(_gauge("oldest_pending_age_seconds", "Age of the oldest undelivered operation.",
                           [Sample(oldest_age)]))
    return fams


def metrics_text(collector: SupportsHealth) -> str:
    """The collector's ``health()`` in the Prometheus text exposition format (0.0.4).

    Example:
        >>> print(memwal.metrics_text(collector))   # serve it on /metrics
        # HELP memwal_collected_total Operations collected by this process.
        # TYPE memwal_collected_total counter
        memwal_collected_total 42
    """
    return render(families(collector.health()))
