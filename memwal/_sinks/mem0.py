"""Mem0Sink: memories to mem0 over aiohttp (self-hosted OSS server or hosted platform)."""

from __future__ import annotations

import email.utils
import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import msgspec
from cachetools import LRUCache

from .._config import PerformanceConfig
from .._errors import ConfigError, SinkRejected, SinkUnavailable
from .._records import Memory, MemoryOperation, Priority
from .base import DeliveryReport, Sink

if TYPE_CHECKING:
    from .._config import Config

__all__ = ["Mem0Sink", "classify", "decode_memory", "encode_metadata", "parse_retry_after"]

log = logging.getLogger("memwal")

PERMANENT = frozenset({400, 401, 403, 404, 409, 413, 422})
# Payload keys the OSS server owns: metadata keys named like these are overwritten or hidden
# (mem0-api.md §2.4), so memwal escapes them; "memwal_" keys are memwal's own.
MEM0_RESERVED = frozenset({"data", "hash", "created_at", "updated_at", "user_id", "agent_id", "run_id",
                           "app_id", "actor_id", "role", "expiration_date", "text_lemmatized", "id", "memory",
                           "score", "metadata"})
OWN_KEYS = ("memwal_id", "category", "priority", "tags", "project", "memwal_created_at")
ESCAPE = "memwal_meta_"
LOOKUP_CHUNK = 100
_UNBOUND = PerformanceConfig()  # what the sink uses until bind() gives it the collector's
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


# -- plain decisions (no I/O) --------------------------------------------------------


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "inf", "nan" and "1e400" parse, but say nothing about when to come back
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def classify(status: int, body: str, retry_after: str | None, *, what: str, now: float) -> Exception | None:
    """None for 2xx; SinkRejected for a permanent status; SinkUnavailable otherwise.

    408, 429 and 5xx are transient; 400, 401, 403, 404, 409, 413, 422 and any other
    3xx/4xx are permanent (a redirect means a wrong base URL, not a busy server).
    """
    if 200 <= status < 300:
        return None
    text = f"{what}: HTTP {status}: {body[:500]}"
    if status in (408, 429) or status >= 500:
        return SinkUnavailable(text, retry_after=parse_retry_after(retry_after, now))
    return SinkRejected(text)


def encode_metadata(op: MemoryOperation) -> dict[str, Any]:
    """mem0 metadata for ``op``: its own metadata plus memwal's fields.

    A user key that mem0 reserves (``created_at``, ``role``, ``data`` ...) or that is
    memwal's (``category``, ``memwal_*`` ...) is stored as ``memwal_meta_<key>`` so it
    is neither hidden by mem0 nor confused with memwal's; ``created_at`` itself is
    stored as ``memwal_created_at`` (a float, Unix seconds) for the same reason.
    """
    out = {(ESCAPE + k if k in MEM0_RESERVED or k in OWN_KEYS or k.startswith("memwal_") else k): v
           for k, v in op.metadata.items()}
    out.update(memwal_id=op.id, category=op.category, priority=op.priority.value, tags=list(op.tags),
               memwal_created_at=op.created_at)
    if op.project is not None:
        out["project"] = op.project
    return out


def _timestamp(value: Any) -> float:
    if not isinstance(value, str):
        return 0.0
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0.0


def decode_memory(item: Mapping[str, Any]) -> Memory | None:
    """A memwal Memory from a mem0 memory item, or None if memwal did not write it."""
    meta = item.get("metadata") or {}
    if not isinstance(meta, Mapping) or not isinstance(meta.get("memwal_id"), str):
        return None
    data = item.get("data")
    content = item.get("memory") or (data.get("memory") if isinstance(data, Mapping) else "") or ""
    user = {}
    for k, v in meta.items():
        if k.startswith(ESCAPE):
            user[k[len(ESCAPE):]] = v
        elif k not in OWN_KEYS and k not in MEM0_RESERVED and not k.startswith("memwal_"):
            user[k] = v
    try:
        priority = Priority(meta.get("priority", "medium"))
    except ValueError:
        priority = Priority.MEDIUM
    return Memory(id=meta["memwal_id"], category=str(meta.get("category", "")), content=content, metadata=user,
                  priority=priority, tags=tuple(meta.get("tags") or ()), project=meta.get("project"),
                  created_at=float(meta.get("memwal_created_at") or 0.0),
                  stored_at=_timestamp(item.get("created_at")))


def _items(body: Any) -> list[Any]:
    """The result list of an add, search or list answer: a bare list or ``{"results": [...]}``."""
    if isinstance(body, list):
        return body
    results = body.get("results") if isinstance(body, Mapping) else None
    return results if isinstance(results, list) else []


class Mem0Sink(Sink):
    """Deliver each operation as one mem0 memory; read them back by memwal id.

    ``api="oss"`` speaks the self-hosted server (``POST /memories``, ``X-API-Key``);
    ``api="platform"`` the hosted one (``POST /v3/memories/add/``, or ``/v1/memories/``
    with ``platform_add="v1"``; ``Authorization: Token``). Each request gets ``timeout``
    seconds; unset, half of ``performance.operation_timeout`` (a delivery is a lookup then
    an add, both inside the consumer's budget), or 7.5 s unbound. Connections are capped
    at ``performance.max_concurrent_ops`` (128 unbound). An injected ``session`` is used as
    it is and never closed.

    No duplicates after an ambiguous failure: mem0 has no idempotency key, so before
    adding, every batch is looked up by ``memwal_id`` (one filtered request per 100
    operations) and operations already in mem0 are not sent again. The rule is
    "always look up" rather than "look up after a failure this process saw" because
    the other ambiguous cases leave no trace here: a process killed mid-request, a
    delivery cancelled by the consumer's timeout, rows another process had leased,
    FallbackSink reconciliation. The cost is one request per batch. The limit: an add
    the server is still processing when the lookup runs (the client gave up, the
    server did not) is not seen; the lookup is sound once that request has ended.

    Example:
        >>> sink = Mem0Sink("http://127.0.0.1:8888", api_key="m0sk_...", user_id="agent-1")
        >>> async with AsyncMemoryCollector("agent.journal", sink) as c:
        ...     await c.collect_async("bug", "build fails on arm64")
    """

    def __init__(
        self,
        base_url: str,
        *,
        api: str = "oss",
        api_key: str | None = None,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        infer: bool = False,
        session: aiohttp.ClientSession | None = None,
        timeout: float | None = None,
        platform_add: str = "v3",
    ) -> None:
        if api not in ("oss", "platform"):
            raise ConfigError(f"must be 'oss' or 'platform', got {api!r}", path="Mem0Sink.api")
        if platform_add not in ("v3", "v1"):
            raise ConfigError(f"must be 'v3' or 'v1', got {platform_add!r}", path="Mem0Sink.platform_add")
        self.entity = {k: v for k, v in (("user_id", user_id), ("agent_id", agent_id), ("run_id", run_id)) if v}
        if not self.entity:
            raise ConfigError("one of user_id, agent_id, run_id is required (mem0 rejects an add without one)",
                              path="Mem0Sink")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"must be positive, got {timeout!r}", path="Mem0Sink.timeout")
        self.base_url = base_url.rstrip("/")
        self.api, self.infer, self.platform_add = api, infer, platform_add
        self.headers = {"Content-Type": "application/json"}
        if api_key and api == "oss":
            self.headers["X-API-Key"] = api_key
        elif api_key:
            self.headers["Authorization"] = f"Token {api_key}"
            self.headers["Mem0-User-ID"] = hashlib.md5(api_key.encode()).hexdigest()
        self._timeout_arg = timeout
        self.timeout = timeout if timeout is not None else _UNBOUND.operation_timeout / 2
        self.limit = _UNBOUND.max_concurrent_ops
        self._session, self._owns = session, session is None
        self._closed = False
        self.mem0_ids: LRUCache[str, str] = LRUCache(maxsize=100_000)  # memwal id -> mem0 id
        self.counts: Counter[str] = Counter()  # added, found, transient, rejected, lookups

    def __repr__(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        return f"<Mem0Sink {self.api} {self.base_url} {counts}>"

    @property
    def name(self) -> str:
        return f"Mem0Sink({self.api})"

    def bind(self, config: Config, clock: Any) -> None:
        self.limit = config.performance.max_concurrent_ops
        if self._timeout_arg is None:
            self.timeout = config.performance.operation_timeout / 2

    # -- HTTP ------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise SinkUnavailable(f"{self.name} is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.limit))
        return self._session

    async def _request(self, method: str, path: str, body: Any = None, params: Mapping[str, str] | None = None) -> Any:
        """One request; the decoded JSON answer, or SinkUnavailable / SinkRejected."""
        what = f"{method} {path}"
        try:
            async with self._http().request(
                method, self.base_url + path, data=None if body is None else _enc.encode(body), params=params,
                headers=self.headers, timeout=aiohttp.ClientTimeout(total=self.timeout), allow_redirects=False,
            ) as resp:
                raw = await resp.read()
                err = classify(resp.status, raw.decode("utf-8", "replace"), resp.headers.get("Retry-After"),
                               what=what, now=time.time())
        except TimeoutError as exc:
            raise SinkUnavailable(f"{what}: no answer within {self.timeout:g}s; outcome unknown") from exc
        except aiohttp.ClientError as exc:
            raise SinkUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
        if err is not None:
            raise err
        try:
            return _dec.decode(raw) if raw else None
        except msgspec.DecodeError as exc:
            raise SinkUnavailable(f"{what}: answer is not JSON: {raw[:200]!r}") from exc

    # -- delivery --------------------------------------------------------------------

    async def deliver(self, ops: Sequence[MemoryOperation]) -> DeliveryReport | None:
        """Look the batch up by memwal_id, then add the missing ones concurrently."""
        present = await self._find([op.id for op in ops])
        for op in ops:
            if op.id in present:
                self.counts["found"] += 1
                self.mem0_ids[op.id] = present[op.id]["id"]
                log.info("operation %s is already in mem0 as %s; not sent again", op.id, present[op.id]["id"])
        failed: dict[str, SinkUnavailable | SinkRejected] = {}
        async with anyio.create_task_group() as tg:
            for op in ops:
                if op.id not in present:
                    tg.start_soon(self._add, op, failed)
        return DeliveryReport(failed=failed) if failed else None

    def _add_request(self, op: MemoryOperation) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": op.content}], **self.entity,
                                "metadata": encode_metadata(op), "infer": self.infer}
        if self.api == "oss":
            return "/memories", body
        if self.platform_add == "v1":
            body.update(async_mode=self.infer, output_format="v1.1", version="v2")
            return "/v1/memories/", body
        return "/v3/memories/add/", body

    async def _add(self, op: MemoryOperation, failed: dict[str, SinkUnavailable | SinkRejected]) -> None:
        path, body = self._add_request(op)
        try:
            answer = await self._request("POST", path, body)
        except (SinkUnavailable, SinkRejected) as exc:
            kind = "rejected" if isinstance(exc, SinkRejected) else "transient"
            self.counts[kind] += 1
            failed[op.id] = exc
            log.info("mem0 add of operation %s failed (%s): %s", op.id, kind, exc)
            return
        items = _items(answer)
        status = answer.get("status") if isinstance(answer, Mapping) else None
        if status == "FAILED" or any(isinstance(i, Mapping) and i.get("status") == "FAILED" for i in items):
            self.counts["transient"] += 1
            failed[op.id] = SinkUnavailable(f"POST {path}: mem0 reports FAILED: {str(answer)[:300]}")
            return
        self.counts["added"] += 1
        ids = [i["id"] for i in items if isinstance(i, Mapping) and isinstance(i.get("id"), str)]
        if ids:
            self.mem0_ids[op.id] = ids[0]

    # -- lookups by memwal id ------------------------------------------------------

    async def _find(self, op_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """mem0 items carrying these memwal ids, by memwal id (first one if several).

        The chunks are looked up concurrently: one round trip per batch, not per chunk.
        """
        chunks = [list(op_ids[i : i + LOOKUP_CHUNK]) for i in range(0, len(op_ids), LOOKUP_CHUNK)]
        answers: list[list[Any]] = [[] for _ in chunks]
        errors: list[SinkUnavailable | SinkRejected] = []

        async def look(n: int) -> None:
            self.counts["lookups"] += 1
            try:
                answers[n] = await self._query_ids(chunks[n])
            except (SinkUnavailable, SinkRejected) as exc:  # raised below, not as a group
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for n in range(len(chunks)):
                tg.start_soon(look, n)
        if errors:
            raise errors[0]
        found: dict[str, dict[str, Any]] = {}
        for chunk, items in zip(chunks, answers, strict=True):
            for item in items:
                meta = item.get("metadata") if isinstance(item, Mapping) else None
                mid = meta.get("memwal_id") if isinstance(meta, Mapping) else None
                if mid in chunk:
                    if mid in found:
                        log.warning("operation %s is in mem0 more than once (%s, %s)", mid, found[mid]["id"],
                                    item.get("id"))
                    found.setdefault(mid, item)
        return found

    async def _query_ids(self, chunk: list[str]) -> list[Any]:
        if self.api == "oss":
            # Metadata filters exist only in /search, which needs a query; threshold 0
            # and top_k above the chunk size make it return every match, not the nearest.
            body = {"query": "memwal_id lookup", "filters": {**self.entity, "memwal_id": {"in": chunk}},
                    "top_k": 2 * len(chunk), "threshold": 0}
            return _items(await self._request("POST", "/search", body))
        ids = {"OR": [{"metadata": {"memwal_id": c}} for c in chunk]}  # platform metadata has no "in"
        body = {"filters": {"AND": [*({k: v} for k, v in self.entity.items()), ids]}}
        return _items(await self._request("POST", "/v3/memories/", body, params={"page_size": "200"}))

    # -- reads -------------------------------------------------------------------------

    async def get(self, op_id: str) -> Memory | None:
        """The memory of operation ``op_id``: by the mem0 id kept at delivery, else by metadata."""
        mem0_id = self.mem0_ids.get(op_id)
        if mem0_id is not None:
            path = f"/memories/{mem0_id}" if self.api == "oss" else f"/v1/memories/{mem0_id}/"
            try:
                item = await self._request("GET", path)
            except SinkRejected:  # platform: 404 once deleted
                item = None
            memory = decode_memory(item) if isinstance(item, Mapping) else None
            if memory is not None and memory.id == op_id:
                return memory
        found = await self._find([op_id])
        if op_id not in found:
            return None
        self.mem0_ids[op_id] = found[op_id]["id"]
        return decode_memory(found[op_id])

    async def search(
        self,
        query: str,
        *,
        category: str | None = None,
        tags: Sequence[str] | None = None,
        project: str | None = None,
        limit: int = 10,
    ) -> list[Memory]:
        """mem0's search, limited to memwal memories; tags are matched here, not by mem0."""
        top_k = limit * 4 if tags else limit
        wanted = {k: v for k, v in (("category", category), ("project", project)) if v is not None}
        if self.api == "oss":
            body: dict[str, Any] = {"query": query, "filters": {**self.entity, **wanted}, "top_k": top_k}
            items = _items(await self._request("POST", "/search", body))
        else:
            meta = [{"metadata": {k: v}} for k, v in wanted.items()]
            body = {"query": query, "filters": {"AND": [*({k: v} for k, v in self.entity.items()), *meta]},
                    "top_k": top_k}
            items = _items(await self._request("POST", "/v3/memories/search/", body))
        return self._memories(items, tags, limit)

    async def recent(self, category: str | None = None, *, limit: int = 20) -> list[Memory]:
        """The newest memwal memories (mem0 lists up to 1000 on OSS, 200 on the platform)."""
        if self.api == "oss":
            params = {**self.entity, "top_k": "1000"}
            items = _items(await self._request("GET", "/memories", params=params))
        else:
            filters: list[dict[str, Any]] = [{k: v} for k, v in self.entity.items()]
            if category is not None:
                filters.append({"metadata": {"category": category}})
            items = _items(await self._request("POST", "/v3/memories/", {"filters": {"AND": filters}},
                                               params={"page_size": "200"}))
        found = [m for m in self._memories(items, None, len(items)) if category is None or m.category == category]
        found.sort(key=lambda m: m.created_at, reverse=True)
        return found[:limit]

    @staticmethod
    def _memories(items: list[Any], tags: Sequence[str] | None, limit: int) -> list[Memory]:
        out: list[Memory] = []
        seen: set[str] = set()
        for item in items:
            m = decode_memory(item) if isinstance(item, Mapping) else None
            if m is None or m.id in seen or not all(t in m.tags for t in tags or ()):
                continue
            seen.add(m.id)
            out.append(m)
        return out[:limit]

    async def ping(self) -> None:
        """Check the server and the key: platform ``GET /v1/ping/``, OSS a tiny list."""
        if self.api == "platform":
            await self._request("GET", "/v1/ping/")
        else:
            await self._request("GET", "/memories", params={**self.entity, "top_k": "1"})

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._session is not None and self._owns:
            await self._session.close()
