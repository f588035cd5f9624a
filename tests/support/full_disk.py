"""A full disk for tests: a real small tmpfs where the machine lets us mount one, and a
store whose disk is full for the writes a test picks."""

from __future__ import annotations

import errno
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy
from sqlalchemy import Connection, event

from refresher.storage.usage import read_volume
from refresher.store import Database
from refresher.store.database import Backend

T = TypeVar("T")


@contextmanager
def mounted_tmpfs(mount_point: Path, size_bytes: int) -> Iterator[Path]:
    """Mount a tmpfs of `size_bytes` at `mount_point` (made if need be) for the block.

    Skips the test, with mount's own words, where mounting is not allowed (tests run as
    root in CI, where it is).
    """
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def resize_tmpfs(mount_point: Path, size_bytes: int) -> None:
    """Give a mounted tmpfs a new size, keeping what it holds: room returns (blocking)."""
    subprocess.run(
        ["mount", "-o", f"remount,size={size_bytes}", str(mount_point)],
        capture_output=True,
        check=True,
    )


def statements_with(*fragments: str) -> Callable[[list[str]], bool]:
    """A `full_for` that refuses writes running a statement containing any of `fragments`
    (statements as sent to the driver, each followed by its parameters)."""
    return lambda statements: any(part in sql for sql in statements for part in fragments)


def never(statements: list[str]) -> bool:
    return False


class FillingDatabase(Database):
    """A store whose disk is full for the writes `full_for(statements)` picks (open it with
    `await FillingDatabase.open(path)`).

    Such a write runs, then fails as SQLite fails a commit that finds no room:
    `OperationalError: database or disk is full`, the transaction rolled back. `refused`
    holds the statements of each refused write; set `full_for = never` when room returns.
    """

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self.full_for: Callable[[list[str]], bool] = never
        self.refused: list[list[str]] = []

    async def write(self, fn: Callable[[Connection], T]) -> T:
        def traced(conn: Connection) -> T:
            statements: list[str] = []

            def trace(_c: Connection, _cur: Any, statement: str, params: Any, *_: Any) -> None:
                statements.append(f"{statement} {params!r}")

            event.listen(conn, "before_cursor_execute", trace)
            try:
                result = fn(conn)
            finally:
                event.remove(conn, "before_cursor_execute", trace)
            if self.full_for(statements):
                self.refused.append(statements)
                full = sqlite3.OperationalError("database or disk is full")
                raise sqlalchemy.exc.OperationalError("COMMIT", None, full) from full
            return result

        return await super().write(traced)


def free_bytes(path: Path) -> int:
    """Bytes a writer may still put on the volume holding `path` (blocking)."""
    used, usable = read_volume(path)
    return usable - used


def fill_volume(filler: Path, *, leave_bytes: int) -> int:
    """Grow `filler` until only `leave_bytes` of its volume stay free (fewer if the volume
    had fewer); return the bytes it holds. Blocking; call it again to top up."""
    with filler.open("ab", buffering=0) as out:
        while (wanted := free_bytes(filler.parent) - leave_bytes) > 0:
            try:
                out.write(bytes(min(wanted, 1024 * 1024)))
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                break
    return filler.stat().st_size
