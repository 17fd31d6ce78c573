"""Runtime tuning: the AdaptiveBatcher and validated changes to a live collector's config."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgspec

from .._core.config import Config, translate_error
from .._core.errors import ConfigError

__all__ = ["TUNABLE", "AdaptiveBatcher", "apply_changes"]

# Settings a live collector can change safely: each is read afresh on every use
# (batch sizes and thresholds) or pushed into the one object that holds it
# (the concurrency limiter, the token bucket). Everything else needs a restart.
TUNABLE: frozenset[str] = frozenset({
    "async_collection.batch_size",
    "async_collection.batch_timeout",
    "async_collection.batch_linger",
    "async_collection.rate_limit",
    "async_collection.min_batch_size",
    "async_collection.max_batch_size",
    "performance.max_concurrent_ops",
    "performance.max_inflight_batches",
    "performance.health_check_interval",
    "health.max_pending_age",
    "health.max_depth_ratio",
    "health.max_failure_rate",
    "health.alert_on_breaker_open",
    "health.alert_on_dead",
    "health.window_seconds",
})
_SHORT = {path.rpartition(".")[2]: path for path in TUNABLE}


def apply_changes(config: Config, changes: Mapping[str, Any]) -> tuple[Config, list[str]]:
    """A new Config with ``changes`` applied, and the dotted paths that changed.

    Keys are a setting's name (``batch_size``) or its dotted path
    (``async_collection.batch_size``). Keys outside TUNABLE and bad values raise
    ConfigError naming the key; nothing is applied unless every change is valid.

    Example:
        >>> cfg, paths = apply_changes(Config(), {"batch_size": 10, "health.max_pending_age": 30})
        >>> cfg.async_collection.batch_size, paths
        (10, ['async_collection.batch_size', 'health.max_pending_age'])
    """
    by_section: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        path = _SHORT.get(key, key)
        if path not in TUNABLE:
            known = path in _all_paths() or any(p.endswith("." + key) for p in _all_paths())
            why = "cannot change on a live collector (restart with a new config)" if known else "unknown key"
            raise ConfigError(why, path=key)
        section, _, name = path.partition(".")
        by_section.setdefault(section, {})[name] = value
    sections: dict[str, Any] = {}
    for section, values in by_section.items():
        current = getattr(config, section)
        try:
            sections[section] = msgspec.convert({**msgspec.to_builtins(current), **values}, type(current))
        except msgspec.ValidationError as exc:
            raise translate_error(exc, section) from exc
    paths = sorted(f"{s}.{k}" for s, v in by_section.items() for k in v)
    return msgspec.structs.replace(config, **sections), paths


def _all_paths() -> set[str]:
    return {f"{s}.{k}" for s in Config.__struct_fields__ for k in getattr(Config(), s).__struct_fields__}


class AdaptiveBatcher:
    """Sizes batches from measured sink cost: a pattern search on seconds per operation.

    From the best size so far it probes one step (a factor) further in the current
    direction; a probe that lowers the cost per operation by more than ``tolerance``
    becomes the new best and the search keeps going. When neither direction helps,
    the step shrinks; below ``min_step`` the size settles on the best, and a later
    change of its cost beyond ``4 * tolerance`` starts a new search. An error halves
    the size. Only full batches (``n >= size``) are measured: a partial batch says
    nothing about ``size``.

    Example:
        >>> b = AdaptiveBatcher(10, 1, 1000)
        >>> b.observe(10, 0.5)   # 10 ops in 0.5 s: probe bigger batches
        20
    """

    def __init__(
        self,
        size: int,
        min_size: int,
        max_size: int,
        *,
        step: float = 2.0,
        min_step: float = 1.04,
        tolerance: float = 0.02,
        samples: int = 1,
    ) -> None:
        self.min_size, self.max_size = min_size, max_size
        self.size = self._clamp(size)
        self.initial_step = step
        self.min_step = min_step
        self.tolerance = tolerance
        self.samples = samples  # full batches averaged per decision (more when noisy)
        self.errors = 0
        self._restart(1)

    def __repr__(self) -> str:
        state = "settled" if self.settled else f"step={self.step:.3g}"
        return f"<AdaptiveBatcher size={self.size} best={self.best_size} {state}>"

    def _clamp(self, n: float) -> int:
        return max(self.min_size, min(self.max_size, round(n)))

    def _restart(self, direction: int) -> None:
        self.step = self.initial_step
        self.direction = direction
        self.settled = False
        self.best_size = self.size
        self.best_cost: float | None = None
        self._turned = False  # tried the other direction at this step already
        self._acc: list[float] = []

    def set_bounds(self, size: int, min_size: int, max_size: int) -> None:
        """Restart the search from ``size`` within new bounds (configure())."""
        self.min_size, self.max_size = min_size, max_size
        self.size = self._clamp(size)
        self._restart(1)

    def observe(self, n: int, seconds: float, *, error: bool = False) -> int:
        """Feed one sink call (``n`` ops took ``seconds``); return the batch size to use next."""
        if error:
            self.errors += 1
            self.size = self._clamp(self.size / 2)
            self._restart(-1)  # keep probing downwards until the errors stop
            return self.size
        if n < self.size:
            return self.size
        self._acc.append(seconds / n)
        if len(self._acc) < self.samples:
            return self.size
        cost = sum(self._acc) / len(self._acc)
        self._acc = []
        if self.settled:
            assert self.best_cost is not None
            if abs(cost - self.best_cost) > 4 * self.tolerance * max(self.best_cost, 1e-12):
                self._restart(1)  # the sink changed: search again from here
                self.best_cost = cost
                self._probe()
            return self.size
        if self.best_cost is None or cost < self.best_cost * (1 - self.tolerance):
            self.best_size, self.best_cost, self._turned = self.size, cost, False
        else:
            self._fail()
        self._probe()
        return self.size

    def _fail(self) -> None:
        if not self._turned:
            self.direction, self._turned = -self.direction, True
        else:
            self.step, self._turned = math.sqrt(self.step), False

    def _probe(self) -> None:
        for _ in range(4):  # a probe clamped onto the best counts as a failed probe
            if self.step < self.min_step:
                break
            f = self.step if self.direction > 0 else 1 / self.step
            probe = self._clamp(self.best_size * f)
            if probe == self.best_size and self.step > 1:
                probe = self._clamp(self.best_size + self.direction)
            if probe != self.best_size:
                self.size = probe
                return
            self._fail()
        self.settled, self.size = True, self.best_size
