"""The Sink base class and the per-operation DeliveryReport."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from .._core.errors import SinkRejected, SinkUnavailable
from .._core.records import Memory, MemoryOperation

if TYPE_CHECKING:
    from .._core.config import Config
    from .._policy.breaker import CircuitBreaker

__all__ = ["DeliveryReport", "Sink"]


@dataclasses.dataclass(frozen=True)
class DeliveryReport:
    """Per-operation outcomes of one ``deliver`` call.

    Ids absent from ``failed`` were delivered. ``failed`` maps an id to
    SinkUnavailable (retry it) or SinkRejected (dead-letter it). ``held`` maps ids that
    a fallback sink stored to that sink's name: they are reconciled to the primary later.

    Example:
        >>> DeliveryReport(failed={"0190...": SinkRejected("422 body too long")})
    """

    failed: Mapping[str, SinkUnavailable | SinkRejected] = dataclasses.field(default_factory=dict)
    held: Mapping[str, str] = dataclasses.field(default_factory=dict)


class Sink:
    """The base class of memory backends.

    ``deliver`` stores a batch. It returns None when every operation was stored, a
    DeliveryReport when some failed, or raises SinkUnavailable (retry the whole batch)
    or SinkRejected (dead-letter the whole batch). It must be idempotent on the
    operation id: after a timeout the consumer sends the same operations again.

    Example:
        >>> class PrintSink(Sink):
        ...     async def deliver(self, ops):
        ...         for op in ops:
        ...             print(op.id, op.content)
    """

    #: True when the sink keeps its own circuit breakers (FallbackSink).
    manages_breakers = False
    #: True when ``reconcile`` works: the sink reports ``held`` operations (FallbackSink).
    reconciles = False

    @property
    def name(self) -> str:
        return type(self).__name__

    def bind(self, config: Config, clock: Any) -> None:
        """Called once by the collector before the first delivery with its config and clock."""

    def bind_journal(self, journal: str | os.PathLike[str]) -> None:
        """Called once, before ``bind``, with the path of the journal this sink delivers from.

        The collector and ``memwal-replay replay`` call it, so a sink can keep a file of
        its own beside the journal, shared by every process delivering from it
        (``Mem0Sink`` keeps its send ledger there). The default does nothing.
        """

    async def deliver(self, ops: Sequence[MemoryOperation]) -> DeliveryReport | None:
        raise NotImplementedError

    async def reconcile(self, ops: Sequence[MemoryOperation]) -> DeliveryReport | None:
        """Deliver operations a fallback holds to the primary (only when ``reconciles``).

        Answers like ``deliver``. The default cannot: the consumer asks ``reconciles`` first.
        """
        raise NotImplementedError(f"{self.name} holds no operations to reconcile")

    async def sync(self) -> None:
        """Make every delivery this sink has reported done durable (survive power loss).

        The durability chain: the consumer awaits ``sync`` before the journal makes an
        acknowledgement durable, so a journal row is never gone while its memory is
        not yet safe in the sink. With ``journal.durability: full`` every ack commit
        is durable at once, so ``sync`` is awaited before each batch's ack; with
        ``normal``, before each journal checkpoint (acks wait meanwhile). If it
        raises, the rows are not acknowledged: they stay in the journal and are
        delivered again (sinks are idempotent on the id).

        The default does nothing: right for a sink whose ``deliver`` returns only
        once the memory is durable (a remote service that stores before replying,
        ``SQLiteSink(durability="full")``). Override it in a sink that buffers.

        Example:
            >>> class FileSink(Sink):
            ...     async def sync(self):
            ...         await anyio.to_thread.run_sync(os.fsync, self.fd)
        """

    def breakers(self) -> Sequence[CircuitBreaker]:
        """The breakers this sink manages itself (empty unless ``manages_breakers``)."""
        return ()

    async def get(self, op_id: str) -> Memory | None:
        """The memory stored for operation ``op_id``, or None."""
        raise NotImplementedError(f"{self.name} cannot read memories back")

    async def search(
        self,
        query: str,
        *,
        category: str | None = None,
        tags: Sequence[str] | None = None,
        project: str | None = None,
        limit: int = 10,
    ) -> list[Memory]:
        """Memories matching ``query``, best first."""
        raise NotImplementedError(f"{self.name} cannot search memories")

    async def recent(self, category: str | None = None, *, limit: int = 20) -> list[Memory]:
        """The newest memories, newest first."""
        raise NotImplementedError(f"{self.name} cannot list memories")

    async def aclose(self) -> None:
        """Release the sink's resources; closing twice is a no-op."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
