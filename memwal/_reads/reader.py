"""Reading memories back: get, search and recent through the cache, with read-your-writes.

An operation is readable the moment ``collect`` returns: reads look in the journal
first (still-undelivered operations), then in the sink, and merge. The journal is read
*before* the sink, so an operation delivered in between is found in the sink instead
of being missed by both. Operations a fallback holds (the journal's ``held`` table)
are read through FallbackSink only while the primary's breaker is open.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import msgspec

from .._core.errors import InvalidOperation, JournalError, SinkUnavailable
from .._core.records import Memory, MemoryOperation, check_project, check_tags, normalise_category
from .cache import MemoryCache, Scope

if TYPE_CHECKING:
    from .._journal.journal import Journal
    from .._sinks.base import Sink

__all__ = ["PENDING_SCAN", "Reader", "matches", "merge_recent", "merge_search"]

#: At most this many undelivered operations (newest first) are matched per search or
#: recent; older pending ones are still found by get. Keeps a read cheap when the
#: sink has been down for long and the journal is deep.
PENDING_SCAN = 1000
MAX_LIMIT = 1000

_MISS: Any = object()
_TOKEN = re.compile(r"[^\W_]+")  # FTS5 unicode61: letters and digits; the rest separates
T = TypeVar("T")


def _fold(text: str) -> str:
    # unicode61 folds case and strips diacritics; do the same so pending ops match alike.
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def phrases(query: str) -> list[str]:
    """Each query word as a phrase of tokens, padded for substring matching."""
    out = []
    for word in query.split():
        toks = _TOKEN.findall(_fold(word))
        if toks:
            out.append(" " + " ".join(toks) + " ")
    return out


def matches(op: MemoryOperation, words: Sequence[str], *, category: str | None = None,
            tags: Sequence[str] = (), project: str | None = None) -> bool:
    """True when ``op`` passes the filters and every phrase is in its content or tags.

    The same rule SQLiteSink's FTS5 query applies: each word of the query is a
    phrase that must occur in one column; case and diacritics are ignored.
    """
    if category is not None and op.category != category:
        return False
    if project is not None and op.project != project:
        return False
    if any(t not in op.tags for t in tags):
        return False
    if not words:
        return False
    content = " " + " ".join(_TOKEN.findall(_fold(op.content))) + " "
    tagtext = " " + " ".join(_TOKEN.findall(_fold(" ".join(op.tags)))) + " "
    return all(w in content or w in tagtext for w in words)


def merge_search(pending: Sequence[Memory], stored: Sequence[Memory], limit: int) -> list[Memory]:
    """Pending matches first (newest first), then the sink's ranking; one copy per id."""
    seen: set[str] = set()
    out: list[Memory] = []
    for m in (*pending, *stored):
        if m.id not in seen:
            seen.add(m.id)
            out.append(m)
    return out[:limit]


def merge_recent(pending: Sequence[Memory], stored: Sequence[Memory], limit: int) -> list[Memory]:
    """Newest first over both; the sink's copy wins when an id is in both."""
    by_id = {m.id: m for m in pending}
    by_id.update((m.id, m) for m in stored)
    return sorted(by_id.values(), key=lambda m: (m.created_at, m.id), reverse=True)[:limit]


def as_memory(op: MemoryOperation) -> Memory:
    """A journal operation as a Memory (``stored_at`` None: not stored yet)."""
    return Memory(**msgspec.structs.asdict(op))


def _check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidOperation("limit", f"must be an int from 1 to {MAX_LIMIT}, got {limit!r}")
    return limit


def _check_category(category: object) -> str | None:
    return None if category is None else normalise_category(category)


class Reader:
    """The collector's read path (one per collector).

    Example:
        >>> reader = Reader(journal, sink, MemoryCache(), lambda: delivered + dead, timeout=15.0)
        >>> await reader.search("parser crash", category="bug")
    """

    def __init__(self, journal: Journal, sink: Sink, cache: MemoryCache | None, settled: Callable[[], int],
                 *, timeout: float) -> None:
        self.journal = journal
        self.sink = sink
        self.cache = cache
        self.settled = settled  # operations delivered or dead-lettered so far (a count that only grows)
        self.timeout = timeout

    def _check_open(self) -> None:
        if not self.journal.is_open:
            raise JournalError("collector is not running: cannot read", path=str(self.journal.path))

    async def _sink_read(self, fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        try:
            with anyio.fail_after(self.timeout):
                return await fn(*args, **kw)
        except TimeoutError as exc:
            raise SinkUnavailable(f"{self.sink.name} did not answer a read within {self.timeout} s") from exc

    def _lookup(self, key: tuple[Any, ...]) -> Any:
        if self.cache is None:
            return _MISS
        # Results holding pending ops are void once any op settles (delivered or dead).
        self.cache.note_settled(self.settled())
        return self.cache.get(key, _MISS)

    def _store(self, key: tuple[Any, ...], value: Any, token: Any, scope: Scope | None, pending: bool) -> None:
        if self.cache is not None:
            self.cache.put(key, value, token, scope=scope, pending=pending)

    def _token(self) -> Any:
        return None if self.cache is None else self.cache.token()

    async def get(self, op_id: str) -> Memory | None:
        if not isinstance(op_id, str) or not op_id:
            raise InvalidOperation("op_id", f"must be a non-empty str, got {op_id!r}")
        self._check_open()
        key = ("get", op_id)
        hit = self._lookup(key)
        if hit is not _MISS:
            return hit  # type: ignore[no-any-return]
        op = await anyio.to_thread.run_sync(self.journal.find, op_id)
        if op is not None:
            return as_memory(op)  # pending: may still be dead-lettered, so not cached
        token = self._token()
        mem = await self._sink_read(self.sink.get, op_id)
        if mem is not None:
            self._store(key, mem, token, None, False)  # a stored memory does not change
        return mem

    async def search(self, query: str, *, category: str | None = None, tags: Sequence[str] | None = None,
                     project: str | None = None, limit: int = 10) -> list[Memory]:
        if not isinstance(query, str) or not query.strip():
            raise InvalidOperation("query", f"must be a non-empty str, got {query!r}")
        cat, tag_t, proj, limit = _check_category(category), check_tags(tags), check_project(project), _check_limit(limit)
        self._check_open()
        key = ("search", query, cat, tuple(sorted(set(tag_t))), proj, limit)
        hit = self._lookup(key)
        if hit is not _MISS:
            return list(hit)
        token = self._token()
        words = phrases(query)
        ops = await anyio.to_thread.run_sync(lambda: self.journal.undelivered(category=cat, limit=PENDING_SCAN))
        pending = [as_memory(op) for op in ops if matches(op, words, category=cat, tags=tag_t, project=proj)]
        stored = await self._sink_read(self.sink.search, query, category=cat, tags=list(tag_t) or None,
                                       project=proj, limit=limit)
        result = merge_search(pending, stored, limit)
        ids = {m.id for m in pending}
        self._store(key, tuple(result), token, (cat, proj), any(m.id in ids for m in result))
        for m in stored:  # each is the memory a get of its id would read: agents recall, then open
            self._store(("get", m.id), m, token, None, False)
        return result

    async def recent(self, category: str | None = None, *, limit: int = 20) -> list[Memory]:
        cat, limit = _check_category(category), _check_limit(limit)
        self._check_open()
        key = ("recent", cat, limit)
        hit = self._lookup(key)
        if hit is not _MISS:
            return list(hit)
        token = self._token()
        ops = await anyio.to_thread.run_sync(lambda: self.journal.undelivered(category=cat, limit=limit))
        pending = [as_memory(op) for op in ops]
        stored = await self._sink_read(self.sink.recent, cat, limit=limit)
        result = merge_recent(pending, stored, limit)
        taken = {id(m) for m in pending}
        self._store(key, tuple(result), token, (cat, None), any(id(m) in taken for m in result))
        return result
