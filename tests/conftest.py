"""Shared fixtures: the asyncio backend for anyio tests and journal/store paths."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "agent.journal"


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "memories.db"
