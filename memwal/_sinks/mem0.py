"""Mem0Sink: memories to mem0 over aiohttp (self-hosted OSS server or hosted platform)."""

from __future__ import annotations

import email.utils
import hashlib
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import anyio
import msgspec
from cachetools import LRUCache

from .._core.config import PerformanceConfig
from .._core.errors import CircuitOpen, ConfigError, SinkRejected, SinkUnavailable
from .._core.records import Memory, MemoryOperation, Priority
from ._ledger import SendLedger
from ._limit import AdaptiveLimit
from .base import DeliveryReport, Sink

if TYPE_CHECKING:
    from .._core.config import Config

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
TOP_K_MAX = 1000  # the OSS server answers 422 above this
BESIDE_JOURNAL = "beside-journal"  # Mem0Sink(ledger=...) default: a file beside the journal it is bound to
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


def classify(status: int, body: str, retry_after: str | None, *, what: str,
             now: float) -> SinkUnavailable | SinkRejected | None:
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


def _memwal_id(item: Any) -> str | None:
    meta = item.get("metadata") if isinstance(item, Mapping) else None
    mid = meta.get("memwal_id") if isinstance(meta, Mapping) else None
    return mid if isinstance(mid, str) else None


def _items(body: Any) -> list[Any]:
    """The result list of an add, search or list answer: a bare list or ``{"results": [...]}``."""
    if isinstance(body, list):
        return body
    results = body.get("results") if isinstance(body, Mapping) else None
    return results if isinstance(results, list) else []


class _Failed(Exception):
    """A request that failed: ``error`` for the consumer, ``maybe_stored`` if mem0 may have acted on it."""

    def __init__(self, error: SinkUnavailable | SinkRejected, *, maybe_stored: bool, overload: bool = False) -> None:
        super().__init__(str(error))
        self.error, self.maybe_stored, self.overload = error, maybe_stored, overload


# Answers that say the request was not acted on (rate limited, unavailable, request timeout).
NOT_PROCESSED = frozenset({408, 429, 503})
# Answers that say the server is overloaded: the concurrency limit backs off.
OVERLOAD = frozenset({429, 502, 503, 504})


def _trace_sent() -> aiohttp.TraceConfig:
    """Marks a request's ``trace_request_ctx`` once its headers left: from then on it may be acted on."""

    async def sent(_session: Any, ctx: Any, _params: Any) -> None:
        if isinstance(ctx.trace_request_ctx, dict):
            ctx.trace_request_ctx["sent"] = True

    tc = aiohttp.TraceConfig()
    tc.on_request_headers_sent.append(sent)
    return tc


class _Delivery:
    """What one ``deliver`` call learnt, written to the ledger when it ends."""

    def __init__(self) -> None:
        self.failed: dict[str, SinkUnavailable | SinkRejected] = {}
        self.stored: dict[str, str] = {}
        self.unsent: list[str] = []  # fresh operations that certainly did not reach mem0


class Mem0Sink(Sink):
    """Deliver each operation as one mem0 memory; read them back by memwal id.

    ``api="oss"`` speaks the self-hosted server (``POST /memories``, ``X-API-Key``);
    ``api="platform"`` the hosted one (``POST /v3/memories/add/``, or ``/v1/memories/``
    with ``platform_add="v1"``; ``Authorization: Token``). Each request gets ``timeout``
    seconds from when it is sent (unset: half of ``performance.operation_timeout``, or
    7.5 s unbound); it never waits for a connection: requests wait for a slot of the
    adaptive concurrency limit (``performance.adaptive_concurrency``, at most
    ``performance.max_concurrent_ops``; see ``_limit.py``), in arrival order, and the
    connection pool has a connection for every slot. An injected ``session`` is used as
    it is and never closed (then a request that failed after connecting counts as sent).

    Exactly once: mem0 has no idempotency key, so the sink keeps a ledger of the
    operations it may have sent, a SQLite file shared by every process delivering from
    one journal and surviving a crash. By default (``ledger="beside-journal"``) it sits
    beside the journal the collector (or ``memwal-replay replay``) binds the sink to:
    ``<journal>.mem0-ledger-<key>``, one per mem0 endpoint and entity (``key`` is a hash
    of the api, base URL and entity, so two sinks of a FallbackSink never share one);
    until bound, and with ``ledger=None``, it is kept in this process only; a path puts
    it there. An
    operation never sent is added with no look-up (one request per memory). One whose
    earlier attempt may have reached mem0 (a timeout after sending, a lost answer, a
    5xx, a process killed mid-request, a cancelled delivery) is looked up first: on the
    OSS server by listing the entity's memories when it has fewer than 1000 (exact),
    else by a search whose query is the memory's own text, filtered by ``memwal_id``
    (the memory itself is at distance ~0, first among the index's candidates; this
    misses only if 40 or more memories in the whole table are as close to the text:
    identical texts). On the platform, by the metadata filter of ``POST /v3/memories/``.
    A server goes on with a request after its client gave up (the real one does), and a
    look-up overtakes it, so a suspect is looked up only ``settle`` seconds after its
    last send (default: the time a delivery may start requests plus twice ``timeout``);
    until then it is retried later with that ``retry_after``. The remaining limit: a
    server that handles a request more than ``settle`` seconds after it was sent.
    ``lookup_first=True`` looks every operation up before its first add here, for
    operations whose history is unknown (``memwal-replay replay`` of dead letters).

    Example:
        >>> sink = Mem0Sink("http://127.0.0.1:8888", api_key="m0sk_...", user_id="agent-1",
        ...                 ledger="agent.journal.mem0-ledger")  # default: beside the journal
        >>> async with AsyncMemoryCollector("agent.journal", sink) as c:
        ...     await c.collect_async("bug", "build fails on arm64")
    """

    def __init__(
        self,
        base_url: str,
        *,
        api: Literal["oss", "platform"] = "oss",
        api_key: str | None = None,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        infer: bool = False,
        session: aiohttp.ClientSession | None = None,
        timeout: float | None = None,
        platform_add: Literal["v3", "v1"] = "v3",
        ledger: str | os.PathLike[str] | None = BESIDE_JOURNAL,
        lookup_first: bool = False,
        settle: float | None = None,
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
        self.limiter = AdaptiveLimit(self.limit, adaptive=_UNBOUND.adaptive_concurrency)
        self._window: float | None = None  # seconds a delivery may last (None: unbound)
        self._session, self._owns = session, session is None
        self._closed = False
        if settle is not None and settle < 0:
            raise ConfigError(f"must be 0 or more, got {settle!r}", path="Mem0Sink.settle")
        self._beside_journal = isinstance(ledger, str) and ledger == BESIDE_JOURNAL
        self.ledger = SendLedger(None if self._beside_journal else ledger)
        self.lookup_first = lookup_first
        self._settle_arg = settle
        self.settle = settle if settle is not None else 2 * self.timeout
        self._entity_large = False  # the entity has 1000+ memories: a listing cannot be complete
        self.mem0_ids: LRUCache[str, str] = LRUCache(maxsize=100_000)  # memwal id -> mem0 id
        # added, found, transient, rejected, ambiguous, not_sent, lookups, lookup_list, lookup_search
        self.counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        return f"<Mem0Sink {self.api} {self.base_url} {counts}>"

    @property
    def name(self) -> str:
        return f"Mem0Sink({self.api})"

    def bind(self, config: Config, clock: Any) -> None:
        perf = config.performance
        self.limit = perf.max_concurrent_ops
        if self._timeout_arg is None:
            self.timeout = perf.operation_timeout / 2
        self.limiter = AdaptiveLimit(self.limit, adaptive=perf.adaptive_concurrency)
        # A delivery must end inside the consumer's operation_timeout (less a margin for
        # the thread hops before the first request): it starts a request only while one
        # of the slowest recent answers still fits (see _start_by), each request's
        # timeout is cut to the time left, and operations left are handed back unsent
        # (no attempt used).
        self._window = perf.operation_timeout - max(1.0, perf.operation_timeout / 10)
        if self._settle_arg is None:
            self.settle = self._window + self.timeout

    def bind_journal(self, journal: str | os.PathLike[str]) -> None:
        """Put the ledger beside ``journal`` (unless ``ledger`` was given): ``<journal>.mem0-ledger-<key>``.

        Opens nothing here (the file is opened by the first delivery, in a worker thread).
        A sink that delivered before it was bound keeps its in-process ledger (its marks
        would be lost by a switch), and says so.
        """
        if not self._beside_journal or self.ledger.path is not None:
            return
        if self.ledger.used:
            log.warning("%s delivered before it was bound to journal %s: its send ledger stays in this "
                        "process (pass ledger=PATH for exactly once across processes)", self.name, journal)
            return
        key = hashlib.sha256(repr((self.api, self.base_url, sorted(self.entity.items()))).encode()).hexdigest()[:12]
        old, self.ledger = self.ledger, SendLedger(f"{os.fspath(journal)}.mem0-ledger-{key}",
                                                   retention=self.ledger.retention)
        old.close()

    def concurrency(self) -> dict[str, float | int]:
        """The adaptive concurrency limit now: limit, in_flight, queued, min_rtt, last_rtt, backoffs."""
        return self.limiter.snapshot()

    # -- HTTP ------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise SinkUnavailable(f"{self.name} is closed")
        if self._session is None:
            # A connection for every slot of the limiter: no request waits in the pool.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.limit),
                                                  trace_configs=[_trace_sent()])
        return self._session

    async def _request(self, method: str, path: str, body: Any = None, params: Mapping[str, str] | None = None,
                       *, deadline: float | None = None) -> Any:
        """One request through the limiter; the decoded JSON answer, or raises _Failed.

        ``deadline`` (anyio time) bounds the wait for a slot: past it the request is not
        sent (CircuitOpen: the consumer hands the row back without using an attempt).
        """
        what = f"{method} {path}"
        timeout = self.timeout
        if deadline is None:
            await self.limiter.acquire()
        else:
            end, start_by = deadline, self._start_by(deadline)
            acquired = False
            if anyio.current_time() < start_by:  # (acquire takes a free slot without a checkpoint)
                with anyio.move_on_after(start_by - anyio.current_time()):
                    await self.limiter.acquire()
                    acquired = True
            if acquired:
                timeout = max(0.001, min(self.timeout, end - anyio.current_time()))
            else:
                raise _Failed(CircuitOpen(f"{what}: not sent: mem0 is at its concurrency limit "
                                          f"({self.limiter.snapshot()['limit']} in flight)"), maybe_stored=False)
        try:
            http = self._http()
        except SinkUnavailable as exc:
            self.limiter.release(None)
            raise _Failed(exc, maybe_stored=False) from None
        state: dict[str, bool] = {"sent": not self._owns}  # an injected session has no trace: assume sent
        rtt: float | None = None
        overload = False
        started = time.monotonic()
        try:
            try:
                with anyio.fail_after(timeout):
                    async with http.request(
                        method, self.base_url + path, data=None if body is None else _enc.encode(body),
                        params=params, headers=self.headers, allow_redirects=False, trace_request_ctx=state,
                        timeout=aiohttp.ClientTimeout(total=None),
                    ) as resp:
                        raw = await resp.read()
            except TimeoutError as exc:
                overload = state["sent"]
                raise _Failed(SinkUnavailable(f"{what}: no answer within {timeout:g}s of sending; "
                                              "outcome unknown" if state["sent"] else
                                              f"{what}: not sent within {timeout:g}s (connecting)"),
                              maybe_stored=state["sent"]) from exc
            except aiohttp.ClientConnectorError as exc:  # never connected: certainly not sent
                raise _Failed(SinkUnavailable(f"{what}: {type(exc).__name__}: {exc}"), maybe_stored=False) from exc
            except aiohttp.ClientError as exc:
                raise _Failed(SinkUnavailable(f"{what}: {type(exc).__name__}: {exc}"),
                              maybe_stored=state["sent"]) from exc
            status = resp.status
            overload = status in OVERLOAD
            rtt = None if overload else time.monotonic() - started
            err = classify(status, raw.decode("utf-8", "replace"), resp.headers.get("Retry-After"), what=what,
                           now=time.time())
            if err is not None:
                raise _Failed(err, maybe_stored=isinstance(err, SinkUnavailable) and status not in NOT_PROCESSED,
                              overload=overload)
            try:
                return _dec.decode(raw) if raw else None
            except msgspec.DecodeError as exc:
                raise _Failed(SinkUnavailable(f"{what}: answer is not JSON: {raw[:200]!r}"),
                              maybe_stored=True) from exc
        finally:
            self.limiter.release(rtt, overload=overload)

    def _start_by(self, end: float) -> float:
        """The last moment to start a request that must end by ``end``: room for four
        of the slowest recent answers (at least 1 s, at most ``timeout``)."""
        return end - min(self.timeout, max(1.0, 4 * self.limiter.high_rtt))

    async def _call(self, method: str, path: str, body: Any = None, params: Mapping[str, str] | None = None) -> Any:
        """``_request`` for reads and look-ups: raises the SinkUnavailable / SinkRejected itself."""
        try:
            return await self._request(method, path, body, params)
        except _Failed as f:
            raise f.error from f.__cause__

    # -- delivery --------------------------------------------------------------------

    async def deliver(self, ops: Sequence[MemoryOperation]) -> DeliveryReport | None:
        """Add operations never sent at once; look up first only those an earlier attempt may have stored."""
        run = _Delivery()
        rest = []
        for op in ops:
            mem0_id = self.mem0_ids.get(op.id)
            if mem0_id is not None:
                self._found(op, mem0_id, "stored by this process")
            else:
                rest.append(op)
        if self._closed:
            raise SinkUnavailable(f"{self.name} is closed")
        marks = await anyio.to_thread.run_sync(self.ledger.state, [op.id for op in rest]) if rest else {}
        now = time.time()
        suspects, fresh = [], []
        for op in rest:
            mark = marks.get(op.id)
            if mark is None:
                fresh.append(op)
            elif mark[0] is not None:
                self.mem0_ids[op.id] = mark[0]
                self._found(op, mark[0], "in the ledger")
            elif now - mark[1] < self.settle:  # its last send may still be in progress at mem0
                wait = self.settle - (now - mark[1])
                self.counts["settling"] += 1
                run.failed[op.id] = SinkUnavailable(f"operation {op.id}: an earlier attempt may still be in "
                                                    f"progress at mem0; looked up in {wait:.1f}s", retry_after=wait)
            else:
                suspects.append(op)
        if self.lookup_first:
            suspects, fresh = suspects + fresh, []
        await anyio.to_thread.run_sync(self.ledger.mark, [op.id for op in fresh])
        deadline = None if self._window is None else anyio.current_time() + self._window  # the end
        todo = [(op, False) for op in fresh]
        try:
            if suspects:
                todo += await self._check(suspects, run)
            await self._send_all(todo, run, deadline)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._settle_ledger, run)
        return DeliveryReport(failed=run.failed) if run.failed else None

    def _settle_ledger(self, run: _Delivery) -> None:
        self.ledger.settle(run.stored, run.unsent)
        self.ledger.prune()

    def _found(self, op: MemoryOperation, mem0_id: str, how: str) -> None:
        self.counts["found"] += 1
        log.info("operation %s is already in mem0 as %s (%s); not sent again", op.id, mem0_id, how)

    async def _check(self, suspects: list[MemoryOperation], run: _Delivery) -> list[tuple[MemoryOperation, bool]]:
        """Look up operations an earlier attempt may have stored; the ones to add (as suspects)."""
        try:
            present = await self._lookup(suspects)
        except (SinkUnavailable, SinkRejected) as exc:
            for op in suspects:
                run.failed[op.id] = exc if isinstance(exc, SinkUnavailable) else SinkUnavailable(str(exc))
            log.info("look-up of %d operations failed: %s", len(suspects), exc)
            return []
        todo = []
        for op in suspects:
            if op.id in present:
                self.mem0_ids[op.id] = run.stored[op.id] = present[op.id]
                self._found(op, present[op.id], "looked up")
            else:
                todo.append((op, True))
        await anyio.to_thread.run_sync(self.ledger.mark, [op.id for op, _ in todo])  # a new send: a new time
        return todo

    async def _send_all(self, todo: list[tuple[MemoryOperation, bool]], run: _Delivery,
                        deadline: float | None) -> None:
        """Add ``todo`` with a few workers: the limiter's queue then interleaves concurrent deliveries."""
        if not todo:
            return
        queue = iter(todo)

        async def worker() -> None:
            for op, suspect in queue:
                await self._add(op, suspect, run, deadline)

        workers = min(len(todo), max(2, 2 * int(self.limiter.limit)))
        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(worker)

    def _add_request(self, op: MemoryOperation) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": op.content}], **self.entity,
                                "metadata": encode_metadata(op), "infer": self.infer}
        if self.api == "oss":
            return "/memories", body
        if self.platform_add == "v1":
            body.update(async_mode=self.infer, output_format="v1.1", version="v2")
            return "/v1/memories/", body
        return "/v3/memories/add/", body

    async def _add(self, op: MemoryOperation, suspect: bool, run: _Delivery, deadline: float | None) -> None:
        path, body = self._add_request(op)
        try:
            answer = await self._request("POST", path, body, deadline=deadline)
        except _Failed as f:
            self._failed(op, suspect, run, f)
            return
        items = _items(answer)
        status = answer.get("status") if isinstance(answer, Mapping) else None
        if status == "FAILED" or any(isinstance(i, Mapping) and i.get("status") == "FAILED" for i in items):
            self.counts["transient"] += 1
            run.failed[op.id] = SinkUnavailable(f"POST {path}: mem0 reports FAILED: {str(answer)[:300]}")
            if not suspect:
                run.unsent.append(op.id)
            return
        self.counts["added"] += 1
        ids = [i["id"] for i in items if isinstance(i, Mapping) and isinstance(i.get("id"), str)]
        if ids:
            self.mem0_ids[op.id] = run.stored[op.id] = ids[0]
        # else: the platform queued it (event id only); the mark stays: a redelivery looks it up

    def _failed(self, op: MemoryOperation, suspect: bool, run: _Delivery, f: _Failed) -> None:
        run.failed[op.id] = f.error
        if isinstance(f.error, CircuitOpen):
            kind = "not_sent"
        elif f.maybe_stored:
            kind = "ambiguous"
        else:
            kind = "rejected" if isinstance(f.error, SinkRejected) else "transient"
        self.counts[kind] += 1
        if not f.maybe_stored and not suspect:
            run.unsent.append(op.id)
        log.info("mem0 add of operation %s failed (%s): %s", op.id, kind, f.error)

    # -- look-ups by memwal id -------------------------------------------------------

    async def _lookup(self, ops: Sequence[MemoryOperation]) -> dict[str, str]:
        """The mem0 ids of those of ``ops`` already in mem0 (see the class docstring)."""
        if self.api == "platform":
            return {k: v["id"] for k, v in (await self._find([op.id for op in ops])).items()}
        wanted = {op.id for op in ops}
        found: dict[str, str] = {}
        if not self._entity_large:
            self.counts["lookups"] += 1
            self.counts["lookup_list"] += 1
            items = _items(await self._call("GET", "/memories", params={**self.entity, "top_k": str(TOP_K_MAX)}))
            if len(items) < TOP_K_MAX:  # every memory of the entity: exact
                return {mid: str(item.get("id")) for item in items if (mid := _memwal_id(item)) in wanted}
            self._entity_large = True
            log.info("mem0 entity %s has %d+ memories: look-ups now search by content", self.entity, TOP_K_MAX)
        results: dict[str, list[Any]] = {}

        async def search(op: MemoryOperation) -> None:
            self.counts["lookups"] += 1
            self.counts["lookup_search"] += 1
            body = {"query": op.content, "filters": {**self.entity, "memwal_id": op.id}, "top_k": 1,
                    "threshold": 0}
            try:
                results[op.id] = _items(await self._call("POST", "/search", body))
            except (SinkUnavailable, SinkRejected) as exc:  # raised below, not as a group
                errors.append(exc)

        errors: list[SinkUnavailable | SinkRejected] = []
        async with anyio.create_task_group() as tg:
            for op in ops:
                if op.content.strip():
                    tg.start_soon(search, op)
        if errors:
            raise errors[0]
        for op_id, items in results.items():
            for item in items:
                if _memwal_id(item) == op_id:
                    found[op_id] = str(item.get("id"))
        return found

    async def _find(self, op_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """mem0 items carrying these memwal ids, by memwal id (first one if several); for reads.

        On the OSS server a listing is exact for an entity under 1000 memories; beyond
        that the filtered search (with no content to search for) may miss some.
        """
        if self.api == "oss" and not self._entity_large:
            items = _items(await self._call("GET", "/memories", params={**self.entity, "top_k": str(TOP_K_MAX)}))
            if len(items) < TOP_K_MAX:
                return self._matching(op_ids, items)
            self._entity_large = True
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
        return self._matching(op_ids, [item for items in answers for item in items])

    @staticmethod
    def _matching(op_ids: Sequence[str], items: list[Any]) -> dict[str, dict[str, Any]]:
        wanted = set(op_ids)
        found: dict[str, dict[str, Any]] = {}
        for item in items:
            mid = _memwal_id(item)
            if mid in wanted:
                if mid in found:
                    log.warning("operation %s is in mem0 more than once (%s, %s)", mid, found[mid]["id"],
                                item.get("id"))
                found.setdefault(mid, item)
        return found

    async def _query_ids(self, chunk: list[str]) -> list[Any]:
        if self.api == "oss":
            # Metadata filters exist only in /search, which needs a query and is
            # approximate on a large table (candidates first, then the filter).
            body = {"query": "memwal_id lookup", "filters": {**self.entity, "memwal_id": {"in": chunk}},
                    "top_k": 2 * len(chunk), "threshold": 0}
            return _items(await self._call("POST", "/search", body))
        ids = {"OR": [{"metadata": {"memwal_id": c}} for c in chunk]}  # platform metadata has no "in"
        body = {"filters": {"AND": [*({k: v} for k, v in self.entity.items()), ids]}}
        return _items(await self._call("POST", "/v3/memories/", body, params={"page_size": "200"}))

    # -- reads -------------------------------------------------------------------------

    async def get(self, op_id: str) -> Memory | None:
        """The memory of operation ``op_id``: by the mem0 id kept at delivery, else by metadata."""
        mem0_id = self.mem0_ids.get(op_id)
        if mem0_id is not None:
            path = f"/memories/{mem0_id}" if self.api == "oss" else f"/v1/memories/{mem0_id}/"
            try:
                item = await self._call("GET", path)
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
            items = _items(await self._call("POST", "/search", body))
        else:
            meta = [{"metadata": {k: v}} for k, v in wanted.items()]
            body = {"query": query, "filters": {"AND": [*({k: v} for k, v in self.entity.items()), *meta]},
                    "top_k": top_k}
            items = _items(await self._call("POST", "/v3/memories/search/", body))
        return self._memories(items, tags, limit)

    async def recent(self, category: str | None = None, *, limit: int = 20) -> list[Memory]:
        """The newest memwal memories (mem0 lists up to 1000 on OSS, 200 on the platform)."""
        if self.api == "oss":
            params = {**self.entity, "top_k": "1000"}
            items = _items(await self._call("GET", "/memories", params=params))
        else:
            filters: list[dict[str, Any]] = [{k: v} for k, v in self.entity.items()]
            if category is not None:
                filters.append({"metadata": {"category": category}})
            items = _items(await self._call("POST", "/v3/memories/", {"filters": {"AND": filters}},
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
            await self._call("GET", "/v1/ping/")
        else:
            await self._call("GET", "/memories", params={**self.entity, "top_k": "1"})

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._session is not None and self._owns:
            await self._session.close()
        self.ledger.close()
