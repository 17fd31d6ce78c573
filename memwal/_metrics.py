"""Prometheus text exposition (format 0.0.4): metric families rendered to text.

A pure leaf: callers build MetricFamily values from snapshots; ``render`` escapes
label values and HELP text as the format requires.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import msgspec

__all__ = ["MetricFamily", "Sample", "render"]


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
