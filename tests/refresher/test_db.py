"""The store's contract, on both backends (`store_location`: a SQLite file, a PostgreSQL
database), and what is the SQLite backend's own."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy
import trio
from sqlalchemy import Connection, text

from refresher.jobs.records import list_jobs
from refresher.storage.usage import stored_bytes
from refresher.store import Database
from refresher.store import postgres as postgres_store
from refresher.store import sqlite as sqlite_store

NOW = "2026-01-01T00:00:00.000Z"


def insert_job(conn: Connection, job_id: str, created_at: str = NOW) -> None:
    conn.execute(
        text(
            """INSERT INTO jobs (id, status, created_at, updated_at, expires_at, total_videos,
                                 variations_per_video, total_variations, seed)
               VALUES (:id, 'queued', :at, :at, :at, 1, 2, 2, 7)"""
        ),
        {"id": job_id, "at": created_at},
    )
    conn.execute(
        text(
            """INSERT INTO job_files (id, job_id, position, original_name, upload_path,
                                      file_size, status, updated_at)
               VALUES (:id, :job_id, 0, 'ad.mp4', 'uploads/x', 100, 'queued', :at)"""
        ),
        {"id": f"{job_id}-f", "job_id": job_id, "at": created_at},
    )


def count(conn: Connection, table: str) -> int:
    return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


async def test_open_builds_the_whole_schema(store_location: Path | str) -> None:
    db = await Database.open(store_location)

    def columns(conn: Connection) -> dict[str, set[str]]:
        inspector = sqlalchemy.inspect(conn)
        return {
            table: {column["name"] for column in inspector.get_columns(table)}
            for table in inspector.get_table_names()
        }

    tables = await db.read(columns)
    assert {
        "jobs", "job_files", "output_files", "leases", "deletion_reservations", "settings",
    } <= set(tables)  # fmt: skip
    assert tables["jobs"] >= {
        "id", "status", "created_at", "updated_at", "finished_at", "expires_at",
        "total_videos", "variations_per_video", "total_variations", "seed",
        "thumbnail_path", "error", "cancelled_at", "deleted_reason", "archive_bytes",
        "strength", "mirror",
    }  # fmt: skip
    assert tables["job_files"] >= {"claimed_by", "claim_token", "claimed_until", "still_path"}
    assert tables["output_files"] >= {"measured_json", "pdq_hashes", "attempts", "still_path"}
    assert tables["leases"] >= {"id", "job_id", "holder", "acquired_at", "expires_at"}
    await db.aclose()


async def test_both_backends_make_the_same_schema(tmp_path: Path, postgres_url: str) -> None:
    def columns(conn: Connection) -> dict[str, set[str]]:
        inspector = sqlalchemy.inspect(conn)
        return {
            table: {column["name"] for column in inspector.get_columns(table)}
            for table in inspector.get_table_names()
            if table != "schema_version"  # PostgreSQL's record of its migrations
        }

    lite = await Database.open(tmp_path / "db.sqlite3")
    pg = await Database.open(postgres_url)
    assert await lite.read(columns) == await pg.read(columns)
    await lite.aclose()
    await pg.aclose()


async def test_opening_again_migrates_nothing(store_location: Path | str) -> None:
    db = await Database.open(store_location)
    await db.write(lambda conn: insert_job(conn, "j1"))
    await db.aclose()
    db = await Database.open(store_location)
    assert await db.write(db.backend.migrate) == []
    assert await db.read(lambda conn: count(conn, "jobs")) == 1
    await db.aclose()


async def test_constraints_hold(store_location: Path | str) -> None:
    db = await Database.open(store_location)
    await db.write(lambda conn: insert_job(conn, "j1"))
    row = await db.read(lambda conn: conn.execute(text("SELECT strength, mirror FROM jobs")).one())
    assert tuple(row) == ("subtle", 0)
    for statement in (
        "UPDATE jobs SET strength = 'extreme'",
        "UPDATE jobs SET status = 'exploded' WHERE id = 'j1'",
        """INSERT INTO job_files (id, job_id, position, original_name, file_size, status,
                                  updated_at)
           VALUES ('f', 'missing', 0, 'a', 1, 'queued', 'now')""",
    ):
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            await db.write(lambda conn, sql=statement: conn.execute(text(sql)))
    await db.aclose()


async def test_deleting_a_job_deletes_its_rows(store_location: Path | str) -> None:
    db = await Database.open(store_location)
    await db.write(lambda conn: insert_job(conn, "j1"))
    await db.write(lambda conn: conn.execute(text("DELETE FROM jobs WHERE id = 'j1'")))
    assert await db.read(lambda conn: count(conn, "job_files")) == 0
    await db.aclose()


async def test_queries_work(store_location: Path | str) -> None:
    db = await Database.open(store_location)
    await db.write(lambda conn: insert_job(conn, "old", "2026-01-01T00:00:00.000Z"))
    await db.write(lambda conn: insert_job(conn, "new", "2026-01-02T00:00:00.000Z"))
    rows = await db.read(list_jobs)
    assert [(row["id"], row["file_names"]) for row in rows] == [
        ("new", ["ad.mp4"]),
        ("old", ["ad.mp4"]),
    ]
    # Two uploads of 100 bytes, not yet deleted; no outputs.
    assert await db.read(stored_bytes) == 200
    await db.aclose()


async def test_failed_write_rolls_back(store_location: Path | str) -> None:
    db = await Database.open(store_location)

    def insert_then_fail(conn: Connection) -> None:
        insert_job(conn, "j1")
        raise LookupError("changed my mind")

    with pytest.raises(LookupError, match=r"^changed my mind$"):
        await db.write(insert_then_fail)
    assert await db.read(lambda conn: count(conn, "jobs")) == 0
    await db.aclose()


async def test_a_read_changes_nothing(store_location: Path | str) -> None:
    db = await Database.open(store_location)
    await db.read(lambda conn: insert_job(conn, "j1"))
    assert await db.read(lambda conn: count(conn, "jobs")) == 0
    await db.aclose()


async def test_concurrent_writers_all_commit(store_location: Path | str) -> None:
    db = await Database.open(store_location)
    async with trio.open_nursery() as nursery:
        for number in range(40):
            nursery.start_soon(db.write, lambda conn, n=number: insert_job(conn, f"j{n}"))
    assert await db.read(lambda conn: count(conn, "jobs")) == 40
    await db.aclose()


async def test_a_slow_query_does_not_block_the_event_loop(store_location: Path | str) -> None:
    db = await Database.open(store_location)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.001)
            ticks += 1

    def slow_query(conn: Connection) -> int:
        # A recursive count big enough to take a noticeable fraction of a second.
        return int(
            conn.execute(
                text(
                    "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c"
                    " WHERE n < 3000000) SELECT count(*) FROM c"
                )
            ).scalar_one()
        )

    with trio.fail_after(60):
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


async def test_a_closed_store_refuses_calls(store_location: Path | str) -> None:
    db = await Database.open(store_location)
    await db.aclose()
    with pytest.raises(RuntimeError, match=r"^database is closed$"):
        await db.read(stored_bytes)


async def test_an_exclusive_lock_is_held_once(store_location: Path | str) -> None:
    db = await Database.open(store_location)
    other = await Database.open(store_location) if db.shared else db
    async with db.backend.exclusive("pass") as held:
        assert held
        async with other.backend.exclusive("pass") as again:
            assert not again
        async with other.backend.exclusive("another") as different:
            assert different
    async with other.backend.exclusive("pass") as after:
        assert after
    if other is not db:
        await other.aclose()
    await db.aclose()


async def test_the_stores_clock_is_the_unix_clock(store_location: Path | str) -> None:
    import time

    from refresher.store.sql import dialect

    db = await Database.open(store_location)
    now = await db.read(lambda conn: conn.execute(text(f"SELECT {dialect(conn).now_s}")).scalar())
    assert abs(float(now) - time.time()) < 5
    await db.aclose()


# --- the SQLite backend's own ------------------------------------------------------------


async def test_sqlite_connections_are_set_up(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "db.sqlite3")

    def pragmas(conn: Connection) -> tuple[object, ...]:
        return tuple(
            conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "foreign_keys", "busy_timeout")
        )

    assert await db.read(pragmas) == ("wal", 1, sqlite_store.BUSY_TIMEOUT_MS)
    await db.aclose()


async def test_a_sqlite_file_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "db.sqlite3")
    newer = len(sqlite_store.MIGRATIONS) + 1
    await db.write(lambda conn: conn.exec_driver_sql(f"PRAGMA user_version = {newer}"))
    await db.aclose()
    with pytest.raises(RuntimeError, match=r"is newer than this release knows"):
        await Database.open(tmp_path / "db.sqlite3")


async def test_a_postgres_database_from_a_newer_release_is_refused(postgres_url: str) -> None:
    db = await Database.open(postgres_url)
    newer = len(postgres_store.MIGRATIONS) + 1
    await db.write(
        lambda conn: conn.execute(
            text("INSERT INTO schema_version (version) VALUES (:v)"), {"v": newer}
        )
    )
    await db.aclose()
    with pytest.raises(RuntimeError, match=r"is newer than this release knows"):
        await Database.open(postgres_url)


async def test_processes_starting_together_migrate_once(postgres_url: str) -> None:
    stores: list[Database] = []

    async def open_one() -> None:
        stores.append(await Database.open(postgres_url))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(open_one)
    versions = await stores[0].read(
        lambda conn: [row[0] for row in conn.execute(text("SELECT version FROM schema_version"))]
    )
    assert sorted(versions) == list(range(1, len(postgres_store.MIGRATIONS) + 1))
    for store in stores:
        await store.aclose()
