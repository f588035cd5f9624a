from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import Connection, text

from refresher.jobs.status import ACTIVE, FINISHED, TERMINAL, TOMBSTONES, JobStatus, sql_list
from refresher.store import Database


def test_every_status_is_active_finished_or_a_tombstone_and_only_one() -> None:
    assert set(JobStatus) == ACTIVE | FINISHED | TOMBSTONES
    assert not ACTIVE & FINISHED
    assert not FINISHED & TOMBSTONES
    assert not ACTIVE & TOMBSTONES
    assert TERMINAL == FINISHED | TOMBSTONES


def test_sql_list_is_an_sql_literal_in_a_stable_order() -> None:
    assert sql_list(TOMBSTONES) == "('evicted', 'expired')"
    assert sql_list(FINISHED) == sql_list(sorted(FINISHED, reverse=True))


async def test_the_schema_takes_every_status_and_no_other(store_location: Path | str) -> None:
    db = await Database.open(store_location)

    def insert(conn: Connection, job_id: str, status: str) -> None:
        conn.execute(
            text(
                """INSERT INTO jobs (id, status, created_at, updated_at, expires_at,
                                     total_videos, variations_per_video, total_variations, seed)
                   VALUES (:id, :status, 'c', 'u', 'e', 1, 1, 1, 1)"""
            ),
            {"id": job_id, "status": status},
        )

    for status in JobStatus:
        await db.write(lambda conn, s=status: insert(conn, s, s))

    def statuses(conn: Connection, where: str = "") -> set[str]:
        return {row[0] for row in conn.execute(text(f"SELECT status FROM jobs {where}"))}

    assert await db.read(statuses) == set(JobStatus)
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        await db.write(lambda conn: insert(conn, "x", "deleted"))
    # `sql_list` selects exactly its statuses, and the plain text read back equals them.
    active = await db.read(lambda conn: statuses(conn, f"WHERE status IN {sql_list(ACTIVE)}"))
    assert active == ACTIVE
    await db.aclose()
