"""Helpers shared by the tests: fast configs and waiting for background work with a deadline."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio

from memwal import Config, load_config

# Short retries and polls so background work settles in milliseconds, not seconds.
FAST: dict[str, dict[str, Any]] = {
    "async_collection": {"retry_delay": 0.01, "max_retry_delay": 0.05},
    "journal": {"poll_interval": 0.01, "shutdown_timeout": 2.0},
}


def fast_config(base: Mapping[str, Mapping[str, Any]] = FAST, **sections: Mapping[str, Any]) -> Config:
    """``base`` with each section of ``sections`` merged over it, as a Config."""
    merged = {name: dict(values) for name, values in base.items()}
    for name, values in sections.items():
        merged[name] = {**merged.get(name, {}), **values}
    return load_config(merged, env={})


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; TimeoutError after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.005)
