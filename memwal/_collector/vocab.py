"""The names both collectors share, written once: the ``collect_<category>`` helpers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from .._core.records import Priority

__all__ = ["CollectHelpers"]

R = TypeVar("R")
_Meta = Mapping[str, Any] | None
_Prio = Priority | str | None


class CollectHelpers(Generic[R]):
    """``collect_bug`` ... ``collect_operation`` for a collector; ``R`` is what collecting returns.

    AsyncMemoryCollector returns an awaitable (``collect_async``), MemoryCollector an id
    (``collect``); each class says how in ``_collect_as``.
    """

    def _collect_as(self, category: str, content: str, metadata: _Meta, priority: _Prio, kw: dict[str, Any]) -> R:
        raise NotImplementedError

    def collect_bug(self, content: str, metadata: _Meta = None, priority: _Prio = None, **kw: Any) -> R:
        """Collect with category ``bug`` (await it on AsyncMemoryCollector).

        Example:
            >>> op_id = c.collect_bug("parser fails on empty input", priority="high")
        """
        return self._collect_as("bug", content, metadata, priority, kw)

    def collect_error(self, content: str, metadata: _Meta = None, priority: _Prio = None, **kw: Any) -> R:
        """Collect with category ``error`` (await it on AsyncMemoryCollector).

        Example:
            >>> op_id = c.collect_error("TimeoutError calling the search API", {"retries": 3})
        """
        return self._collect_as("error", content, metadata, priority, kw)

    def collect_feedback(self, content: str, metadata: _Meta = None, priority: _Prio = None, **kw: Any) -> R:
        """Collect with category ``feedback`` (await it on AsyncMemoryCollector).

        Example:
            >>> op_id = c.collect_feedback("user prefers short answers")
        """
        return self._collect_as("feedback", content, metadata, priority, kw)

    def collect_performance(self, content: str, metadata: _Meta = None, priority: _Prio = None, **kw: Any) -> R:
        """Collect with category ``performance`` (await it on AsyncMemoryCollector).

        Example:
            >>> op_id = c.collect_performance("search took 2.1 s", {"ms": 2100})
        """
        return self._collect_as("performance", content, metadata, priority, kw)

    def collect_architecture(self, content: str, metadata: _Meta = None, priority: _Prio = None, **kw: Any) -> R:
        """Collect with category ``architecture`` (await it on AsyncMemoryCollector).

        Example:
            >>> op_id = c.collect_architecture("the cache sits behind the sink", tags=["design"])
        """
        return self._collect_as("architecture", content, metadata, priority, kw)

    def collect_operation(self, content: str, metadata: _Meta = None, priority: _Prio = None, **kw: Any) -> R:
        """Collect with category ``operation`` (await it on AsyncMemoryCollector).

        Example:
            >>> op_id = c.collect_operation("deployed v2.3 to staging", project="web")
        """
        return self._collect_as("operation", content, metadata, priority, kw)
