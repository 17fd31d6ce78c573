"""memwal: durable, non-blocking memory collection for AI agents.

``collect()`` writes a memory to a SQLite journal on your thread and returns in
microseconds; a background consumer delivers it to a sink (SQLite, mem0, or a
fallback chain), retrying with backoff behind a circuit breaker, and removes it from
the journal only once the sink has it. A crash loses nothing: the next collector, or
``memwal-replay``, delivers what is left.

Example:
    >>> import memwal
    >>> async with memwal.AsyncMemoryCollector("agent.journal", memwal.SQLiteSink("memories.db")) as c:
    ...     op_id = await c.collect_async("bug", "NPE in the parser on empty input")
    ...     await c.flush_queue()

    >>> with memwal.MemoryCollector("agent.journal", memwal.SQLiteSink("memories.db")) as c:
    ...     c.collect("decision", "use SQLite for the journal", {"by": "alice"}, "high")

Main names: ``AsyncMemoryCollector`` and ``MemoryCollector`` (collect, read back,
flush, health), the sinks ``SQLiteSink``, ``Mem0Sink``, ``FallbackSink`` (and ``Sink``
to write your own), ``load_config`` and ``Config``, ``metrics_text``; errors derive
from ``MemwalError``. Test doubles live in ``memwal.testing``. The command line tool
``memwal-replay`` inspects, replays, repairs and compacts a journal.
"""

from __future__ import annotations

import typing as _typing

from ._collector.async_collector import AsyncMemoryCollector
from ._collector.sync_collector import MemoryCollector
from ._core.config import Config, load_config
from ._core.errors import (
    CircuitOpen,
    ConfigError,
    InvalidOperation,
    JournalError,
    MemwalError,
    QueueFull,
    SinkError,
    SinkRejected,
    SinkUnavailable,
)
from ._core.records import Memory, MemoryCategory, MemoryOperation, Priority
from ._journal.journal import JournalCounts
from ._observe.health import Health
from ._observe.metrics import metrics_text
from ._observe.stats import CollectorStats
from ._policy.breaker import BreakerState, CircuitBreaker
from ._reads.cache import CacheStatistics, MemoryCache
from ._sinks.base import DeliveryReport, Sink
from ._sinks.fallback import FallbackSink
from ._sinks.sqlite import SQLiteSink

if _typing.TYPE_CHECKING:
    from ._sinks.mem0 import Mem0Sink

__version__ = "0.1.0"

__all__ = [
    "AsyncMemoryCollector",
    "BreakerState",
    "CacheStatistics",
    "CircuitBreaker",
    "CircuitOpen",
    "CollectorStats",
    "Config",
    "ConfigError",
    "DeliveryReport",
    "FallbackSink",
    "Health",
    "InvalidOperation",
    "JournalCounts",
    "JournalError",
    "Mem0Sink",
    "Memory",
    "MemoryCache",
    "MemoryCategory",
    "MemoryCollector",
    "MemoryOperation",
    "MemwalError",
    "Priority",
    "QueueFull",
    "SQLiteSink",
    "Sink",
    "SinkError",
    "SinkRejected",
    "SinkUnavailable",
    "__version__",
    "load_config",
    "metrics_text",
]


_LAZY = {"Mem0Sink"}  # needs aiohttp, which takes longer to import than the rest of memwal


def _show_as_public(obj: _typing.Any) -> None:
    """Make a public class or function name itself ``memwal.X`` (in reprs, tracebacks
    and help), not the private module that defines it.

    A class's string annotations are evaluated first: msgspec and
    ``typing.get_type_hints`` resolve them in the module its ``__module__`` names, and
    names such as ``Any`` are not in ``memwal``. A class whose annotations cannot be
    evaluated keeps its private module name (tests/test_api_docs.py reports it).
    """
    import inspect
    import typing

    if not getattr(obj, "__module__", "").startswith("memwal."):
        return  # __version__, or a name defined outside memwal
    if isinstance(obj, type):
        try:
            for cls in obj.__mro__:
                own = inspect.get_annotations(cls)
                if own and cls.__module__.startswith("memwal") and any(isinstance(a, str) for a in own.values()):
                    hints = typing.get_type_hints(cls, include_extras=True)
                    cls.__annotations__ = {k: hints[k] for k in own}
        except NameError:
            return
    obj.__module__ = __name__


for _name in __all__:
    if _name not in _LAZY:
        _show_as_public(globals()[_name])
del _name


def __getattr__(name: str) -> _typing.Any:
    # Mem0Sink is loaded on first use, so `import memwal` (and memwal-replay) stays quick.
    if name == "Mem0Sink":
        from ._sinks.mem0 import Mem0Sink

        _show_as_public(Mem0Sink)
        globals()["Mem0Sink"] = Mem0Sink
        return Mem0Sink
    raise AttributeError(f"module 'memwal' has no attribute {name!r}")
