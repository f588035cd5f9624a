"""Queue estimates: places in the queue, and start and end times from measured speed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from refresher.jobs import estimates, transitions
from refresher.store import Database
from tests.support.jobs import NOW

pytestmark = pytest.mark.both_stores


async def queued(db: Database, job_id: str, created: float, variations: int) -> None:
    file = transitions.NewFile(f"{job_id}-f", "a.mp4", f"uploads/{job_id}/0.upload", 10, 1.0)
    await db.write(
        lambda conn: transitions.insert_job(
            conn, job_id=job_id, files=[file], variations_per_video=variations, seed=1,
            now=created, ttl_s=86400.0,
        )
    )  # fmt: skip


async def test_places_and_times_follow_the_turns_the_queue_takes(
    tmp_path: Path, database_url: str | None
) -> None:
    db = await Database.open(database_url or tmp_path / "db.sqlite3")
    try:
        await queued(db, "big", NOW, 15)
        await queued(db, "small", NOW + 1, 1)
        await queued(db, "later", NOW + 2, 2)
        # Nothing measured yet: places, no times.
        found = await db.read(estimates.estimates)
        assert [(found[j].queue_position, found[j].done_s) for j in ("big", "small", "later")] == [
            (1, None), (2, None), (3, None),
        ]  # fmt: skip
        # The big job under way with 5 of 15 made, at 2 s a variation (two batches
        # measured: 2 s, then 2 s again).
        await db.write(
            lambda conn: conn.execute(text("UPDATE jobs SET served_at = 1 WHERE id = 'big'"))
        )
        await db.write(
            lambda conn: conn.execute(
                text(
                    """INSERT INTO output_files (id, job_id, job_file_id, variation_index, path,
                                                 size, crc32, effects_json, created_at)
                       VALUES (:id, 'big', 'big-f', :n, :path, 1, 0, '{}', '2026-01-01')"""
                ),
                [{"id": f"o{n}", "n": n, "path": f"jobs/big/o{n}.mp4"} for n in range(1, 6)],
            )
        )
        for seconds in (2.0, 2.0):
            await db.write(lambda conn, s=seconds: estimates.record_speed(conn, s))
        found = await db.read(estimates.estimates)
    finally:
        await db.aclose()
    big, small, later = found["big"], found["small"], found["later"]
    assert big.queue_position is None
    assert (small.queue_position, later.queue_position) == (1, 2)
    # One worker; left: big 10, small 1, later 2. Each ends once every job has made
    # min(its own left, that many): big 2 s x (10 + 1 + 2), small 2 s x (1 + 1 + 1).
    assert big.done_s == 26
    # Small starts after the batch under way (5 variations: 10 s); later one turn more.
    assert (small.start_s, later.start_s) == (10, 20)
    assert small.done_s == 10  # never before it starts
    assert later.done_s == 20
