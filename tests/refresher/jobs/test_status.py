from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from refresher.db import connect, migrate
from refresher.jobs.status import ACTIVE, FINISHED, TERMINAL, TOMBSTONES, JobStatus, sql_list


def test_every_status_is_active_finished_or_a_tombstone_and_only_one() -> None:
    assert set(JobStatus) == ACTIVE | FINISHED | TOMBSTONES
    assert not ACTIVE & FINISHED
    assert not FINISHED & TOMBSTONES
    assert not ACTIVE & TOMBSTONES
    assert TERMINAL == FINISHED | TOMBSTONES


def test_sql_list_is_an_sql_literal_in_a_stable_order() -> None:
    assert sql_list(TOMBSTONES) == "('evicted', 'expired')"
    assert sql_list(FINISHED) == sql_list(sorted(FINISHED, reverse=True))


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    connection = connect(tmp_path / "db.sqlite3")
    migrate(connection)
    return connection


def test_the_schema_takes_every_status_and_no_other(conn: sqlite3.Connection) -> None:
    def insert(job_id: str, status: str) -> None:
        conn.execute(
            """INSERT INTO jobs (id, status, created_at, updated_at, expires_at, total_videos,
                                 variations_per_video, total_variations, seed)
               VALUES (?, ?, 'c', 'u', 'e', 1, 1, 1, 1)""",
            (job_id, status),
        )

    for status in JobStatus:
        insert(status, status)
    assert {row[0] for row in conn.execute("SELECT status FROM jobs")} == set(JobStatus)
    with pytest.raises(sqlite3.IntegrityError):
        insert("x", "deleted")
    # `sql_list` selects exactly its statuses, and the plain text read back equals them.
    active = conn.execute(f"SELECT status FROM jobs WHERE status IN {sql_list(ACTIVE)}")
    assert {row[0] for row in active} == ACTIVE
