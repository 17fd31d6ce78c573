"""MemoryCollector: the synchronous, thread-safe facade over AsyncMemoryCollector."""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.from_thread

from .._core.config import Config
from .._core.errors import JournalError
from .._core.records import Memory
from .._observe.health import AlertCallback, Health
from .._observe.stats import CollectorStats
from .._sinks.base import Sink
from .async_collector import FORKED, AsyncMemoryCollector, Category, Meta, Prio, warn_unclosed
from .vocab import CollectHelpers

__all__ = ["MemoryCollector"]

# Extra seconds an exit-time close may take past shutdown_timeout (closing files).
EXIT_MARGIN = 5.0


class _LoopThread:
    """An asyncio event loop on a daemon thread, reached through an anyio BlockingPortal.

    A daemon thread, so an application that never closes its collector still exits:
    the interpreter does not wait for it, and ``_close_at_exit`` (an atexit hook, which
    runs while daemon threads still live) closes the collector with a bounded flush.
    """

    def __init__(self, name: str) -> None:
        ready: concurrent.futures.Future[anyio.from_thread.BlockingPortal] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, args=(ready,), name=name, daemon=True)
        self._thread.start()
        self.portal = ready.result()

    @staticmethod
    def _main(ready: concurrent.futures.Future[anyio.from_thread.BlockingPortal]) -> None:
        async def serve() -> None:
            async with anyio.from_thread.BlockingPortal() as portal:
                ready.set_result(portal)
                await portal.sleep_until_stopped()

        anyio.run(serve, backend="asyncio")

    def submit(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run ``fn`` (a coroutine function) on the loop; TimeoutError after ``timeout``."""
        return self.portal.start_task_soon(fn).result(timeout)

    def stop(self, timeout: float) -> None:
        try:
            self.portal.start_task_soon(self.portal.stop).result(timeout)
        except (RuntimeError, concurrent.futures.TimeoutError):
            return  # the loop is gone or stuck: a daemon thread does not hold up exit
        self._thread.join(timeout)


# Collectors to close at interpreter exit (removed by close()), each with its exit and
# fork hooks; strong references: the loop thread keeps each collector alive anyway
# until it is closed.
_open: dict[MemoryCollector, tuple[Callable[[], None], Callable[[], None]]] = {}
_open_lock = threading.Lock()


def _close_at_exit() -> None:
    with _open_lock:
        left = list(_open.values())
    for close_at_exit, _ in left:
        close_at_exit()


def _after_fork_in_child() -> None:
    global _open_lock
    _open_lock = threading.Lock()  # another parent thread may have held it at the fork
    for _, after_fork in list(_open.values()):
        after_fork()
    _open.clear()


atexit.register(_close_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)


class MemoryCollector(CollectHelpers[str]):
    """The synchronous, thread-safe facade for code without an event loop.

    ``collect`` appends on the caller's thread; the consumer runs on a background
    thread (an asyncio loop on a daemon thread). Many threads may call ``collect`` at
    once. A collector never closed is closed at interpreter exit with a bounded flush
    and a ResourceWarning naming the journal. After ``os.fork()`` the child cannot use
    the parent's collector: every call raises JournalError (open a new one there).

    Example:
        >>> with MemoryCollector("agent.journal", SQLiteSink("memories.db")) as c:
        ...     c.collect("feedback", "user prefers short answers")
        ...     c.flush(timeout=10)
    """

    def __init__(self, journal: str | os.PathLike[str], sink: Sink, *, config: Config | None = None) -> None:
        self._forked = False
        self._closed = True  # until started
        self._async = AsyncMemoryCollector(journal, sink, config=config)
        self._loop = _LoopThread(f"memwal {self._async.journal.path}")
        self._portal = self._loop.portal
        try:
            self._loop.submit(self._async.start)
        except BaseException:
            self._loop.stop(EXIT_MARGIN)
            raise
        self._closed = False
        with _open_lock:
            _open[self] = (self._close_at_exit, self._after_fork_in_child)

    def __repr__(self) -> str:
        return repr(self._async).replace("AsyncMemoryCollector", "MemoryCollector", 1)

    @property
    def config(self) -> Config:
        """The live Config (``configure`` replaces it).

        Example:
            >>> c.config.async_collection.batch_size
            100
        """
        return self._async.config

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the collector's loop (a coroutine function or a plain one)."""
        if self._forked:
            raise JournalError(f"collector is {FORKED}", path=str(self._async.journal.path))
        return self._portal.call(fn, *args)

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
        return self._async.collect_from_thread(self._portal.call, category, content, metadata, priority, tags, project)

    def _collect_as(self, category: str, content: str, metadata: Meta, priority: Prio, kw: dict[str, Any]) -> str:
        return self.collect(category, content, metadata, priority, **kw)

    def get(self, op_id: str) -> Memory | None:
        """AsyncMemoryCollector.get, blocking: read-your-writes, then the cached sink.

        Example:
            >>> c.get(c.collect("bug", "parser fails")).content
            'parser fails'
        """
        return self._call(self._async.get, op_id)  # type: ignore[no-any-return]

    def search(
        self,
        query: str,
        *,
        category: Category | None = None,
        tags: Sequence[str] | None = None,
        project: str | None = None,
        limit: int = 10,
    ) -> list[Memory]:
        """AsyncMemoryCollector.search, blocking.

        Example:
            >>> [m.content for m in c.search("parser", category="bug", limit=5)]
        """
        return self._call(  # type: ignore[no-any-return]
            lambda: self._async.search(query, category=category, tags=tags, project=project, limit=limit)
        )

    def recent(self, category: Category | None = None, *, limit: int = 20) -> list[Memory]:
        """AsyncMemoryCollector.recent, blocking.

        Example:
            >>> c.recent("feedback", limit=5)
        """
        return self._call(lambda: self._async.recent(category, limit=limit))  # type: ignore[no-any-return]

    def flush(self, timeout: float | None = None) -> int:
        """Block until everything collected before the call is delivered or dead-lettered.

        Counts as AsyncMemoryCollector.flush_queue does; TimeoutError after ``timeout``
        seconds (nothing is lost). Example: ``c.flush(timeout=10)``
        """
        if self._forked or self._closed:
            return self._call(self._async.flush_queue, timeout)  # type: ignore[no-any-return]  # raises
        # The snapshot is taken here, at the call, not after the hop to the loop.
        snapshot = self._async.journal.own_snapshot()
        try:
            return self._call(self._async.flush_snapshot, snapshot, timeout)  # type: ignore[no-any-return]
        finally:
            snapshot.close()  # a no-op once the flush used it

    def flush_queue(self, timeout: float | None = None) -> int:
        """The same as ``flush`` (the name AsyncMemoryCollector uses).

        Example:
            >>> c.flush_queue(timeout=10)
        """
        return self.flush(timeout)

    def stats(self) -> CollectorStats:
        """A frozen snapshot of counters and journal depth.

        Example:
            >>> c.stats().delivered
        """
        if self._forked:
            raise JournalError(f"collector is {FORKED}", path=str(self._async.journal.path))
        return self._async.stats()

    def health(self) -> Health:
        """A frozen Health snapshot, taken on the collector's event loop thread.

        Example:
            >>> if c.health().status != "ok": ...
        """
        return self._call(self._async.health)  # type: ignore[no-any-return]

    def add_alert_callback(self, callback: AlertCallback) -> None:
        """Call ``callback(alert)`` once per health status transition (on the loop thread).

        Example:
            >>> c.add_alert_callback(lambda alert: print(alert.status, alert.reasons))
        """
        self._call(self._async.add_alert_callback, callback)

    def remove_alert_callback(self, callback: AlertCallback) -> None:
        """Stop calling ``callback``; ValueError if it was never added.

        Example:
            >>> c.remove_alert_callback(on_alert)
        """
        self._call(self._async.remove_alert_callback, callback)

    def configure(self, **changes: Any) -> Config:
        """Change safe settings on the live collector; see AsyncMemoryCollector.configure.

        Example:
            >>> c.configure(batch_size=50)
        """
        return self._call(lambda: self._async.configure(**changes))  # type: ignore[no-any-return]

    def reset_circuit_breaker(self) -> None:
        """Force every breaker of the sink closed (deliveries resume at once).

        Example:
            >>> c.reset_circuit_breaker()
        """
        self._call(self._async.reset_circuit_breaker)

    def _close_at_exit(self) -> None:
        # memwal's atexit hook: a bounded flush and a ResourceWarning naming the journal
        warn_unclosed("MemoryCollector", self._async.journal.path, "at interpreter exit")
        self._close(timeout=self.config.journal.shutdown_timeout + EXIT_MARGIN)

    def _after_fork_in_child(self) -> None:
        self._forked = True  # the parent's collector: every later call raises JournalError

    def close(self) -> None:
        """Deliver what can be delivered now (up to ``shutdown_timeout``), then close.

        As AsyncMemoryCollector.aclose: returns at once when nothing can be delivered
        now; undelivered operations stay in the journal. Closing twice is a no-op; in
        a child process after fork() it only forgets the parent's collector.

        Example:
            >>> c.close()
        """
        self._close(timeout=None)

    def _close(self, timeout: float | None) -> None:
        if self._closed:
            return
        self._closed = True
        with _open_lock:
            _open.pop(self, None)
        if self._forked:
            return  # the parent's loop thread does not exist here
        try:
            self._loop.submit(self._async.aclose, timeout)
        except concurrent.futures.TimeoutError:
            pass  # at exit, bounded: the rows stay in the journal
        finally:
            self._loop.stop(EXIT_MARGIN)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
