from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from refresher import db as queries
from refresher.db import MIGRATIONS, Database, connect, migrate, schema_version
from refresher.jobs.records import list_jobs
from refresher.storage.usage import stored_bytes

NOW = "2026-01-01T00:00:00.000Z"


def insert_job(conn: sqlite3.Connection, job_id: str, created_at: str = NOW) -> None:
    conn.execute(
        """INSERT INTO jobs (id, status, created_at, updated_at, expires_at, total_videos,
                             variations_per_video, total_variations, seed)
           VALUES (?, 'queued', ?, ?, ?, 1, 2, 2, 7)""",
        (job_id, created_at, created_at, created_at),
    )
    conn.execute(
        """INSERT INTO job_files (id, job_id, position, original_name, upload_path, file_size,
                                  status, updated_at)
           VALUES (?, ?, 0, 'ad.mp4', 'uploads/x', 100, 'queued', ?)""",
        (f"{job_id}-f", job_id, created_at),
    )


def test_migrations_build_the_schema_from_empty(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.sqlite3")
    assert schema_version(conn) == 0
    assert migrate(conn) == list(range(1, len(MIGRATIONS) + 1))
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"jobs", "job_files", "output_files"} <= tables
    job_columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    assert job_columns == {
        "id", "status", "created_at", "updated_at", "finished_at", "expires_at",
        "total_videos", "variations_per_video", "total_variations", "seed",
        "thumbnail_path", "error", "cancelled_at", "deleted_reason", "archive_bytes",
        "strength", "mirror",
    }  # fmt: skip
    output_columns = {row[1] for row in conn.execute("PRAGMA table_info(output_files)")}
    assert {"measured_json", "pdq_hashes", "attempts", "still_path"} <= output_columns


def test_strength_is_checked_by_the_schema(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.sqlite3")
    migrate(conn)
    insert_job(conn, "j1")
    assert tuple(conn.execute("SELECT strength, mirror FROM jobs").fetchone()) == ("subtle", 0)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE jobs SET strength = 'extreme'")


def test_migrate_again_changes_nothing(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.sqlite3")
    migrate(conn)
    insert_job(conn, "j1")
    assert migrate(conn) == []
    assert schema_version(conn) == len(MIGRATIONS)
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1


def test_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.sqlite3")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(RuntimeError, match=r"is newer than this release knows"):
        migrate(conn)


def test_connection_settings(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == queries.BUSY_TIMEOUT_MS


def test_status_is_constrained_and_files_cascade(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.sqlite3")
    migrate(conn)
    insert_job(conn, "j1")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
        conn.execute("UPDATE jobs SET status = 'exploded' WHERE id = 'j1'")
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY constraint failed"):
        conn.execute(
            """INSERT INTO job_files
                   (id, job_id, position, original_name, file_size, status, updated_at)
               VALUES ('f', 'missing', 0, 'a', 1, 'queued', ?)""",
            (NOW,),
        )
    conn.execute("DELETE FROM jobs WHERE id = 'j1'")
    assert conn.execute("SELECT count(*) FROM job_files").fetchone()[0] == 0


async def test_open_migrates_and_queries_work(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "nested" / "db.sqlite3")
    await db.write(lambda conn: insert_job(conn, "old", "2026-01-01T00:00:00.000Z"))
    await db.write(lambda conn: insert_job(conn, "new", "2026-01-02T00:00:00.000Z"))
    rows = await db.read(list_jobs)
    assert [(row["id"], row["file_names"]) for row in rows] == [
        ("new", "ad.mp4"),
        ("old", "ad.mp4"),
    ]
    # Two uploads of 100 bytes, not yet deleted; no outputs.
    assert await db.read(stored_bytes) == 200
    await db.aclose()


async def test_failed_write_rolls_back(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "db.sqlite3")

    def insert_then_fail(conn: sqlite3.Connection) -> None:
        insert_job(conn, "j1")
        raise LookupError("changed my mind")

    with pytest.raises(LookupError, match=r"^changed my mind$"):
        await db.write(insert_then_fail)
    assert await db.read(lambda conn: conn.execute("SELECT count(*) FROM jobs").fetchone()[0]) == 0
    await db.aclose()


async def test_concurrent_writers_all_commit(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "db.sqlite3")
    async with trio.open_nursery() as nursery:
        for number in range(40):
            nursery.start_soon(db.write, lambda conn, n=number: insert_job(conn, f"j{n}"))
    count = await db.read(lambda conn: conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
    assert count == 40
    await db.aclose()


async def test_slow_query_does_not_block_the_event_loop(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "db.sqlite3")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.001)
            ticks += 1

    def slow_query(conn: sqlite3.Connection) -> int:
        # A recursive count big enough to take a noticeable fraction of a second.
        row = conn.execute(
            "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 3000000)"
            " SELECT count(*) FROM c"
        ).fetchone()
        return int(row[0])

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            started = trio.current_time()
            assert await db.read(slow_query) == 3_000_000
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
    # Had the query run on the loop, the ticker could not have run at all during it. On
    # a free loop it ticks about once a millisecond; allow a wide margin for slow machines.
    assert elapsed > 0.05
    assert ticks >= 10
    await db.aclose()


async def test_closed_database_refuses_calls(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "db.sqlite3")
    await db.aclose()
    with pytest.raises(RuntimeError, match=r"^database is closed$"):
        await db.read(stored_bytes)


def test_placeholders_mark_one_parameter_per_value() -> None:
    assert queries.placeholders(3) == "?, ?, ?"
    assert queries.placeholders(1) == "?"
