"""A full storage is a result, not a crash: one exception for it, and the room held back.

SQLite answers any write on a full volume with `OperationalError: database or disk is
full` (SQLITE_FULL; the transaction is rolled back), progress updates included, and a
file write fails with ENOSPC (EDQUOT past a quota). A task that lets either escape
crash-loops, because its restart redoes the work that filled the disk. So the two layers
that write translate the fault once into `StorageFull`, a reason a person reads: the
store (`refresher.db`, which also skips the writes that can be done without and lets the
ones that must land wait for room) and the file writes (`files_written`). Everything
else catches `StorageFull`.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOGGER = logging.getLogger(__name__)

# What a file write answers on a full volume, or past the owner's quota.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# PostgreSQL's SQLSTATE for a disk with no room left (class 53: insufficient resources).
POSTGRES_DISK_FULL = "53100"
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

    SQLite says so with SQLITE_FULL, PostgreSQL with SQLSTATE 53100 (disk_full), a file
    write with ENOSPC or EDQUOT. Looks through the chain because a failed ROLLBACK after
    SQLITE_FULL (SQLite may already have rolled back) raises an error of its own with the
    real one as context.
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
        if getattr(seen, "sqlstate", None) == POSTGRES_DISK_FULL:  # psycopg's errors
            return True
        # SQLAlchemy keeps the driver's error as `orig` (and as the cause when it raised).
        seen = getattr(seen, "orig", None) or seen.__cause__ or seen.__context__
    return False


@contextmanager
def files_written(what: str) -> Iterator[None]:
    """Let a full volume met in the block (ENOSPC, EDQUOT) out as `StorageFull(what)`:
    the one place a file write's full storage is told apart."""
    try:
        yield
    except OSError as err:
        if err.errno in FULL_ERRNOS:
            raise StorageFull(what) from err
        raise


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
