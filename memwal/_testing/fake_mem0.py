"""FakeMem0: a mem0-compatible dev and test server (both HTTP APIs, in memory, with faults).

A dev and test tool, not a mem0 replacement: no embeddings, no LLM; search scores are
the share of query words found in the memory. Paths, status codes and response shapes
follow docs ``mem0-api.md`` (OSS server at mem0 8d5b786, hosted platform v1/v2/v3).
Run it with ``tools/fake-mem0 --port 8765 --api oss`` or in-process::

    async with FakeMem0(api="oss", api_key="k") as fake:
        sink = Mem0Sink(fake.url, api_key="k", user_id="agent")

Faults (constructor keywords, ``configure(...)`` or ``POST /_control`` with a JSON
object): ``latency`` seconds per request; ``error_rate`` with ``error_status``;
``fail_next`` requests answered ``fail_status`` (429 carries ``Retry-After`` when
``retry_after`` is set); ``drop_next`` requests whose connection is closed without an
answer after the request was handled (an add is stored first: the ambiguous case);
``down``: ``"503"`` answers 503, ``"close"`` drops every connection, None is up;
``only_add`` limits the faults (latency too) to add requests.

Like the real server (mem0 2.0.18 on pgvector, measured; mem0-api.md appendix):
``capacity`` adds (and searches: both embed the text) per second, ``workers`` of them
handled at once and the rest queued in arrival order (0: unlimited, the default);
``/search`` is approximate once the store holds more than ``exact_below`` memories:
the ``ef_search`` memories nearest the query (cosine of word counts, over every
user's memories) are the candidates, and only then are the filters applied, so a
filtered search with an unrelated query misses memories that exist; ``top_k`` above
1000 answers 422. ``GET /_control`` reports the faults,
requests per endpoint, memory count and requests in flight; ``GET /_control/memories``
lists every memory; ``POST /_control/reset`` empties the store and the counters.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import itertools
import json
import operator
import random
import re
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any, Self

from aiohttp import web

__all__ = ["FakeMem0", "Faults"]

_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_ENTITY = ("user_id", "agent_id", "run_id")
_P_ENTITY = ("user_id", "agent_id", "app_id", "run_id")
# OSS payload keys the server owns: user metadata keys with these names are overwritten or hidden.
_PROMOTED = ("user_id", "agent_id", "run_id", "actor_id", "role", "expiration_date")
_INTERNAL = ("data", "hash", "created_at", "updated_at", "text_lemmatized")
_OPFUNCS: dict[str, Any] = {
    "eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "gte": operator.ge, "lt": operator.lt,
    "lte": operator.le, "in": lambda v, a: v in a, "nin": lambda v, a: v not in a,
    "contains": lambda v, a: a in v, "icontains": lambda v, a: str(a).lower() in str(v).lower(),
}
_OPS = set(_OPFUNCS)
# aiohttp >= 3.12 warns on str keys in request storage; older versions lack RequestKey.
_BODY: Any = web.RequestKey("body", object) if hasattr(web, "RequestKey") else "body"
_ADD_ROUTES = {"POST /memories", "POST /v3/memories/add/", "POST /v1/memories/"}
# Requests the real server embeds text for (CPU work that bounds its capacity).
_EMBED_ROUTES = _ADD_ROUTES | {"POST /search", "POST /v3/memories/search/", "POST /v2/memories/search/"}


@dataclasses.dataclass
class Faults:
    """What the fake does wrong; see the module docstring."""

    latency: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    fail_next: int = 0
    fail_status: int = 503
    retry_after: float | None = None
    drop_next: int = 0
    down: str | None = None
    only_add: bool = False
    capacity: float = 0.0
    workers: int = 2
    ef_search: int = 40
    exact_below: int = 1000


class _Reply(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def _score(query: str, text: str) -> float:
    q = _words(query)
    return len(q & _words(text)) / len(q) if q else 0.0


def _vector(text: str) -> Counter[str]:
    """A bag of words standing in for an embedding (identical texts: similarity 1)."""
    return Counter(re.findall(r"\w+", text.lower()))


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    if not a or not b:
        return 0.0
    dot = sum(n * b[w] for w, n in a.items() if w in b)
    norm = sum(n * n for n in a.values()) * sum(n * n for n in b.values())
    return float(dot / norm**0.5)


def _tie(rec_id: str) -> int:
    """A stable pseudo-random order among equally near memories (an index has no better one)."""
    return int(hashlib.md5(rec_id.encode()).hexdigest()[:8], 16)


TOP_K_MAX = 1000
_TOP_K_422 = {"type": "less_than_equal", "msg": "Input should be less than or equal to 1000", "ctx": {"le": 1000}}


def _is_uuid(s: str) -> bool:
    try:
        uuid.UUID(s)
    except ValueError:
        return False
    return True


def _cond(value: Any, cond: Any) -> bool:
    """One OSS filter condition on one payload value (raises _Reply 400 on a bad operator)."""
    if cond == "*":
        return value is not None
    if not isinstance(cond, dict):
        return bool(value == cond)
    for op, arg in cond.items():
        if op not in _OPS:
            raise _Reply(400, {"detail": f"Unsupported filter operator: {op}"})
        try:
            ok = _OPFUNCS[op](value, arg)
        except TypeError:
            ok = False
        if not ok:
            return False
    return True


def _check_ops(filters: dict[str, Any]) -> None:
    """Reject unknown operators up front, as mem0 does even when nothing is stored."""
    for key, cond in filters.items():
        if key in ("AND", "OR", "NOT"):
            for f in cond:
                _check_ops(f)
        elif isinstance(cond, dict):
            for op in cond:
                if op not in _OPS:
                    raise _Reply(400, {"detail": f"Unsupported filter operator: {op}"})


def _oss_match(filters: dict[str, Any], payload: dict[str, Any]) -> bool:
    for key, cond in filters.items():
        if key in ("AND", "OR", "NOT"):
            results = [_oss_match(f, payload) for f in cond]
            ok = all(results) if key == "AND" else any(results) if key == "OR" else not any(results)
        else:
            ok = _cond(payload.get(key), cond)
        if not ok:
            return False
    return True


def _p_match(filters: dict[str, Any], rec: dict[str, Any]) -> bool:
    """Platform filters: entity ids, ``metadata`` (eq/ne/contains), ``memory_ids``, AND/OR/NOT."""
    for key, cond in filters.items():
        if key in ("AND", "OR", "NOT"):
            results = [_p_match(f, rec) for f in cond]
            ok = all(results) if key == "AND" else any(results) if key == "OR" else not any(results)
        elif key in _P_ENTITY:
            ok = rec.get(key) is not None if cond == "*" else rec.get(key) == cond
        elif key == "metadata":
            meta = rec["metadata"] or {}
            ok = all(_cond(meta.get(k), c) for k, c in cond.items())
        elif key == "memory_ids":
            ok = rec["id"] in cond
        elif key in ("created_at", "updated_at", "timestamp", "expiration_date", "categories", "keywords"):
            ok = True  # accepted, not evaluated by the fake
        else:
            raise _Reply(400, {"error": f"Invalid filter key: {key}"})
        if not ok:
            return False
    return True


def _has_entity(filters: Any) -> bool:
    if isinstance(filters, dict):
        return any(k in _P_ENTITY or (k in ("AND", "OR", "NOT") and _has_entity(v)) for k, v in filters.items())
    if isinstance(filters, list):
        return any(_has_entity(f) for f in filters)
    return False


class FakeMem0:
    """A mem0 server in memory: ``api`` is ``"oss"``, ``"platform"`` or ``"both"``.

    ``api_key`` None turns authentication off (mem0's ``AUTH_DISABLED``).

    Example:
        >>> async with FakeMem0(api="oss", latency=0.02) as fake:
        ...     print(fake.url, fake.requests["POST /memories"])
    """

    def __init__(self, *, api: str = "both", api_key: str | None = None, seed: int = 0, **faults: Any) -> None:
        if api not in ("oss", "platform", "both"):
            raise ValueError(f"api must be 'oss', 'platform' or 'both', got {api!r}")
        self.api, self.api_key = api, api_key
        self.faults = Faults()
        self.configure(**faults)
        self.memories: dict[str, dict[str, Any]] = {}
        # (platform, key, value) -> ids: an equality index so lookups by memwal_id stay O(1)
        self._index: dict[tuple[bool, str, Any], set[str]] = {}
        self._order: dict[str, int] = {}
        self._seq = itertools.count()
        self._hashes: set[tuple[Any, str]] = set()  # platform (scope, text hash): direct import dedup
        self.events: dict[str, dict[str, Any]] = {}
        self.requests: Counter[str] = Counter()
        self.in_flight = 0
        self.queued = 0  # embedding requests waiting for a worker (capacity)
        self._busy = 0
        self._free = asyncio.Condition()
        self.url = ""
        self.port = 0
        self._rng = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self.app = self._make_app()

    def configure(self, **faults: Any) -> None:
        """Change fault settings, e.g. ``configure(latency=0.5, fail_next=3)``."""
        for k, v in faults.items():
            if k not in Faults.__dataclass_fields__:
                raise ValueError(f"unknown fault {k!r}; choose from {', '.join(Faults.__dataclass_fields__)}")
            setattr(self.faults, k, v)

    def fill(self, count: int, *, prefix: str = "other-user", users: int = 50) -> None:
        """Store ``count`` OSS memories of ``users`` users (random sentences), instantly.

        ``users=1`` gives them all to the user named ``prefix``.

        A table this large makes ``/search`` approximate (see ``exact_below``), as on a
        real deployment where other users' memories share the table.
        """
        words = [f"w{n}" for n in range(2000)]
        for n in range(count):
            text = " ".join(self._rng.choice(words) for _ in range(8))
            user = prefix if users == 1 else f"{prefix}-{n % users}"
            self._store(text, "user", {"user_id": user}, {"memwal_id": f"fill-{prefix}-{n}"}, False)

    def count_by(self, key: str = "memwal_id") -> Counter[Any]:
        """How many stored memories carry each value of metadata ``key``."""
        return Counter(m["metadata"].get(key) for m in self.memories.values() if m["metadata"])

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on loopback (``port`` 0 picks a free one; pass the old port to come back up)."""
        if host not in _LOOPBACK:
            raise ValueError(f"FakeMem0 listens on loopback only, not {host!r}")
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            reason = exc.strerror or str(exc)
            reason = reason.rsplit("): ", 1)[-1]  # asyncio prefixes "error while attempting to bind ..."
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {reason}") from None
        self.port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{self.port}"
        return self.url

    async def stop(self) -> None:
        """Stop listening: clients now get connection refused."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- plumbing ----------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 << 20)
        r = app.router
        r.add_get("/_control", self._control_get)
        r.add_post("/_control", self._control_post)
        r.add_get("/_control/memories", self._control_memories)
        r.add_post("/_control/reset", self._control_reset)
        if self.api in ("oss", "both"):
            r.add_post("/memories", self._oss_add)
            r.add_get("/memories", self._oss_list)
            r.add_delete("/memories", self._oss_delete_all)
            r.add_get("/memories/{memory_id}", self._oss_get)
            r.add_put("/memories/{memory_id}", self._oss_update)
            r.add_delete("/memories/{memory_id}", self._oss_delete)
            r.add_get("/memories/{memory_id}/history", self._oss_history)
            r.add_post("/search", self._oss_search)
            r.add_post("/reset", self._oss_reset)
        if self.api in ("platform", "both"):
            r.add_get("/v1/ping/", self._p_ping)
            r.add_post("/v3/memories/add/", self._p_add_v3)
            r.add_post("/v1/memories/", self._p_add_v1)
            r.add_post("/v3/memories/search/", self._p_search)
            r.add_post("/v2/memories/search/", self._p_search)
            r.add_post("/v3/memories/", self._p_list)
            r.add_get("/v1/memories/{memory_id}/", self._p_get)
            r.add_delete("/v1/memories/{memory_id}/", self._p_delete)
            r.add_get("/v1/event/{event_id}/", self._p_event)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/_control"):
            control: web.StreamResponse = await handler(request)
            return control
        route = request.match_info.route.resource
        name = f"{request.method} {route.canonical if route is not None else '<unmatched>'}"
        self.requests[name] += 1
        platform = request.path.startswith(("/v1/", "/v2/", "/v3/"))
        self.in_flight += 1
        try:
            resp = await self._serve(request, handler, name, platform)
        except _Reply as r:
            resp = web.json_response(r.body, status=r.status, headers=r.headers)
        except web.HTTPException as exc:
            resp = web.json_response({"detail": exc.reason}, status=exc.status)
        finally:
            self.in_flight -= 1
        if not platform:
            resp.headers["X-Request-ID"] = uuid.uuid4().hex[:8]
        return resp

    async def _serve(self, request: web.Request, handler: Any, name: str, platform: bool) -> web.StreamResponse:
        f = self.faults
        faulty = not f.only_add or name in _ADD_ROUTES
        if faulty and f.down == "close":
            request.transport.close()  # type: ignore[union-attr]
            raise _Reply(503, None)
        if faulty and f.down:
            raise _Reply(503, {"detail": "Service Unavailable"})
        raw = await request.read()
        if faulty and f.latency:
            await asyncio.sleep(f.latency)
        if faulty and f.fail_next > 0:
            f.fail_next -= 1
            self._fail(f.fail_status)
        if faulty and f.error_rate and self._rng.random() < f.error_rate:
            self._fail(f.error_status)
        request[_BODY] = self._parse(raw, platform) if request.method in ("POST", "PUT") else None
        self._auth(request, platform)
        if f.capacity > 0 and name in _EMBED_ROUTES:
            await self._work(1.0 / f.capacity * max(1, f.workers))
        resp: web.StreamResponse = await handler(request)
        if faulty and f.drop_next > 0:
            f.drop_next -= 1
            request.transport.close()  # type: ignore[union-attr]  # handled, never answered
        return resp

    async def _work(self, seconds: float) -> None:
        """Hold one of ``workers`` for ``seconds`` (the embedding); later requests queue in order."""
        async with self._free:
            self.queued += 1
            try:
                await self._free.wait_for(lambda: self._busy < max(1, self.faults.workers))
            finally:
                self.queued -= 1
            self._busy += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            async with self._free:
                self._busy -= 1
                self._free.notify_all()

    def _fail(self, status: int) -> None:
        headers = {}
        if self.faults.retry_after is not None:
            headers["Retry-After"] = f"{self.faults.retry_after:g}"
        if status == 429:
            headers.update({"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "60"})
            raise _Reply(429, {"error": "Rate limit exceeded: 1000 per 1 minute"}, headers)
        if status == 502:
            raise _Reply(502, {"detail": "Provider is unreachable or returned a server error.",
                               "code": "provider_unavailable", "request_id": uuid.uuid4().hex[:8]}, headers)
        raise _Reply(status, {"detail": f"injected failure ({status})"}, headers)

    @staticmethod
    def _parse(raw: bytes, platform: bool) -> Any:
        try:
            return json.loads(raw or b"null")
        except ValueError as exc:
            if platform:
                raise _Reply(400, {"detail": f"JSON parse error - {exc}"}) from None
            detail = [{"type": "json_invalid", "loc": ["body", getattr(exc, "pos", 0)], "msg": "JSON decode error",
                       "input": {}, "ctx": {"error": getattr(exc, "msg", str(exc))}}]
            raise _Reply(422, {"detail": detail}) from None

    def _auth(self, request: web.Request, platform: bool) -> None:
        if self.api_key is None:
            return
        authz = request.headers.get("Authorization", "")
        if platform:
            if authz != f"Token {self.api_key}":
                raise _Reply(401, {"detail": "Invalid API key. You can find your API key on "
                                             "https://app.mem0.ai/dashboard/api-keys."})
            return
        key = request.headers.get("X-API-Key")
        if key is not None:
            if key != self.api_key:
                raise _Reply(401, {"detail": "Invalid API key."})
        elif authz.startswith("Bearer "):
            raise _Reply(401, {"detail": "Invalid or expired token."})
        else:
            raise _Reply(401, {"detail": "Authentication required. Provide a Bearer token or X-API-Key header."},
                         {"WWW-Authenticate": "Bearer"})

    # -- the store ---------------------------------------------------------------

    def _store(self, text: str, role: str, ids: dict[str, Any], metadata: dict[str, Any] | None,
               platform: bool, actor: str | None = None) -> dict[str, Any]:
        now = _now()
        rec: dict[str, Any] = {"id": str(uuid.uuid4()), "memory": text, "hash": hashlib.md5(text.encode()).hexdigest(),
                               "vector": _vector(text),
                               "created_at": now, "updated_at": now, "platform": platform,
                               **{k: ids.get(k) for k in _P_ENTITY}}
        if platform:
            rec["metadata"] = dict(metadata) if metadata else None
        else:  # metadata is flattened into the payload; the server's own keys win
            payload = {k: v for k, v in (metadata or {}).items() if k not in _ENTITY}
            payload.update(data=text, hash=rec["hash"], created_at=now, updated_at=now, role=role, actor_id=actor)
            payload.update({k: ids[k] for k in _ENTITY if ids.get(k)})
            rec["payload"] = payload
            meta = {k: v for k, v in payload.items() if k not in _PROMOTED and k not in _INTERNAL}
            rec["metadata"] = meta or None
        self._order[rec["id"]] = next(self._seq)
        self._put(rec)
        return rec

    def _indexed(self, rec: dict[str, Any]) -> list[tuple[bool, str, Any]]:
        fields = (rec["metadata"] or {}) if rec["platform"] else rec["payload"]
        return [(rec["platform"], k, v) for k, v in fields.items() if isinstance(v, (str, int, float, bool))]

    def _put(self, rec: dict[str, Any]) -> None:
        self.memories[rec["id"]] = rec
        for key in self._indexed(rec):
            self._index.setdefault(key, set()).add(rec["id"])

    def _drop(self, rec: dict[str, Any]) -> None:
        del self.memories[rec["id"]]
        self._hashes.discard((rec.get("scope"), rec["hash"]))
        for key in self._indexed(rec):
            self._index.get(key, set()).discard(rec["id"])

    def _candidates(self, filters: Any, platform: bool) -> set[str] | None:
        """Ids that may match ``filters`` from the equality index, or None for all."""
        if not isinstance(filters, dict):
            return None
        best: set[str] | None = None
        for k, cond in filters.items():
            found: set[str] | None = None
            if k == "AND":
                parts = [c for c in (self._candidates(f, platform) for f in cond) if c is not None]
                found = set.intersection(*parts) if parts else None
            elif k == "OR":
                alts = [self._candidates(f, platform) for f in cond]
                found = None if any(c is None for c in alts) else set().union(*(c for c in alts if c is not None))
            elif k == "metadata" and platform and isinstance(cond, dict):
                found = self._eq_candidates(cond, True)
            elif not platform and k not in ("NOT", *_ENTITY):
                found = self._eq_candidates({k: cond}, False)
            if found is not None:
                best = found if best is None else best & found
        return best

    def _eq_candidates(self, conds: dict[str, Any], platform: bool) -> set[str] | None:
        best: set[str] | None = None
        for k, cond in conds.items():
            if isinstance(cond, dict) and set(cond) == {"eq"}:
                cond = cond["eq"]
            if isinstance(cond, dict) and set(cond) == {"in"} and isinstance(cond["in"], list):
                values = [v for v in cond["in"] if isinstance(v, (str, int, float, bool))]
                found = set().union(*(self._index.get((platform, k, v), set()) for v in values))
            elif isinstance(cond, (str, int, float, bool)) and cond != "*":
                found = set(self._index.get((platform, k, cond), set()))
            else:
                continue
            best = found if best is None else best & found
        return best

    def _select(self, filters: Any, platform: bool) -> list[dict[str, Any]]:
        ids = self._candidates(filters, platform)
        if ids is None:
            return self._own(platform)
        return [self.memories[i] for i in sorted(ids, key=self._order.__getitem__) if i in self.memories]

    def _oss_item(self, rec: dict[str, Any], score: float | None = None) -> dict[str, Any]:
        p = rec["payload"]
        item = {"id": rec["id"], "memory": rec["memory"], "hash": rec["hash"], "metadata": rec["metadata"],
                "score": score, "created_at": rec["created_at"], "updated_at": rec["updated_at"]}
        item.update({k: p[k] for k in _PROMOTED if p.get(k) is not None})
        return item

    def _p_item(self, rec: dict[str, Any], score: float | None = None, session: bool = True) -> dict[str, Any]:
        item = {"id": rec["id"], "memory": rec["memory"], "user_id": rec["user_id"], "agent_id": rec["agent_id"],
                "app_id": rec["app_id"], ("session_id" if session else "run_id"): rec["run_id"],
                "metadata": rec["metadata"], "categories": [], "expiration_date": None,
                "created_at": rec["created_at"], "updated_at": rec["updated_at"]}
        if score is not None:
            item["score"] = score
        return item

    def _own(self, platform: bool) -> list[dict[str, Any]]:
        return [m for m in self.memories.values() if m["platform"] == platform]

    # -- OSS handlers --------------------------------------------------------------

    @staticmethod
    def _schema(body: Any, required: dict[str, type]) -> dict[str, Any]:
        errors = []
        if not isinstance(body, dict):
            raise _Reply(422, {"detail": [{"type": "model_attributes_type", "loc": ["body"],
                                           "msg": "Input should be a valid dictionary", "input": body}]})
        for field, typ in required.items():
            if field not in body:
                errors.append({"type": "missing", "loc": ["body", field], "msg": "Field required", "input": body})
            elif not isinstance(body[field], typ):
                kind = "list_type" if typ is list else "string_type"
                errors.append({"type": kind, "loc": ["body", field], "msg": f"Input should be a valid {typ.__name__}",
                               "input": body[field]})
        if errors:
            raise _Reply(422, {"detail": errors})
        return body

    async def _oss_add(self, request: web.Request) -> web.Response:
        body = self._schema(request[_BODY], {"messages": list})
        for i, m in enumerate(body["messages"]):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise _Reply(422, {"detail": [{"type": "missing", "loc": ["body", "messages", i],
                                               "msg": "Field required", "input": m}]})
        ids = {k: body.get(k) for k in _ENTITY if body.get(k)}
        if not ids:
            raise _Reply(400, {"detail": "At least one identifier (user_id, agent_id, run_id) is required."})
        results = []
        for m in body["messages"]:
            if m["role"] == "system":
                continue
            rec = self._store(m["content"], m["role"], ids, body.get("metadata"), False, m.get("name"))
            results.append({"id": rec["id"], "memory": rec["memory"], "event": "ADD",
                            "actor_id": m.get("name"), "role": m["role"]})
        return web.json_response({"results": results})

    @staticmethod
    def _oss_filters(body: dict[str, Any]) -> dict[str, Any]:
        filters = dict(body.get("filters") or {})
        filters.update({k: body[k] for k in _ENTITY if body.get(k)})
        if not any(filters.get(k) for k in _ENTITY):
            raise _Reply(400, {"detail": "filters must contain at least one of: user_id, agent_id, run_id. "
                                         "Example: filters={'user_id': 'u1'}"})
        return filters

    async def _oss_search(self, request: web.Request) -> web.Response:
        body = self._schema(request[_BODY], {"query": str})
        if not body["query"].strip():
            raise _Reply(400, {"detail": "Invalid query: cannot be empty or whitespace-only."})
        top_k = self._top_k(body.get("top_k"), ("body", "top_k"), 20)
        filters = self._oss_filters(body)
        threshold = body.get("threshold")
        threshold = 0.1 if threshold is None else threshold
        _check_ops(filters)
        query = _vector(body["query"])
        pool = self._own(False)
        if len(pool) > self.faults.exact_below:
            # The index scan yields the ef_search nearest memories of every user; the
            # WHERE clause is applied to those candidates only (pgvector < 0.8).
            near = sorted(pool, key=lambda r: (-_cosine(query, r["vector"]), _tie(r["id"])))
            recs = near[: self.faults.ef_search]
        else:  # a small table: Postgres scans it whole, so the search is exact
            recs = self._select(filters, False)
        hits = [(_cosine(query, r["vector"]), r) for r in recs if _oss_match(filters, r["payload"])]
        hits = [h for h in hits if h[0] >= threshold]
        hits.sort(key=lambda h: (-h[0], _tie(h[1]["id"])))
        return web.json_response({"results": [self._oss_item(r, s) for s, r in hits[: max(top_k * 4, 60)][:top_k]]})

    @staticmethod
    def _top_k(value: Any, loc: tuple[str, ...], default: int) -> int:
        """``top_k`` as the server validates it: an int of at most 1000, else 422."""
        if value is None:
            return default
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise _Reply(422, {"detail": [{"type": "int_parsing", "loc": list(loc), "input": value,
                                           "msg": "Input should be a valid integer"}]}) from None
        if n > TOP_K_MAX:
            raise _Reply(422, {"detail": [{**_TOP_K_422, "loc": list(loc), "input": value}]})
        return n

    async def _oss_list(self, request: web.Request) -> web.Response:
        q = request.query
        top_k = self._top_k(q.get("top_k"), ("query", "top_k"), 20)
        ids = {k: q[k] for k in _ENTITY if q.get(k)}
        recs = self._own(False)
        if not ids:  # admin listing: raw rows
            raw = [{"id": r["id"], "memory": r["memory"], **{k: r[k] for k in _ENTITY}, "hash": r["hash"],
                    "expiration_date": None, "metadata": {k: v for k, v in r["payload"].items()
                                                          if k not in _INTERNAL and k not in _ENTITY},
                    "created_at": r["created_at"], "updated_at": r["updated_at"]} for r in recs[:top_k]]
            return web.json_response({"results": raw})
        recs = [r for r in recs if _oss_match(ids, r["payload"])]
        return web.json_response({"results": [self._oss_item(r) for r in recs[:top_k]]})

    def _oss_lookup(self, request: web.Request) -> dict[str, Any] | None:
        mid = request.match_info["memory_id"]
        if not _is_uuid(mid):
            raise _Reply(502, {"detail": "Upstream provider error.", "code": "unknown",
                               "request_id": uuid.uuid4().hex[:8]})
        rec = self.memories.get(mid)
        return rec if rec is not None and not rec["platform"] else None

    async def _oss_get(self, request: web.Request) -> web.Response:
        rec = self._oss_lookup(request)
        return web.json_response(None if rec is None else self._oss_item(rec))

    async def _oss_update(self, request: web.Request) -> web.Response:
        rec = self._oss_lookup(request)
        body = request[_BODY] if isinstance(request[_BODY], dict) else {}
        if rec is None:
            mid = request.match_info["memory_id"]
            raise _Reply(404, {"detail": f"Memory with id {mid} not found. Please provide a valid 'memory_id'"})
        if not any(k in body for k in ("text", "metadata", "expiration_date")):
            raise _Reply(400, {"detail": "At least one field (text, metadata, expiration_date) is required."})
        self._drop(rec)
        if "text" in body:
            rec["memory"] = rec["payload"]["data"] = body["text"]
            rec["vector"] = _vector(body["text"])
        if isinstance(body.get("metadata"), dict):
            rec["payload"].update(body["metadata"])
            meta = {k: v for k, v in rec["payload"].items() if k not in _PROMOTED and k not in _INTERNAL}
            rec["metadata"] = meta or None
        rec["updated_at"] = _now()
        self._put(rec)
        return web.json_response({"message": "Memory updated successfully!"})

    async def _oss_delete(self, request: web.Request) -> web.Response:
        rec = self._oss_lookup(request)
        if rec is None:
            raise _Reply(404, {"detail": f"Memory with id {request.match_info['memory_id']} not found"})
        self._drop(rec)
        return web.json_response({"message": "Memory deleted successfully"})

    async def _oss_delete_all(self, request: web.Request) -> web.Response:
        ids = {k: request.query[k] for k in _ENTITY if request.query.get(k)}
        if not ids:
            raise _Reply(400, {"detail": "At least one identifier is required."})
        for r in [r for r in self._own(False) if _oss_match(ids, r["payload"])]:
            self._drop(r)
        return web.json_response({"message": "All relevant memories deleted"})

    async def _oss_history(self, request: web.Request) -> web.Response:
        rec = self._oss_lookup(request)
        if rec is None:
            return web.json_response([])
        return web.json_response([{"id": str(uuid.uuid4()), "memory_id": rec["id"], "old_memory": None,
                                   "new_memory": rec["memory"], "event": "ADD", "created_at": rec["created_at"],
                                   "updated_at": None, "is_deleted": False, "actor_id": None, "role": "user"}])

    async def _oss_reset(self, request: web.Request) -> web.Response:
        for r in self._own(False):
            self._drop(r)
        return web.json_response({"message": "All memories reset"})

    # -- platform handlers ---------------------------------------------------------

    async def _p_ping(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "org_id": "org-fake", "project_id": "proj-fake",
                                  "user_email": "dev@example.com"})

    def _p_store(self, body: Any) -> list[dict[str, Any]]:
        bad = {"error": "400 Bad Request", "details": {"message": "Invalid input data. Please refer to the memory "
               "creation documentation at https://docs.mem0.ai/platform/quickstart#4-1-create-memories for "
               "correct formatting and required fields."}}
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise _Reply(400, bad)
        scope = {**(body.get("filters") or {}), **{k: body[k] for k in _P_ENTITY if body.get(k)}}
        ids = {k: scope.get(k) for k in _P_ENTITY if scope.get(k)}
        if not ids:
            raise _Reply(400, bad)
        scope_key = tuple(sorted(ids.items()))
        results = []
        for m in body["messages"]:
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") == "system":
                continue
            if (scope_key, hashlib.md5(m["content"].encode()).hexdigest()) in self._hashes:
                continue  # exact duplicate text in the same scope is deduplicated
            rec = self._store(m["content"], m.get("role", "user"), ids, body.get("metadata"), True)
            rec["scope"] = scope_key
            self._hashes.add((scope_key, rec["hash"]))
            results.append(rec)
        return results

    def _event(self, results: list[dict[str, Any]]) -> str:
        eid = str(uuid.uuid4())
        self.events[eid] = {"id": eid, "event_type": "ADD", "status": "SUCCEEDED", "created_at": _now(),
                            "results": [{"id": r["id"], "data": {"memory": r["memory"]}, "event": "ADD"}
                                        for r in results]}
        return eid

    async def _p_add_v3(self, request: web.Request) -> web.Response:
        body = request[_BODY]
        results = self._p_store(body)
        eid = self._event(results)
        if body.get("infer", True):
            return web.json_response({"event_id": eid, "status": "PENDING"})
        return web.json_response({"message": "Memories stored successfully", "status": "SUCCEEDED", "event_id": eid,
                                  "results": self.events[eid]["results"]})

    async def _p_add_v1(self, request: web.Request) -> web.Response:
        body = request[_BODY]
        results = self._p_store(body)
        eid = self._event(results)
        fmt, v2 = body.get("output_format"), body.get("version") == "v2"
        if body.get("async_mode", True):
            queued = [{"message": "Memory processing has been queued for background execution",
                       "status": "PENDING", "event_id": eid}]
            return web.json_response({"results": queued, "relations": []} if fmt == "v1.1" and v2 else queued)
        if fmt == "v1.1":
            return web.json_response({"results": [{"id": r["id"], "event": "ADD", "memory": r["memory"]}
                                                  for r in results]})
        return web.json_response([{"id": r["id"], "data": {"memory": r["memory"]}, "event": "ADD"} for r in results])

    async def _p_search(self, request: web.Request) -> web.Response:
        body = request[_BODY]
        v3 = request.path.startswith("/v3/")
        if not isinstance(body, dict) or not isinstance(body.get("query"), str) or not body["query"].strip():
            raise _Reply(400, {"error": "query: This field is required and may not be blank."})
        if v3 and any(k in body for k in _P_ENTITY):
            raise _Reply(400, {"error": "Entity ids (user_id, agent_id, app_id, run_id) must go inside filters."})
        filters = body.get("filters")
        if not isinstance(filters, dict) or not _has_entity(filters):
            raise _Reply(400, {"error": "filters must contain at least one of: user_id, agent_id, app_id, run_id"})
        threshold = body.get("threshold", 0.1 if v3 else 0.3)
        hits = [(_score(body["query"], r["memory"]), r) for r in self._select(filters, True) if _p_match(filters, r)]
        hits = sorted((h for h in hits if h[0] >= threshold), key=lambda h: -h[0])[: body.get("top_k", 10)]
        items = [self._p_item(r, s, session=not v3) for s, r in hits]
        return web.json_response({"results": items} if v3 else items)

    async def _p_list(self, request: web.Request) -> web.Response:
        body = request[_BODY] if isinstance(request[_BODY], dict) else {}
        filters = body.get("filters")
        if not isinstance(filters, dict) or not _has_entity(filters):
            raise _Reply(400, {"error": "filters must contain at least one of: user_id, agent_id, app_id, run_id"})
        page, size = int(request.query.get("page", 1)), int(request.query.get("page_size", 100))
        if page < 1 or not 1 <= size <= 200:
            raise _Reply(400, {"error": "page must be >= 1 and page_size in 1..200"})
        recs = [r for r in self._select(filters, True) if _p_match(filters, r)]
        chunk = recs[(page - 1) * size : page * size]
        base = f"{self.url}/v3/memories/?page_size={size}&page="
        return web.json_response({"count": len(recs), "next": base + str(page + 1) if page * size < len(recs) else None,
                                  "previous": base + str(page - 1) if page > 1 else None,
                                  "results": [self._p_item(r) for r in chunk]})

    def _p_lookup(self, request: web.Request) -> dict[str, Any]:
        mid = request.match_info["memory_id"]
        if not _is_uuid(mid):
            raise _Reply(400, {"error": "memory_id should be a valid UUID"})
        rec = self.memories.get(mid)
        if rec is None or not rec["platform"]:
            raise _Reply(404, {"error": "Memory not found!"})
        return rec

    async def _p_get(self, request: web.Request) -> web.Response:
        return web.json_response(self._p_item(self._p_lookup(request)))

    async def _p_delete(self, request: web.Request) -> web.Response:
        self._drop(self._p_lookup(request))
        return web.json_response({"message": "Memory deleted successfully!"})

    async def _p_event(self, request: web.Request) -> web.Response:
        ev = self.events.get(request.match_info["event_id"])
        if ev is None:
            raise _Reply(404, {"error": "Event not found or you don't have permission to access it."})
        return web.json_response(ev)

    # -- control -----------------------------------------------------------------

    async def _control_get(self, request: web.Request) -> web.Response:
        return web.json_response({"faults": dataclasses.asdict(self.faults), "requests": dict(self.requests),
                                  "memories": len(self.memories), "in_flight": self.in_flight,
                                  "queued": self.queued})

    async def _control_post(self, request: web.Request) -> web.Response:
        try:
            self.configure(**await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response({"detail": str(exc)}, status=400)
        return web.json_response({"faults": dataclasses.asdict(self.faults)})

    async def _control_memories(self, request: web.Request) -> web.Response:
        keep = ("id", "memory", "metadata", "created_at", "platform", *_P_ENTITY)
        return web.json_response({"results": [{k: r[k] for k in keep} for r in self.memories.values()]})

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.memories.clear()
        self._index.clear()
        self._hashes.clear()
        self.events.clear()
        self.requests.clear()
        return web.json_response({"message": "reset"})


def main(argv: list[str] | None = None) -> None:
    """``tools/fake-mem0 --port 8765 --api oss [--api-key K] [--latency S]``: serve until killed."""
    ap = argparse.ArgumentParser(prog="fake-mem0", description=__doc__.splitlines()[0],
                                 epilog="example: tools/fake-mem0 --port 8765 --api oss --latency 0.02")
    ap.add_argument("--port", type=int, default=8765, help="0 picks a free port (printed)")
    ap.add_argument("--host", default="127.0.0.1", choices=_LOOPBACK)
    ap.add_argument("--api", default="oss", choices=("oss", "platform", "both"))
    ap.add_argument("--api-key", default=None, help="require this key (omit: auth disabled)")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    ap.add_argument("--capacity", type=float, default=0.0,
                    help="adds+searches per second the server can do, like the real one (about 30); 0: unlimited")
    ap.add_argument("--workers", type=int, default=2, help="requests handled at once under --capacity (the rest queue)")
    args = ap.parse_args(argv)

    async def serve() -> None:
        fake = FakeMem0(api=args.api, api_key=args.api_key, latency=args.latency, capacity=args.capacity,
                        workers=args.workers)
        url = await fake.start(args.host, args.port)
        print(f"fake-mem0 ({args.api}) listening on {url}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # a busy port: one line, not a traceback
        raise SystemExit(f"fake-mem0: {exc.strerror}") from None


if __name__ == "__main__":
    main()
