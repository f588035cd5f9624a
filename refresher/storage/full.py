"""A full storage is a result, not a crash: telling it apart, and writing to the store anyway.

SQLite answers any write on a full volume with `OperationalError: database or disk is
full` (SQLITE_FULL; the transaction is rolled back), progress updates included, and a
file write fails with ENOSPC (EDQUOT past a quota). A task that lets either escape
crash-loops, because its restart redoes the work that filled the disk. So the service
recognises the fault (`is_storage_full`), fails the work at hand with a reason a person
reads (`StorageFull`), skips the writes it can do without (`write_if_room`) and lets the
ones that must land wait for room (`write_when_room`).
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from refresher.db import Database

LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

# What a file write answers on a full volume, or past the owner's quota.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# A write that must land tries again after this long, twice as long each time, up to the
# cap: soon after room returns, without a log line a second while it does not.
WRITE_RETRY_FIRST_S = 0.5
WRITE_RETRY_MAX_S = 30.0
# The ballast: a file of room held back on the volume and given up when a removal finds
# the storage full, since removing results writes to the database too (its log), and a
# full volume must not lock out the one thing that frees it. A hundredth of the volume,
# within these bounds: a reservation and a tombstone take a few pages.
BALLAST_MIN_BYTES = 64 * 1024
BALLAST_MAX_BYTES = 4 * 1024 * 1024


class StorageFull(Exception):
    """There was no room for something the service had to write; `what` says what."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"The storage is full: {what}.")


def is_storage_full(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised while handling, says the storage is full.

    Looks through the chain because a failed ROLLBACK after SQLITE_FULL (SQLite may
    already have rolled back) raises an error of its own with the real one as context.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sqlite3.Error) and (
            getattr(seen, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            or "database or disk is full" in str(seen)
        ):
            return True
        if isinstance(seen, OSError) and seen.errno in FULL_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def write_if_room(db: Database, fn: Callable[[sqlite3.Connection], T], *, what: str) -> bool:
    """Write `fn` unless the storage is full; return whether it was written.

    For writes the service can do without (progress only a page reload shows): a full
    storage is logged and the write skipped; any other error propagates.
    """
    try:
        await db.write(fn)
    except sqlite3.Error as err:
        if not is_storage_full(err):
            raise
        LOGGER.warning("storage full: %s skipped: %s", what, err)
        return False
    return True


async def write_when_room(
    db: Database,
    fn: Callable[[sqlite3.Connection], T],
    *,
    what: str,
    holding: trio.CancelScope | None = None,
) -> T:
    """Write `fn` and return its result, waiting for room while the storage is full.

    For writes that must land (a job's state): a full storage is logged and the write
    tried again after WRITE_RETRY_FIRST_S, doubling up to WRITE_RETRY_MAX_S; any other
    error propagates. Cancellation while waiting leaves the write undone, so the caller's
    next run must be able to finish it. `holding`, a shield around the caller, is lifted
    once the write has to wait: a full disk never holds up a stop.
    """
    delay = WRITE_RETRY_FIRST_S
    while True:
        try:
            return await db.write(fn)
        except sqlite3.Error as err:
            if not is_storage_full(err):
                raise
            LOGGER.warning("storage full: %s waits %g s for room: %s", what, delay, err)
        if holding is not None:
            holding.shield = False
        await trio.sleep(delay)
        delay = min(2 * delay, WRITE_RETRY_MAX_S)


def keep_ballast(path: Path) -> bool:
    """Make sure the ballast file is at `path`, where the volume has room for twice it;
    return whether it is there (blocking)."""
    stats = os.statvfs(path.parent)
    size = min(max(stats.f_blocks * stats.f_frsize // 100, BALLAST_MIN_BYTES), BALLAST_MAX_BYTES)
    try:
        if path.stat().st_size >= size:
            return True
    except FileNotFoundError:
        pass
    if stats.f_bavail * stats.f_frsize < 2 * size:
        return False
    try:
        with path.open("wb") as file:
            file.write(bytes(size))  # real blocks, not a sparse file
            file.flush()
            os.fsync(file.fileno())
    except OSError as err:
        path.unlink(missing_ok=True)
        if err.errno in FULL_ERRNOS:
            return False
        raise
    return True


def release_ballast(path: Path) -> bool:
    """Give the ballast's room back to the volume; return whether there was any (blocking)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    LOGGER.warning("storage full: released the ballast so that removals can proceed")
    return True
