"""MemoryCache: the LRU+TTL read cache with collect-time invalidation and a byte budget.

How staleness is ruled out (the reader in ``_reads.py`` relies on each point):

- A found memory never changes, so ``get`` entries live until the TTL or until the
  same id is collected again. A search fills them too, with the stored memories it
  returned (never with pending ones). A miss (None) is never cached: an unknown id can become
  known through paths this process does not see (another process, reconciliation).
- A query entry (search, recent) depends on a *scope* ``(category, project)``, either
  part None for "any". Each collected operation stamps the four scopes it can change
  with a write counter. An entry is served only if no write stamped its scope after
  the ``token()`` its reader took *before* reading; so a write racing a read makes
  that read's entry unservable instead of stale.
- An entry holding operations read from the journal (still pending) is also dropped
  once any pending operation leaves the journal (delivered, dead-lettered, evicted):
  ``note_settled()``. So it never outlives a dead letter, and never shows a delivered
  memory as unstored (``stored_at`` None).

Invalidated entries are dropped lazily, on their next lookup or in LRU order; they
are never served.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import cachetools
import msgspec

from .._core.config import CacheConfig
from .._core.records import MemoryOperation

__all__ = ["CacheStatistics", "CacheToken", "MemoryCache"]

Scope = tuple[str | None, str | None]

_enc = msgspec.json.Encoder()
_ENTRY_OVERHEAD = 400  # bytes: the entry, key tuple and Struct headers beside the JSON size
_MEMORY_OVERHEAD = 300  # bytes: one Memory's object headers, dict and tuple beside its JSON
_MAX_QUEUED = 1024  # collected scopes waiting to be stamped before collect() stamps them itself
QUEUE_CHECK_MASK = _MAX_QUEUED // 2 - 1  # a queue_scope caller bounds the queue when count & this is 0


class CacheToken(NamedTuple):
    """The cache's write and settle counters, taken before a reader reads its source."""

    writes: int
    settles: int


class CacheStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one MemoryCache.

    ``evictions`` counts entries pushed out by the entry or byte bound; ``expired``
    those dropped past the TTL; ``invalidated`` those found stale at lookup.

    Example:
        >>> s = memwal.MemoryCache().statistics()
        >>> s.hits, s.misses
        (0, 0)
    """

    hits: int
    misses: int
    evictions: int
    expired: int
    invalidated: int
    size: int
    bytes: int
    max_size: int
    max_bytes: int | None
    hit_rate: float


class _Entry:
    __slots__ = ("nbytes", "pending", "scope", "settles", "value", "writes")

    def __init__(self, value: Any, token: CacheToken, scope: Scope | None, pending: bool, nbytes: int) -> None:
        self.value = value
        self.writes = token.writes
        self.settles = token.settles
        self.scope = scope
        self.pending = pending
        self.nbytes = nbytes


class _Store(cachetools.TTLCache[Hashable, _Entry]):
    """TTLCache that reports what it evicts (``popitem``) and expires."""

    def __init__(self, maxsize: float, ttl: float, timer: Callable[[], float],
                 getsizeof: Callable[[_Entry], float] | None, on_evict: Callable[[_Entry], None],
                 on_expire: Callable[[_Entry], None]) -> None:
        super().__init__(maxsize, ttl, timer=timer, getsizeof=getsizeof)
        self._on_evict, self._on_expire = on_evict, on_expire

    def popitem(self) -> tuple[Hashable, _Entry]:
        key, entry = super().popitem()
        self._on_evict(entry)
        return key, entry

    def expire(self, time: float | None = None) -> Any:
        gone = super().expire(time)
        for _, entry in gone:
            self._on_expire(entry)
        return gone


def estimate_bytes(key: Hashable, value: Any) -> int:
    """An estimate of an entry's resident size: its JSON size plus object overheads."""
    items = len(value) if isinstance(value, Sequence) else 1
    return len(_enc.encode(value)) + len(repr(key)) + _ENTRY_OVERHEAD + items * _MEMORY_OVERHEAD


class MemoryCache:
    """An LRU cache with a TTL for memories and query results, safe across threads.

    Bounded by ``max_size`` entries and, when set, by ``max_bytes`` (estimated with
    ``estimate_bytes``). ``timer`` is injected so tests move time by hand.

    Example:
        >>> cache = MemoryCache(max_size=100, ttl=60)
        >>> t = cache.token(); cache.put(("search", "parser"), (), t, scope=(None, None))
        >>> cache.get(("search", "parser"))
        ()
    """

    def __init__(self, max_size: int = 1000, ttl: float = 300.0, *, max_bytes: int | None = None,
                 timer: Callable[[], float] = time.monotonic) -> None:
        if max_size < 1 or ttl <= 0 or (max_bytes is not None and max_bytes < 1):
            raise ValueError(f"MemoryCache needs max_size >= 1, ttl > 0, max_bytes >= 1 or None;"
                             f" got {max_size}, {ttl}, {max_bytes}")
        self.max_size = max_size
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._timer = timer
        self._data = self._new_store()
        self._lock = threading.Lock()
        self._writes = 0  # operations collected so far: the clock tokens are read from
        self._floor = 0  # scoped entries read before this write are void (the stamp table was reset)
        self._stamps: dict[Scope, int] = {}  # scope -> the write that last changed it
        self._queued: deque[Scope] = deque()  # scopes collected, not yet stamped (see collected)
        self._max_stamps = 4 * max_size + 16  # past it, the table resets (see invalidate)
        self._settles = 0
        self._settled_mark = 0
        self._nbytes = 0
        self.hits = self.misses = self.evictions = self.expired = self.invalidated = 0

    def _new_store(self) -> _Store:
        if self.max_bytes is None:
            return _Store(self.max_size, self.ttl, self._timer, None, self._evicted, self._expired)
        return _Store(self.max_bytes, self.ttl, self._timer, lambda e: e.nbytes, self._evicted, self._expired)

    @classmethod
    def from_config(cls, config: CacheConfig, *, timer: Callable[[], float] = time.monotonic) -> MemoryCache:
        """A cache sized by ``config.cache`` (``enabled`` is the caller's to check)."""
        return cls(config.max_size, config.ttl_seconds, max_bytes=config.max_bytes, timer=timer)

    def __repr__(self) -> str:
        return (f"<MemoryCache size={len(self._data)}/{self.max_size} hits={self.hits}"
                f" misses={self.misses} evictions={self.evictions}>")

    def __len__(self) -> int:
        return len(self._data)

    # -- reading and filling -------------------------------------------------------

    def token(self) -> CacheToken:
        """Take before reading the source of an entry; pass to ``put``."""
        with self._lock:
            self._stamp_queued()
            return CacheToken(self._writes, self._settles)

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The cached value for ``key`` (counted as a hit), or ``default`` (a miss)."""
        with self._lock:
            self._stamp_queued()
            entry = self._data.get(key)
            if entry is not None and not self._valid(entry):
                del self._data[key]
                self._nbytes -= entry.nbytes
                self.invalidated += 1
                entry = None
            if entry is None:
                self.misses += 1
                return default
            self.hits += 1
            return entry.value

    def put(self, key: Hashable, value: Any, token: CacheToken, *, scope: Scope | None = None,
            pending: bool = False) -> bool:
        """Cache ``value`` read after ``token`` was taken; False if it was not kept.

        ``scope`` is the (category, project) whose writes change the value (None: no
        collect changes it); ``pending``: it holds operations read from the journal.
        """
        nbytes = estimate_bytes(key, value) if self.max_bytes is not None else 0
        entry = _Entry(value, token, scope, pending, nbytes)
        with self._lock:
            self._stamp_queued()
            if not self._valid(entry):
                return False  # a write landed while the value was read: it may be stale already
            old = self._data.pop(key, None)
            if old is not None:
                self._nbytes -= old.nbytes
            try:
                self._data[key] = entry
            except ValueError:
                return False  # larger than the whole byte budget
            self._nbytes += nbytes
            while len(self._data) > self.max_size:
                self._data.popitem()
            return True

    def _valid(self, e: _Entry) -> bool:
        if e.pending and e.settles != self._settles:
            return False
        if e.scope is None:
            return True
        return e.writes >= self._floor and self._stamps.get(e.scope, 0) <= e.writes

    # -- invalidation --------------------------------------------------------------

    def collected(self, category: str, project: str | None) -> None:
        """collect()'s hot path: an operation with a new id changes these scopes.

        Without the lock: the scope joins a queue that every lookup, fill and token
        stamps first, under the lock, in order. No read can miss it: collect() queues
        it after the row is committed and before it returns, and a token taken before
        the stamp is older than the stamp, so an entry read meanwhile is never served.
        """
        self._queued.append((category, project))
        self.bound_queue()

    @property
    def queue_scope(self) -> Callable[[Scope], None]:
        """``collected`` without a Python call, for a caller that also calls
        ``bound_queue`` at least once every ``_MAX_QUEUED`` scopes it queues."""
        return self._queued.append

    def bound_queue(self) -> None:
        """Stamp the queued scopes when more than ``_MAX_QUEUED`` wait (nobody reads)."""
        if len(self._queued) > _MAX_QUEUED:
            with self._lock:
                self._stamp_queued()

    def invalidate(self, op: MemoryOperation, dropped: str | None = None, fresh: bool = False) -> None:
        """A new operation was collected: void what it can change (its id, its scopes).

        ``dropped`` is the id of a pending operation evicted to make room for it.
        ``fresh`` says the id was just generated, so no ``get`` entry can hold it (a
        miss is never cached).
        """
        with self._lock:
            self._queued.append((op.category, op.project))
            self._stamp_queued()
            if not fresh:
                self._discard(("get", op.id))
            if dropped is not None:
                self._discard(("get", dropped))
                self._settles += 1

    def _stamp_queued(self) -> None:  # under the lock
        queued = self._queued
        if not queued:
            return
        w, stamps, pop = self._writes, self._stamps, queued.popleft
        while queued:  # only lock holders pop, so the queue cannot empty under us
            category, project = pop()
            w += 1
            stamps[(None, None)] = stamps[(category, None)] = w
            if project is not None:
                stamps[(None, project)] = stamps[(category, project)] = w
        self._writes = w
        if len(stamps) > self._max_stamps:
            stamps.clear()  # bound the table: void every scoped entry instead
            self._floor = w

    def note_settled(self, count: int) -> None:
        """Record a monotonic count of operations that left the journal (delivered or dead).

        When it moved, entries holding journal results are void: what they hold as
        pending is now stored, or will never be.
        """
        with self._lock:
            if count != self._settled_mark:
                self._settled_mark = count
                self._settles += 1

    def discard(self, key: Hashable) -> None:
        """Drop one key if present."""
        with self._lock:
            self._discard(key)

    def _discard(self, key: Hashable) -> None:
        entry = self._data.pop(key, None)
        if entry is not None:
            self._nbytes -= entry.nbytes

    def clear(self) -> None:
        """Drop everything (the counters stay)."""
        with self._lock:
            self._data = self._new_store()  # clearing the old store would count evictions
            self._nbytes = 0

    # -- observing -----------------------------------------------------------------

    def _evicted(self, entry: _Entry) -> None:  # called under the lock, by the store
        self.evictions += 1
        self._nbytes -= entry.nbytes

    def _expired(self, entry: _Entry) -> None:  # called under the lock, by the store
        self.expired += 1
        self._nbytes -= entry.nbytes

    def statistics(self) -> CacheStatistics:
        """A frozen snapshot of the counters and the current footprint."""
        with self._lock:
            self._data.expire()
            looked = self.hits + self.misses
            return CacheStatistics(
                hits=self.hits, misses=self.misses, evictions=self.evictions, expired=self.expired,
                invalidated=self.invalidated, size=len(self._data), bytes=self._nbytes,
                max_size=self.max_size, max_bytes=self.max_bytes,
                hit_rate=self.hits / looked if looked else 0.0,
            )

