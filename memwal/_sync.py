"""MemoryCollector: the synchronous, thread-safe facade over AsyncMemoryCollector."""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import anyio.from_thread

from ._collector import AsyncMemoryCollector, Category, Meta, Prio
from ._config import Config
from ._errors import QueueFull
from ._health import AlertCallback, Health
from ._records import Memory
from ._sinks.base import Sink
from ._stats import CollectorStats

__all__ = ["MemoryCollector"]


class MemoryCollector:
    """The synchronous, thread-safe facade for code without an event loop.

    ``collect`` appends on the caller's thread; the consumer runs on a background
    thread (an anyio blocking portal). Many threads may call ``collect`` at once.

    Example:
        >>> with MemoryCollector("agent.journal", SQLiteSink("memories.db")) as c:
        ...     c.collect("feedback", "user prefers short answers")
        ...     c.flush(timeout=10)
    """

    def __init__(self, journal: str | os.PathLike[str], sink: Sink, *, config: Config | None = None) -> None:
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        try:
            self._async = AsyncMemoryCollector(journal, sink, config=config)
            self._cm = self._portal.wrap_async_context_manager(self._async)
            self._cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        self._closed = False

    def __repr__(self) -> str:
        return repr(self._async).replace("AsyncMemoryCollector", "MemoryCollector", 1)

    @property
    def config(self) -> Config:
        return self._async.config

    def collect(
        self,
        category: Category,
        content: str,
        metadata: Meta = None,
        priority: Prio = None,
        *,
        tags: Sequence[str] = (),
        project: str | None = None,
    ) -> str:
        """Append one operation on this thread; return its id once committed.

        With ``on_full: block`` waits (this thread only) up to ``collect_timeout`` for room.
        """
        a = self._async
        try:
            op_id = a._append(category, content, metadata, priority, tags, project, a._on_full)
        except QueueFull:
            if not a._block:
                raise
            op_id = self._portal.call(a._append_blocking, category, content, metadata, priority, tags, project)
        if a._group:  # durability full: join a group commit (one fdatasync for every thread waiting)
            a.journal.sync_upto(a.journal.commits)
        return op_id

    def collect_bug(self, content: str, metadata: Meta = None, priority: Prio = None, **kw: Any) -> str:
        return self.collect("bug", content, metadata, priority, **kw)

    def collect_error(self, content: str, metadata: Meta = None, priority: Prio = None, **kw: Any) -> str:
        return self.collect("error", content, metadata, priority, **kw)

    def collect_feedback(self, content: str, metadata: Meta = None, priority: Prio = None, **kw: Any) -> str:
        return self.collect("feedback", content, metadata, priority, **kw)

    def collect_performance(self, content: str, metadata: Meta = None, priority: Prio = None, **kw: Any) -> str:
        return self.collect("performance", content, metadata, priority, **kw)

    def collect_architecture(self, content: str, metadata: Meta = None, priority: Prio = None, **kw: Any) -> str:
        return self.collect("architecture", content, metadata, priority, **kw)

    def collect_operation(self, content: str, metadata: Meta = None, priority: Prio = None, **kw: Any) -> str:
        return self.collect("operation", content, metadata, priority, **kw)

    def get(self, op_id: str) -> Memory | None:
        """AsyncMemoryCollector.get, blocking: read-your-writes, then the cached sink."""
        return self._portal.call(self._async.get, op_id)

    def search(
        self,
        query: str,
        *,
        category: Category | None = None,
        tags: Sequence[str] | None = None,
        project: str | None = None,
        limit: int = 10,
    ) -> list[Memory]:
        """AsyncMemoryCollector.search, blocking."""
        return self._portal.call(
            lambda: self._async.search(query, category=category, tags=tags, project=project, limit=limit)
        )

    def recent(self, category: Category | None = None, *, limit: int = 20) -> list[Memory]:
        """AsyncMemoryCollector.recent, blocking."""
        return self._portal.call(lambda: self._async.recent(category, limit=limit))

    def flush(self, timeout: float | None = None) -> int:
        """Block until everything collected before the call is delivered or dead-lettered."""
        return self._portal.call(self._async.flush_queue, timeout)

    def stats(self) -> CollectorStats:
        return self._async.stats()

    def health(self) -> Health:
        """A frozen Health snapshot, taken on the collector's event loop thread."""
        return self._portal.call(self._async.health)

    def add_alert_callback(self, callback: AlertCallback) -> None:
        """Call ``callback(alert)`` once per health status transition (on the loop thread)."""
        self._portal.call(self._async.add_alert_callback, callback)

    def remove_alert_callback(self, callback: AlertCallback) -> None:
        self._portal.call(self._async.remove_alert_callback, callback)

    def configure(self, **changes: Any) -> Config:
        """Change safe settings on the live collector; see AsyncMemoryCollector.configure."""
        return self._portal.call(lambda: self._async.configure(**changes))

    def reset_circuit_breaker(self) -> None:
        self._portal.call(self._async.reset_circuit_breaker)

    def close(self) -> None:
        """Flush within the shutdown timeout, stop the consumer thread and close."""
        if self._closed:
            return
        self._closed = True
        try:
            self._cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
