"""FakeMem0 speaks both mem0 APIs as the reference describes, and injects faults on cue."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from memwal.testing import FakeMem0

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
KEY = "m0sk_test"
OSS = {"X-API-Key": KEY}
PLAT = {"Authorization": f"Token {KEY}"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeMem0]:
    async with FakeMem0(api="both", api_key=KEY) as f:
        yield f


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def call(http: aiohttp.ClientSession, fake: FakeMem0, method: str, path: str, body: Any = None,
               headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any, Any]:
    kw: dict[str, Any] = {"data": raw} if raw is not None else {"json": body} if body is not None else {}
    async with http.request(method, fake.url + path, headers=headers, **kw) as r:
        return r.status, await r.json(content_type=None), r.headers


def add_body(content: str, **meta: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "user_id": "agent-1", "metadata": meta,
            "infer": False}


async def test_oss_add_search_get_have_the_reference_shapes(fake: FakeMem0, http: aiohttp.ClientSession) -> None:
    status, body, headers = await call(http, fake, "POST", "/memories", add_body("the build fails on arm64",
                                                                                  memwal_id="abc", category="bug"),
                                       OSS)
    assert status == 200 and len(headers["X-Request-ID"]) == 8
    [item] = body["results"]
    assert item["memory"] == "the build fails on arm64" and item["event"] == "ADD" and item["role"] == "user"
    await call(http, fake, "POST", "/memories", add_body("arm64 runners are slow", memwal_id="def"), OSS)
    s, found, _ = await call(http, fake, "POST", "/search",
                             {"query": "build arm64", "filters": {"user_id": "agent-1", "memwal_id": "abc"}}, OSS)
    assert s == 200 and [r["metadata"]["memwal_id"] for r in found["results"]] == ["abc"]
    s, found, _ = await call(http, fake, "POST", "/search", {"query": "arm64", "filters": {
        "user_id": "agent-1", "memwal_id": {"in": ["def", "zzz"]}}}, OSS)
    assert [r["metadata"]["memwal_id"] for r in found["results"]] == ["def"]
    s, got, _ = await call(http, fake, "GET", f"/memories/{item['id']}", headers=OSS)
    assert got["id"] == item["id"] and got["score"] is None and got["user_id"] == "agent-1"
    assert got["metadata"] == {"memwal_id": "abc", "category": "bug"}
    s, body, _ = await call(http, fake, "GET", "/memories/not-a-uuid", headers=OSS)
    assert s == 502 and body["code"] == "unknown"
    s, listing, _ = await call(http, fake, "GET", "/memories?user_id=agent-1", headers=OSS)
    assert s == 200 and len(listing["results"]) == 2


async def test_oss_unknown_uuid_is_200_null(fake: FakeMem0, http: aiohttp.ClientSession) -> None:
    status, body, _ = await call(http, fake, "GET", "/memories/00000000-0000-4000-8000-000000000000", headers=OSS)
    assert (status, body) == (200, None)


async def test_trailing_slash_is_404_on_both_apis(fake: FakeMem0, http: aiohttp.ClientSession) -> None:
    assert (await call(http, fake, "POST", "/memories/", add_body("x"), OSS))[0] == 404
    assert (await call(http, fake, "GET", "/v1/ping", headers=PLAT))[0] == 404
    assert (await call(http, fake, "POST", "/v3/memories/add", add_body("x"), PLAT))[0] == 404
    assert fake.memories == {}


async def test_oss_auth_and_check_order(fake: FakeMem0, http: aiohttp.ClientSession) -> None:
    s, body, h = await call(http, fake, "POST", "/memories", add_body("x"))
    assert s == 401 and h["WWW-Authenticate"] == "Bearer" and "Authentication required" in body["detail"]
    assert (await call(http, fake, "POST", "/memories", add_body("x"), {"X-API-Key": "wrong"}))[1] == {
        "detail": "Invalid API key."}
    assert (await call(http, fake, "POST", "/memories", add_body("x"), {"Authorization": "Bearer junk"}))[1] == {
        "detail": "Invalid or expired token."}
    s, body, _ = await call(http, fake, "POST", "/memories", raw=b'{"messages": ', headers={"X-API-Key": "wrong"})
    assert s == 422 and body["detail"][0]["type"] == "json_invalid"  # decoding comes before auth
    assert (await call(http, fake, "POST", "/memories", {"user_id": "u"}))[0] == 401  # auth before schema
    s, body, _ = await call(http, fake, "POST", "/memories", {"user_id": "u"}, OSS)
    assert s == 422 and body["detail"][0]["loc"] == ["body", "messages"]
    assert fake.memories == {}


async def test_oss_validation_statuses(fake: FakeMem0, http: aiohttp.ClientSession) -> None:
    body = add_body("x")
    del body["user_id"]
    s, b, _ = await call(http, fake, "POST", "/memories", body, OSS)
    assert s == 400 and "At least one identifier" in b["detail"]
    s, b, _ = await call(http, fake, "POST", "/search", {"query": "x", "filters": {"memwal_id": "a"}}, OSS)
    assert s == 400 and b["detail"].startswith("filters must contain at least one of")
    s, b, _ = await call(http, fake, "POST", "/search", {"query": "  ", "user_id": "u"}, OSS)
    assert s == 400 and "empty" in b["detail"]
    assert (await call(http, fake, "POST", "/search", {"user_id": "u"}, OSS))[0] == 422
    s, b, _ = await call(http, fake, "POST", "/search",
                         {"query": "x", "filters": {"user_id": "u", "metadata": {"memwal_id": "a"}}}, OSS)
    assert (s, b) == (400, {"detail": "Unsupported filter operator: memwal_id"})
    assert (await call(http, fake, "POST", "/memories", {"messages": [], "user_id": "u"}, OSS))[1] == {"results": []}


async def test_oss_metadata_keys_named_like_payload_keys_are_hidden(fake: FakeMem0,
                                                                   http: aiohttp.ClientSession) -> None:
    _, body, _ = await call(http, fake, "POST", "/memories",
                            add_body("x", created_at="mine", role="mine", data="mine", keep=1), OSS)
    _, got, _ = await call(http, fake, "GET", f"/memories/{body['results'][0]['id']}", headers=OSS)
    assert got["metadata"] == {"keep": 1} and got["role"] == "user" and got["created_at"] != "mine"


async def test_platform_endpoints(fake: FakeMem0, http: aiohttp.ClientSession) -> None:
    s, ping, _ = await call(http, fake, "GET", "/v1/ping/", headers=PLAT)
    assert s == 200 and ping["status"] == "ok" and {"org_id", "project_id", "user_email"} <= set(ping)
    s, b, h = await call(http, fake, "GET", "/v1/ping/", headers={"Authorization": f"Bearer {KEY}"})
    assert s == 401 and "Invalid API key" in b["detail"] and "X-Request-ID" not in h
    s, b, _ = await call(http, fake, "POST", "/v3/memories/add/", add_body("alice plays badminton", k="a"), PLAT)
    assert s == 200 and b["status"] == "SUCCEEDED" and b["results"][0]["data"]["memory"] == "alice plays badminton"
    mid = b["results"][0]["id"]
    s, b, _ = await call(http, fake, "POST", "/v3/memories/add/", add_body("alice plays badminton"), PLAT)
    assert b["results"] == []  # direct import deduplicates the same text in one scope
    s, b, _ = await call(http, fake, "POST", "/v3/memories/add/", {**add_body("queued"), "infer": True}, PLAT)
    assert set(b) == {"event_id", "status"} and b["status"] == "PENDING"
    s, ev, _ = await call(http, fake, "GET", f"/v1/event/{b['event_id']}/", headers=PLAT)
    assert ev["status"] == "SUCCEEDED" and ev["results"][0]["data"]["memory"] == "queued"
    s, b, _ = await call(http, fake, "POST", "/v3/memories/add/", {"messages": [{"role": "user", "content": "x"}]},
                         PLAT)
    assert s == 400 and b["error"] == "400 Bad Request"
    s, got, _ = await call(http, fake, "GET", f"/v1/memories/{mid}/", headers=PLAT)
    assert got["metadata"] == {"k": "a"} and "session_id" in got
    assert (await call(http, fake, "GET", "/v1/memories/nope/", headers=PLAT))[:2] == (
        400, {"error": "memory_id should be a valid UUID"})
    assert (await call(http, fake, "GET", "/v1/memories/00000000-0000-4000-8000-000000000000/", headers=PLAT))[:2] \
        == (404, {"error": "Memory not found!"})
    s, found, _ = await call(http, fake, "POST", "/v3/memories/search/", {
        "query": "badminton", "filters": {"AND": [{"user_id": "agent-1"}, {"metadata": {"k": "a"}}]}}, PLAT)
    assert [r["id"] for r in found["results"]] == [mid] and "run_id" in found["results"][0]
    assert (await call(http, fake, "POST", "/v3/memories/search/", {"query": "x", "user_id": "agent-1",
                                                                    "filters": {"user_id": "agent-1"}}, PLAT))[0] == 400
    s, bare, _ = await call(http, fake, "POST", "/v2/memories/search/", {"query": "badminton",
                                                                        "filters": {"user_id": "agent-1"}}, PLAT)
    assert isinstance(bare, list) and bare[0]["id"] == mid
    s, page, _ = await call(http, fake, "POST", "/v3/memories/?page_size=1", {"filters": {"user_id": "agent-1"}},
                            PLAT)
    assert page["count"] == 2 and len(page["results"]) == 1 and "page=2" in page["next"]


async def test_platform_v1_add_shapes(fake: FakeMem0, http: aiohttp.ClientSession) -> None:
    b = (await call(http, fake, "POST", "/v1/memories/", add_body("one"), PLAT))[1]
    assert isinstance(b, list) and b[0]["status"] == "PENDING"
    b = (await call(http, fake, "POST", "/v1/memories/", {**add_body("two"), "output_format": "v1.1",
                                                         "version": "v2"}, PLAT))[1]
    assert b["results"][0]["status"] == "PENDING" and b["relations"] == []
    b = (await call(http, fake, "POST", "/v1/memories/", {**add_body("three"), "async_mode": False,
                                                         "output_format": "v1.1"}, PLAT))[1]
    assert b["results"][0]["memory"] == "three" and b["results"][0]["event"] == "ADD"
    b = (await call(http, fake, "POST", "/v1/memories/", {**add_body("four"), "async_mode": False}, PLAT))[1]
    assert b[0]["data"] == {"memory": "four"}


async def test_fail_next_429_carries_retry_after_and_rate_limit_headers(fake: FakeMem0,
                                                                       http: aiohttp.ClientSession) -> None:
    fake.configure(fail_next=2, fail_status=429, retry_after=7)
    for _ in range(2):
        s, _b, h = await call(http, fake, "POST", "/memories", add_body("x"), OSS)
        assert s == 429 and h["Retry-After"] == "7" and h["X-RateLimit-Remaining"] == "0"
    assert (await call(http, fake, "POST", "/memories", add_body("x"), OSS))[0] == 200
    assert len(fake.memories) == 1


async def test_error_rate_502_has_the_oss_body(fake: FakeMem0, http: aiohttp.ClientSession) -> None:
    fake.configure(error_rate=1.0, error_status=502)
    s, b, _ = await call(http, fake, "POST", "/memories", add_body("x"), OSS)
    assert s == 502 and b["code"] == "provider_unavailable" and "request_id" in b
    assert fake.memories == {}


async def test_drop_stores_the_add_then_closes_the_connection(fake: FakeMem0, http: aiohttp.ClientSession) -> None:
    fake.configure(drop_next=1)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, fake, "POST", "/memories", add_body("ambiguous", memwal_id="m1"), OSS)
    assert fake.count_by()["m1"] == 1  # stored, though the client never heard back


async def test_down_and_up_and_only_add(fake: FakeMem0, http: aiohttp.ClientSession) -> None:
    s, ctl, _ = await call(http, fake, "POST", "/_control", {"down": "503", "only_add": True})
    assert s == 200 and ctl["faults"]["down"] == "503"
    assert (await call(http, fake, "POST", "/memories", add_body("x"), OSS))[0] == 503
    assert (await call(http, fake, "POST", "/search", {"query": "x", "user_id": "u"}, OSS))[0] == 200
    await call(http, fake, "POST", "/_control", {"down": "close", "only_add": False})
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, fake, "GET", "/v1/ping/", headers=PLAT)
    await call(http, fake, "POST", "/_control", {"down": None})
    assert (await call(http, fake, "POST", "/memories", add_body("x"), OSS))[0] == 200
    assert (await call(http, fake, "POST", "/_control", {"nonsense": 1}))[0] == 400


async def test_stop_refuses_then_start_on_the_same_port(fake: FakeMem0, http: aiohttp.ClientSession) -> None:
    port = fake.port
    await fake.stop()
    with pytest.raises(aiohttp.ClientConnectorError):
        await call(http, fake, "GET", "/_control")
    await fake.start(port=port)
    assert (await call(http, fake, "GET", "/_control"))[0] == 200


async def test_request_counters_and_control_report(fake: FakeMem0, http: aiohttp.ClientSession) -> None:
    await call(http, fake, "POST", "/memories", add_body("x"), OSS)
    await call(http, fake, "GET", "/memories/00000000-0000-4000-8000-000000000000", headers=OSS)
    await call(http, fake, "GET", "/v1/ping/", headers=PLAT)
    _, ctl, _ = await call(http, fake, "GET", "/_control")
    assert ctl["requests"] == {"POST /memories": 1, "GET /memories/{memory_id}": 1, "GET /v1/ping/": 1}
    assert ctl["memories"] == 1 and ctl["in_flight"] == 0
    _, mem, _ = await call(http, fake, "GET", "/_control/memories")
    assert [m["memory"] for m in mem["results"]] == ["x"]


async def test_oss_only_server_has_no_platform_routes(http: aiohttp.ClientSession) -> None:
    async with FakeMem0(api="oss") as fake:  # no api_key: auth disabled
        assert (await call(http, fake, "POST", "/memories", add_body("x")))[0] == 200
        assert (await call(http, fake, "GET", "/v1/ping/"))[0] == 404


def test_constructor_rejects_unknown_api_and_fault() -> None:
    with pytest.raises(ValueError, match="api must be"):
        FakeMem0(api="v9")
    with pytest.raises(ValueError, match="unknown fault 'latncy'"):
        FakeMem0(latncy=1)


def test_tools_fake_mem0_serves_on_loopback() -> None:
    proc = subprocess.Popen([str(ROOT / "tools" / "fake-mem0"), "--port", "0", "--api", "oss", "--api-key", KEY],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:")
        code = (
            "import json,sys,urllib.request as u\n"
            f"r=u.Request('{url}/memories',data=json.dumps({add_body('hello')!r}).encode(),"
            f"headers={{'X-API-Key':'{KEY}','Content-Type':'application/json'}})\n"
            "print(json.load(u.urlopen(r))['results'][0]['memory'])\n"
            f"print(json.load(u.urlopen('{url}/_control'))['memories'])\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
        assert out.stdout.split() == ["hello", "1"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


# -- like the real server (mem0 2.0.18 on pgvector, measured) ---------------------------------


async def test_search_is_exact_on_a_small_table_and_approximate_on_a_large_one(
    fake: FakeMem0, http: aiohttp.ClientSession
) -> None:
    ids = []
    for i in range(20):
        await call(http, fake, "POST", "/memories", add_body(f"agent note number {i}", memwal_id=f"m{i}"), OSS)
        ids.append(f"m{i}")
    lookup = {"query": "memwal_id lookup", "filters": {"user_id": "agent-1", "memwal_id": {"in": ids}},
              "top_k": 40, "threshold": 0}
    _, small, _ = await call(http, fake, "POST", "/search", lookup, OSS)
    assert len(small["results"]) == 20  # a small table is scanned whole
    fake.fill(3000)
    _, large, _ = await call(http, fake, "POST", "/search", lookup, OSS)
    assert len(large["results"]) < 5  # candidates are the nearest 40 of 3,020, then the filter
    own = {"query": "agent note number 7", "filters": {"user_id": "agent-1", "memwal_id": "m7"}, "threshold": 0}
    _, found, _ = await call(http, fake, "POST", "/search", own, OSS)
    assert [r["metadata"]["memwal_id"] for r in found["results"]] == ["m7"]  # its own text is nearest


async def test_top_k_above_1000_is_422(fake: FakeMem0, http: aiohttp.ClientSession) -> None:
    status, body, _ = await call(http, fake, "GET", "/memories?user_id=a&top_k=1001", headers=OSS)
    assert status == 422 and body["detail"][0]["loc"] == ["query", "top_k"]
    assert (await call(http, fake, "GET", "/memories?user_id=a&top_k=1000", headers=OSS))[0] == 200
    status, body, _ = await call(http, fake, "POST", "/search", {"query": "x", "user_id": "a", "top_k": 5000}, OSS)
    assert status == 422 and body["detail"][0]["loc"] == ["body", "top_k"]


async def test_capacity_handles_workers_at_once_and_queues_the_rest(fake: FakeMem0,
                                                                    http: aiohttp.ClientSession) -> None:
    fake.configure(capacity=40, workers=2)  # 50 ms per add, two at a time
    most_busy = 0

    async def watch() -> None:
        nonlocal most_busy
        while True:
            most_busy = max(most_busy, fake._busy)
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        async with anyio.create_task_group() as adds:
            for i in range(8):
                adds.start_soon(call, http, fake, "POST", "/memories", add_body(f"m {i}"), OSS)
            with anyio.fail_after(10):
                while fake.queued < 6:  # 8 sent, 2 handled, 6 waiting in order
                    await anyio.sleep(0.005)
        tg.cancel_scope.cancel()
    assert most_busy == 2 and len(fake.memories) == 8 and fake.queued == 0


def test_tools_fake_mem0_on_a_busy_port_says_so_in_one_line() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run([str(ROOT / "tools" / "fake-mem0"), "--port", str(port)], capture_output=True, check=False,
                             text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"fake-mem0: cannot listen on 127.0.0.1:{port}: address already in use"]
