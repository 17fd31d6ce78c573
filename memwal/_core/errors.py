"""The memwal exception tree, grouped by what the caller should do.

    MemwalError
    ├── ConfigError          a setting is wrong; names the key path       (also ValueError)
    ├── InvalidOperation     bad input to collect(); nothing was written   (also ValueError)
    ├── JournalError         the journal cannot be used (not a journal, newer schema,
    │                        corrupt, disk full, read-only, closed)
    ├── QueueFull            back-pressure: no room for the operation; nothing was written
    └── SinkError            raised by sinks only
        ├── SinkUnavailable  transient: the consumer retries later (carries .retry_after)
        │   └── CircuitOpen  the sink's breaker refused the call without trying it
        └── SinkRejected     permanent: the consumer dead-letters the operation
"""

from __future__ import annotations

__all__ = [
    "CircuitOpen",
    "ConfigError",
    "InvalidOperation",
    "JournalError",
    "MemwalError",
    "QueueFull",
    "SinkError",
    "SinkRejected",
    "SinkUnavailable",
]


class MemwalError(Exception):
    """The root of every error memwal raises on purpose.

    Example:
        >>> try:
        ...     collector.collect("bug", "NPE in the parser")
        ... except memwal.MemwalError as exc:
        ...     log.warning("memory not collected: %s", exc)
    """


class ConfigError(MemwalError, ValueError):
    """A configuration value is missing, unknown or out of range.

    The message starts with the key path, for example
    ``memory.async_collection.batch_sise: unknown key``.

    Example:
        >>> memwal.load_config({"journal": {"busy_timeout": -1}})
        Traceback (most recent call last):
        memwal.ConfigError: journal.busy_timeout: ...
    """

    def __init__(self, message: str, *, path: str = "") -> None:
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


class InvalidOperation(MemwalError, ValueError):
    """An argument of ``collect`` is invalid; the operation was not written.

    ``field`` names the argument (``category``, ``metadata.when`` ...).

    Example:
        >>> collector.collect("bug", "")
        Traceback (most recent call last):
        memwal.InvalidOperation: content: ...
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class JournalError(MemwalError):
    """The journal at ``path`` cannot be opened, read or written.

    When ``collect`` raises it, the operation was not stored.

    Example:
        >>> memwal.MemoryCollector("/no/such/dir/agent.journal", sink)
        Traceback (most recent call last):
        memwal.JournalError: cannot open: the directory does not exist (journal /no/such/dir/agent.journal)
    """

    def __init__(self, message: str, *, path: str = "") -> None:
        self.path = path
        super().__init__(f"{message} (journal {path})" if path else message)


class QueueFull(MemwalError):
    """The journal holds ``max_queue_size`` undelivered operations; nothing was written.

    ``depth`` and ``limit`` are the counts; ``waited`` how long collect waited for room.

    Example:
        >>> try:
        ...     collector.collect("bug", "NPE in the parser")
        ... except memwal.QueueFull as exc:
        ...     print(exc.depth, exc.limit)
    """

    def __init__(self, depth: int, limit: int, *, waited: float = 0.0) -> None:
        self.depth = depth
        self.limit = limit
        self.waited = waited
        extra = f" after waiting {waited:.3g}s" if waited else ""
        super().__init__(
            f"journal holds {depth} undelivered operations, limit is {limit}{extra}"
            " (async_collection.max_queue_size)"
        )


class SinkError(MemwalError):
    """A sink could not deliver; subclasses say whether to retry.

    Example:
        >>> class MySink(memwal.Sink):
        ...     async def deliver(self, ops):
        ...         raise memwal.SinkUnavailable("backend down")  # a SinkError: the consumer retries
    """


class SinkUnavailable(SinkError):
    """Transient failure: the operations are retried later.

    ``retry_after`` (seconds) is a server's request to wait at least that long.

    Example:
        >>> raise memwal.SinkUnavailable("HTTP 503", retry_after=30.0)
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class CircuitOpen(SinkUnavailable):
    """The sink's circuit breaker is open: the call was not made, no attempt is used.

    Example:
        >>> breaker = memwal.CircuitBreaker("mem0")
        >>> if not breaker.allow():
        ...     raise memwal.CircuitOpen("mem0 circuit breaker is open")
    """


class SinkRejected(SinkError):
    """Permanent failure: the backend will never accept the operation; it is dead-lettered.

    Example:
        >>> raise memwal.SinkRejected("HTTP 422: content too long")
    """
