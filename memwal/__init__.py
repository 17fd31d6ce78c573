"""memwal: durable, non-blocking memory collection for AI-agent workflows.

Layers (each imports only from the ones below it):
    entry points    replay (memwal-replay), testing (public doubles)
    orchestration   _sync -> _collector -> _consumer, _reads, _health (health, alerts, metrics), _stats
    adapters        _journal (SQLite WAL), _sinks/ (sqlite, fallback, mem0)
    pure leaves     _retry, _breaker, _throttle, _schema, _adaptive, _metrics, _cache
    foundations     _records, _config, _errors
"""

from __future__ import annotations

from ._breaker import BreakerState, CircuitBreaker
from ._cache import CacheStatistics, MemoryCache
from ._collector import AsyncMemoryCollector
from ._config import Config, load_config
from ._errors import (
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
from ._health import Health
from ._journal import JournalCounts
from ._metrics import metrics_text
from ._records import Memory, MemoryCategory, MemoryOperation, Priority
from ._sinks.base import DeliveryReport, Sink
from ._sinks.fallback import FallbackSink
from ._sinks.mem0 import Mem0Sink
from ._sinks.sqlite import SQLiteSink
from ._stats import CollectorStats
from ._sync import MemoryCollector

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
