"""The WAL journal: one class composed of its jobs (one module each).

- ``append``: The producer's side of the journal: append on the caller's thread, and the depth estimate behind back-pressure (``on_full``).
- ``lease``: The consumer's side: find ready rows, claim them, settle each batch's outcome (ack, retry, dead-letter, hold, release) and recover leases of processes that are gone.
- ``maintenance``: Keeping the file small: WAL checkpoints (when and how) and purging kept deliveries past their retention.
- ``reads``: Reading the journal: counts by state, what a flush waits for, read-your-writes look-ups of undelivered operations.
- ``base``: the connections and locks they share; ``rows``: rows and their codec.
"""

from __future__ import annotations

from .append import Appender
from .lease import Leases
from .maintenance import Maintenance
from .reads import Reads
from .rows import (
    JournalCounts,
    LeasedOp,
    Settlement,
    decode_rows,
    owner_is_gone,
)

__all__ = ["Journal", "JournalCounts", "LeasedOp", "Settlement", "decode_rows", "owner_is_gone"]


class Journal(Appender, Leases, Maintenance, Reads):
    """A memwal journal file.

Example:
    >>> j = Journal("memories.journal"); j.open()
    >>> op = j.append("bug", "NPE in parser", {}, Priority.HIGH, (), None)
    >>> j.close()"""
