"""FaultProxy: an HTTP proxy on loopback between memwal and a mem0 server that loses answers.

Every request is forwarded to the server whole, so the server acts on it; then, for a
share of the add requests (``POST /memories``), the answer is lost: ``drop`` closes
the client's connection without an answer; ``delay`` holds the answer for ``delay_for``
seconds (past the client's timeout) before sending it. Other requests pass untouched.
Decisions come from a seeded RNG; ``counts`` tells what happened.

    async with FaultProxy(upstream, drop=0.1, delay=0.1, delay_for=3.0) as proxy:
        sink = Mem0Sink(proxy.url, ...)
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Self

import aiohttp
from aiohttp import web

__all__ = ["FaultProxy"]

_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class FaultProxy:
    """Forward to ``upstream``; lose a share of the add answers after the server handled them."""

    def __init__(self, upstream: str, *, drop: float = 0.0, delay: float = 0.0, delay_for: float = 3.0,
                 seed: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.drop, self.delay, self.delay_for = drop, delay, delay_for
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.url = ""

    async def __aenter__(self) -> Self:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)  # loopback only
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._http.request(request.method, self.upstream + request.path_qs, data=body,
                                      headers=headers, allow_redirects=False) as r:
            raw = await r.read()
            status, ctype = r.status, r.headers.get("Content-Type", "application/json")
        is_add = request.method == "POST" and request.path == "/memories"
        self.counts[f"{request.method} {request.path}"] += 1
        if is_add and status == 200:
            roll = self._rng.random()
            if roll < self.drop:
                self.counts["dropped"] += 1
                assert request.transport is not None
                request.transport.close()  # stored by the server, never answered
                return web.Response(status=500)
            if roll < self.drop + self.delay:
                self.counts["delayed"] += 1
                await asyncio.sleep(self.delay_for)
        return web.Response(body=raw, status=status, headers={"Content-Type": ctype})
