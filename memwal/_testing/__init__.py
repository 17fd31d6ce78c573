"""Test doubles too heavy for ``import memwal``: ``FakeMem0``, the mem0-compatible dev
server (aiohttp), loaded by ``memwal.testing`` on first use and by ``tools/fake-mem0``.

Imports only ``_core``.
"""
