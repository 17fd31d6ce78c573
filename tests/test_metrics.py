"""metrics_text(): Prometheus text format 0.0.4, read back by a strict parser."""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memwal
from memwal import AsyncMemoryCollector, MemoryCollector
from memwal._core.records import MemoryOperation
from memwal._observe.metrics import MetricFamily, Sample, render
from memwal._observe.stats import COLLECT_BOUNDS_US, HistogramWindow
from memwal._sinks.base import DeliveryReport
from memwal.testing import MemorySink

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


@dataclass
class Family:
    name: str
    help: str
    type: str = ""
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _unescape(text: str, allowed: str) -> str:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            nxt = text[i + 1]
            assert nxt in allowed, f"bad escape \\{nxt} in {text!r}"
            out.append({"n": "\n", "\\": "\\", '"': '"'}[nxt])
            i += 2
        else:
            assert ch != "\n"
            out.append(ch)
            i += 1
    return "".join(out)


def _labels(text: str, i: int) -> tuple[dict[str, str], int]:
    labels: dict[str, str] = {}
    assert text[i] == "{"
    i += 1
    while text[i] != "}":
        m = _LABEL.match(text, i)
        assert m, f"bad label name at {text[i:]!r}"
        assert text[m.end() : m.end() + 2] == '="', text
        j = m.end() + 2
        raw = []
        while text[j] != '"':
            raw.append(text[j : j + 2] if text[j] == "\\" else text[j])
            j += 2 if text[j] == "\\" else 1
        assert m.group() not in labels, f"duplicate label in {text!r}"
        labels[m.group()] = _unescape("".join(raw), 'n\\"')
        i = j + 1
        if text[i] == ",":
            i += 1
    return labels, i + 1


def parse(text: str) -> dict[str, Family]:
    """Strict: HELP then TYPE before a family's samples, known suffixes, valid escapes."""
    assert text.endswith("\n")
    fams: dict[str, Family] = {}
    current: Family | None = None
    for line in text[:-1].split("\n"):
        assert line, "blank line"
        if line.startswith("# HELP "):
            name, _, help = line[7:].partition(" ")
            assert _NAME.fullmatch(name) and name not in fams, name
            current = fams[name] = Family(name, _unescape(help, "n\\"))
        elif line.startswith("# TYPE "):
            name, _, typ = line[7:].partition(" ")
            assert current is not None and current.name == name and not current.type and not current.samples
            assert typ in _SUFFIXES, typ
            current.type = typ
        else:
            assert not line.startswith("#")
            assert current is not None and current.type, f"sample before TYPE: {line}"
            m = _NAME.match(line)
            assert m
            name, i = m.group(), m.end()
            labels: dict[str, str] = {}
            if line[i] == "{":
                labels, i = _labels(line, i)
            assert line[i] == " "
            value = float(line[i + 1 :].split(" ")[0])
            assert name in {current.name + s for s in _SUFFIXES[current.type]}, (name, current.name)
            current.samples.append((name, labels, value))
    return fams


def check_histogram(f: Family) -> None:
    buckets = [(s[1]["le"], s[2]) for s in f.samples if s[0].endswith("_bucket")]
    les = [float(le) for le, _ in buckets]
    counts = [n for _, n in buckets]
    assert les == sorted(les) and len(set(les)) == len(les) and les[-1] == math.inf
    assert buckets[-1][0] == "+Inf"
    assert counts == sorted(counts), f"{f.name} buckets are not cumulative"
    (total,) = [s[2] for s in f.samples if s[0] == f.name + "_count"]
    (sum_,) = [s[2] for s in f.samples if s[0] == f.name + "_sum"]
    assert counts[-1] == total and sum_ >= 0


WEIRD = 'we"ird\\sink\nname'


class WeirdSink(MemorySink):
    @property
    def name(self) -> str:
        return WEIRD

    async def deliver(self, ops: Sequence[MemoryOperation]) -> DeliveryReport | None:
        return await super().deliver(ops)


def _check_exposition(text: str, n: int) -> dict[str, Family]:
    fams = parse(text)
    for f in fams.values():
        assert f.name.startswith("memwal_")
        assert f.type != "counter" or f.name.endswith("_total"), f.name
        if f.type == "histogram":
            check_histogram(f)
    assert fams["memwal_collected_total"].samples == [("memwal_collected_total", {}, n)]
    assert fams["memwal_delivered_total"].samples[0][2] == n
    for h in ("memwal_collect_latency_seconds", "memwal_delivery_latency_seconds"):
        assert fams[h].type == "histogram"
        assert [s[2] for s in fams[h].samples if s[0] == h + "_count"] == [n]
    status = {s[1]["status"]: s[2] for s in fams["memwal_health_status"].samples}
    assert status == {"ok": 1, "degraded": 0, "failing": 0}
    return fams


@pytest.mark.anyio
async def test_metrics_text_parses_back_with_escaped_labels(journal_path: Path) -> None:
    async with AsyncMemoryCollector(journal_path, WeirdSink()) as c:
        for i in range(30):
            c.collect("bug", f"op {i}")
        await c.flush_queue(timeout=10)
        c.counters.drops['queue "full"\\'] += 2  # a reason that needs escaping
        text = memwal.metrics_text(c)
    fams = _check_exposition(text, 30)
    assert {s[1]["sink"] for s in fams["memwal_sink_breaker_state"].samples} == {WEIRD}
    assert fams["memwal_dropped_total"].samples == [("memwal_dropped_total", {"reason": 'queue "full"\\'}, 2)]
    undelivered = fams["memwal_journal_undelivered"].samples
    assert {s[1]["priority"] for s in undelivered} == {"critical", "high", "medium", "low"}
    assert fams["memwal_batch_size"].samples[0][2] == c.config.async_collection.batch_size


def test_metrics_text_of_the_sync_collector(journal_path: Path) -> None:
    with MemoryCollector(journal_path, MemorySink()) as c:
        for i in range(5):
            c.collect("bug", f"op {i}")
        c.flush(timeout=10)
        _check_exposition(memwal.metrics_text(c), 5)


def test_render_escapes_help_and_label_values() -> None:
    fam = MetricFamily("memwal_x", "gauge", "line one\nback\\slash", [Sample(1.5, {"a": 'q"\\\n', "b": ""})])
    parsed = parse(render([fam]))["memwal_x"]
    assert parsed.help == "line one\nback\\slash"
    assert parsed.samples == [("memwal_x", {"a": 'q"\\\n', "b": ""}, 1.5)]


def test_parser_rejects_what_the_format_forbids() -> None:
    with pytest.raises(AssertionError):
        parse("memwal_x 1\n")  # a sample without HELP/TYPE
    with pytest.raises(AssertionError):
        parse('# HELP memwal_x h\n# TYPE memwal_x gauge\nmemwal_x{a="\\t"} 1\n')  # bad escape
    with pytest.raises(AssertionError):
        check_histogram(Family("h", "", "histogram", [
            ("h_bucket", {"le": "1"}, 3), ("h_bucket", {"le": "+Inf"}, 2),
            ("h_sum", {}, 1), ("h_count", {}, 2),
        ]))


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(min_value=0, max_value=2e6, allow_nan=False), max_size=3000),
    reads=st.sets(st.integers(min_value=0, max_value=3000), max_size=5),
)
def test_histogram_buckets_count_every_sample_however_often_they_are_read(values: list[float], reads: set[int]) -> None:
    # add() folds samples into the buckets in runs; reading folds the rest. A ring of
    # 512 wraps several times here, and the buckets must still count every sample.
    w = HistogramWindow(COLLECT_BOUNDS_US, size=512)
    for i, v in enumerate(values):
        if i in reads:
            w.buckets  # noqa: B018  (a read in the middle of a run folds early)
        w.add(v)
    expected = [0] * (len(COLLECT_BOUNDS_US) + 1)
    for v in values:
        expected[bisect.bisect_left(COLLECT_BOUNDS_US, v)] += 1
    assert w.buckets == expected
    assert w.count == len(values)
    assert w.total == pytest.approx(math.fsum(values), rel=1e-9, abs=1e-9)  # the sum is kept at each fold


def test_a_histogram_window_is_a_power_of_two_of_at_least_one_fold() -> None:
    for size in (384, 128):
        with pytest.raises(ValueError, match=f"window size {size} must be a power of two"):
            HistogramWindow(COLLECT_BOUNDS_US, size=size)


@pytest.mark.anyio
async def test_faults_and_bisections_are_exported(journal_path: Path) -> None:
    from memwal import SinkRejected

    class RejectsOne(MemorySink):
        async def deliver(self, ops: Sequence[MemoryOperation]) -> DeliveryReport | None:
            if any(op.content == "bad" for op in ops):
                raise SinkRejected("422")
            return await super().deliver(ops)

    async with AsyncMemoryCollector(journal_path, RejectsOne()) as c:
        for i in range(7):
            c.collect("bug", "bad" if i == 3 else f"op {i}")
        await c.flush_queue(timeout=10)
        c.counters.faults["sink:KeyError"] += 2
        fams = parse(memwal.metrics_text(c))
    assert fams["memwal_faults_total"].samples == [("memwal_faults_total", {"where": "sink", "type": "KeyError"}, 2)]
    assert fams["memwal_bisections_total"].samples[0][2] >= 1
    assert fams["memwal_journal_gauges_age_seconds"].samples[0][2] >= 0
