"""A full storage as a result: recognised in SQLite and file errors, skipped or waited out
by the store's writers, and turned into the reason an encode failed, on a real tmpfs."""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy
import trio
from sqlalchemy import Connection

from refresher.media import effects, encoding
from refresher.media.probe import probe
from refresher.storage import full
from refresher.storage.full import StorageFull, files_written, is_storage_full
from refresher.store import Database, write_if_room, write_when_room
from tests.support.clips import Clips
from tests.support.full_disk import mounted_tmpfs
from tests.support.store import sql

FULL = "database or disk is full"


def test_storage_full_is_told_apart_from_other_errors() -> None:
    assert is_storage_full(sqlite3.OperationalError(FULL))
    assert is_storage_full(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert is_storage_full(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)))
    assert not is_storage_full(sqlite3.OperationalError("database is locked"))
    assert not is_storage_full(OSError(errno.EACCES, os.strerror(errno.EACCES)))
    assert not is_storage_full(ValueError(FULL))
    # PostgreSQL's disk_full, as psycopg raises it and as SQLAlchemy wraps it.
    disk_full = psycopg.errors.DiskFull("could not extend file: No space left on device")
    assert is_storage_full(disk_full)
    assert is_storage_full(sqlalchemy.exc.OperationalError("INSERT", None, disk_full))
    assert not is_storage_full(psycopg.errors.SerializationFailure("try again"))
    with pytest.raises(sqlite3.OperationalError, match=r"^cannot rollback") as rollback:
        _roll_back_after_a_full_disk()
    assert is_storage_full(rollback.value)


def _roll_back_after_a_full_disk() -> None:
    """A ROLLBACK after SQLite already rolled back fails on its own account; the full disk
    is the error it was handling."""
    try:
        raise sqlite3.OperationalError(FULL)
    except sqlite3.OperationalError:
        raise sqlite3.OperationalError("cannot rollback - no transaction is active")  # noqa: B904


def test_a_full_volume_met_writing_files_is_storage_full_and_nothing_else_is() -> None:
    with (
        pytest.raises(StorageFull, match=r"^The storage is full: there was no room for x\.$"),
        files_written("there was no room for x"),
    ):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with (
        pytest.raises(PermissionError),
        files_written("there was no room for x"),
    ):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


class FullStore:
    """Stands in for `Database.write` on a disk that is full for the next `refusals`
    writes (it raises what `Database` raises then); `attempts` keeps the (virtual) time
    of every write."""

    def __init__(self, refusals: int, *, error: Exception | None = None) -> None:
        self.refusals = refusals
        self.error = error or StorageFull("there was no room to write to the job store")
        self.attempts: list[float] = []

    async def write(self, fn: Callable[[Any], Any]) -> Any:
        self.attempts.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if self.refusals:
            self.refusals -= 1
            raise self.error
        return fn(None)


async def test_a_write_that_may_be_lost_is_skipped_on_a_full_disk_only() -> None:
    store: Any = FullStore(refusals=1)
    assert await write_if_room(store, lambda conn: "written", what="progress") is False
    assert await write_if_room(store, lambda conn: "written", what="progress") is True
    locked: Any = FullStore(refusals=1, error=sqlite3.OperationalError("database is locked"))
    with pytest.raises(sqlite3.OperationalError, match=r"^database is locked$"):
        await write_if_room(locked, lambda conn: "written", what="progress")


async def test_a_write_that_must_land_waits_for_room_with_backoff(autojump_clock: Any) -> None:
    store: Any = FullStore(refusals=9)
    start = trio.current_time()
    assert await write_when_room(store, lambda conn: "written", what="state") == "written"
    # Waits of 0.5, 1, 2, 4, 8, 16, then 30 s at most: a full disk for a minute costs
    # eight attempts, not a loop.
    waits = [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert [at - start for at in store.attempts] == [sum(waits[:n]) for n in range(10)]


async def test_a_wait_for_room_lifts_the_callers_shield_so_a_stop_goes_through(
    autojump_clock: Any,
) -> None:
    store: Any = FullStore(refusals=100)
    with trio.move_on_after(10) as stop:
        with trio.CancelScope(shield=True) as finishing:
            await write_when_room(store, lambda conn: "written", what="state", holding=finishing)
    assert stop.cancelled_caught
    assert finishing.shield is False
    assert len(store.attempts) == 5  # at 0, 0.5, 1.5, 3.5 and 7.5 s


async def test_a_commit_on_a_full_volume_is_storage_full_until_room_returns(
    tmp_path: Path,
) -> None:
    with mounted_tmpfs(tmp_path / "volume", 256 * 1024) as volume:
        db = await Database.open(volume / "db.sqlite3")
        try:
            await db.write(lambda conn: sql(conn, "CREATE TABLE notes (text TEXT)"))
            filler = volume / "filler"
            with pytest.raises(OSError, match="No space left on device"):
                filler.write_bytes(bytes(1024 * 1024))

            def note(conn: Connection) -> None:
                sql(conn, "INSERT INTO notes VALUES (:text)", text="x" * 8000)

            with pytest.raises(
                StorageFull,
                match=r"^The storage is full: there was no room to write to the job store\.$",
            ) as refused:
                await db.write(note)
            assert is_storage_full(refused.value.__cause__)
            assert await write_if_room(db, note, what="a note") is False
            filler.unlink()
            assert await write_if_room(db, note, what="a note") is True
        finally:
            await db.aclose()


async def test_an_encode_that_fills_the_volume_fails_with_storage_full_and_leaves_nothing(
    ffmpeg: str, clips: Clips, tmp_path: Path
) -> None:
    source = clips.long_hd  # 4 s of 720p: far more than 256 KiB of variations
    with mounted_tmpfs(tmp_path / "volume", 256 * 1024) as volume:
        variations = [
            encoding.Variation(volume / "out" / f"var{index}.mp4", chosen)
            for index, chosen in enumerate(effects.generate(1, 2), start=1)
        ]
        with (
            trio.fail_after(60),
            pytest.raises(
                StorageFull,
                match=r"^The storage is full: there was no room to write the variations\.$",
            ),
        ):
            await encoding.encode_variations(
                ffmpeg, source, variations, probed=probe(source), on_progress=lambda f: None
            )
        assert list((volume / "out").iterdir()) == []


def test_the_ballast_holds_a_hundredth_of_the_volume_until_released(tmp_path: Path) -> None:
    ballast = tmp_path / "ballast"
    stats = os.statvfs(tmp_path)
    expected = min(
        max(stats.f_blocks * stats.f_frsize // 100, full.BALLAST_MIN_BYTES),
        full.BALLAST_MAX_BYTES,
    )
    assert full.keep_ballast(ballast)
    assert ballast.stat().st_size == expected
    assert full.keep_ballast(ballast)  # kept, not written again
    assert full.release_ballast(ballast)
    assert not ballast.exists()
    assert not full.release_ballast(ballast)  # nothing left to give
