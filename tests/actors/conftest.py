"""Fixtures for actor tests: a real database and data directory in a temporary folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio.testing

from refresher.store import Database


@pytest.fixture
async def db(tmp_path: Path, database_url: str | None) -> AsyncIterator[Database]:
    """The store: a SQLite file, or (in a test marked `both_stores`) PostgreSQL too."""
    database = await Database.open(database_url or tmp_path / "db.sqlite3")
    yield database
    await database.aclose()


@pytest.fixture
def idle_jump_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only after 50 ms of real idleness: SQLite runs in threads,
    during which trio sees every task blocked, and a clock that jumped at once would
    skip past them."""
    return trio.testing.MockClock(autojump_threshold=0.05)
