"""The job store: SQLite schema, numbered migrations, and queries run off the trio loop.

SQLite calls block, so every query runs in a worker thread through `trio.to_thread`. A
connection is never used by two threads at once: `Database` keeps a small pool of idle
connections and lends each to exactly one thread for the length of one call, so the loop
never waits on the disk and no connection is shared unsafely. Writers take the write
lock up front (`BEGIN IMMEDIATE`), so two writers queue on `busy_timeout` instead of
failing with a lock upgrade deadlock.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, TypeVar

import trio

from refresher.storage.full import StorageFull, is_storage_full

LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

# A writer waits this long for another writer's lock before SQLite gives up; long enough
# to ride out a janitor pass, short enough that a wedged writer shows as an error.
BUSY_TIMEOUT_MS = 10_000
# Threads that may hold a connection at once. SQLite allows one writer; readers beside
# it are cheap under WAL, and more threads than this only queue inside SQLite.
MAX_CONNECTIONS = 4

# Each entry moves the schema from version N to N+1 (N = its index). Never edit a
# released entry: add a new one. (So the status lists in the CHECK constraints below are
# the history of `refresher.jobs.status.JobStatus`, written out, not derived from it.)
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id                   TEXT PRIMARY KEY,
        status               TEXT NOT NULL CHECK (status IN
            ('queued', 'processing', 'completed', 'failed', 'cancelled', 'expired', 'evicted')),
        created_at           TEXT NOT NULL,
        updated_at           TEXT NOT NULL,
        finished_at          TEXT,
        expires_at           TEXT NOT NULL,
        total_videos         INTEGER NOT NULL CHECK (total_videos >= 0),
        variations_per_video INTEGER NOT NULL CHECK (variations_per_video >= 1),
        total_variations     INTEGER NOT NULL CHECK (total_variations >= 0),
        seed                 INTEGER NOT NULL,
        thumbnail_path       TEXT,
        error                TEXT,
        cancelled_at         TEXT,
        deleted_reason       TEXT
    );
    CREATE INDEX jobs_status_created ON jobs (status, created_at);
    CREATE INDEX jobs_expires ON jobs (expires_at);
    CREATE INDEX jobs_finished ON jobs (finished_at);

    CREATE TABLE job_files (
        id                   TEXT PRIMARY KEY,
        job_id               TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        position             INTEGER NOT NULL,
        original_name        TEXT NOT NULL,
        upload_path          TEXT,
        file_size            INTEGER NOT NULL CHECK (file_size >= 0),
        status               TEXT NOT NULL CHECK (status IN
            ('queued', 'processing', 'completed', 'failed', 'cancelled')),
        progress             REAL NOT NULL DEFAULT 0,
        duration_s           REAL,
        completed_variations INTEGER NOT NULL DEFAULT 0,
        error                TEXT,
        updated_at           TEXT NOT NULL,
        UNIQUE (job_id, position)
    );

    CREATE TABLE output_files (
        id                   TEXT PRIMARY KEY,
        job_id               TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        job_file_id          TEXT NOT NULL REFERENCES job_files (id) ON DELETE CASCADE,
        variation_index      INTEGER NOT NULL CHECK (variation_index >= 1),
        path                 TEXT NOT NULL,
        size                 INTEGER NOT NULL CHECK (size >= 0),
        crc32                INTEGER NOT NULL,
        effects_json         TEXT NOT NULL,
        created_at           TEXT NOT NULL,
        UNIQUE (job_file_id, variation_index)
    );
    CREATE INDEX output_files_job ON output_files (job_id);
    """,
    """
    -- A download in flight holds a lease on its job; `boot_id` names the process that
    -- serves it, so leases of a process that died can be told apart and dropped.
    CREATE TABLE leases (
        id                   TEXT PRIMARY KEY,
        job_id               TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        boot_id              TEXT NOT NULL,
        acquired_at          TEXT NOT NULL
    );
    CREATE INDEX leases_job ON leases (job_id);

    -- A job granted to the janitor, the evictor or a DELETE for removal: from then on no
    -- new lease is given.
    CREATE TABLE deletion_reservations (
        job_id               TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
        reserved_at          TEXT NOT NULL,
        reason               TEXT NOT NULL
    );
    """,
    """
    -- The size of the job's ZIP, kept when the job finishes (and when reconciliation
    -- forgets outputs), so that showing a job lays out no archive.
    ALTER TABLE jobs ADD COLUMN archive_bytes INTEGER;
    """,
    """
    -- 4: strength levels, and what measuring each variation found (refresher.media.measure).
    ALTER TABLE jobs ADD COLUMN strength TEXT NOT NULL DEFAULT 'subtle'
        CHECK (strength IN ('subtle', 'standard', 'strong'));
    ALTER TABLE jobs ADD COLUMN mirror INTEGER NOT NULL DEFAULT 0 CHECK (mirror IN (0, 1));
    ALTER TABLE job_files ADD COLUMN still_path TEXT;
    ALTER TABLE output_files ADD COLUMN measured_json TEXT;
    ALTER TABLE output_files ADD COLUMN pdq_hashes BLOB;
    ALTER TABLE output_files ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE output_files ADD COLUMN still_path TEXT;
    """,
)


def schema_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Bring the schema up to date, one transaction per migration; return versions applied.

    Safe to run on every start: an up-to-date database is left untouched. A database from
    a newer release (a higher version than this code knows) is refused, not downgraded.
    """
    applied: list[int] = []
    current = schema_version(conn)
    if current > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema version {current} is newer than this release knows "
            f"({len(MIGRATIONS)}); refusing to touch it"
        )
    for version in range(current, len(MIGRATIONS)):
        with _transaction(conn):
            # executescript would COMMIT our transaction first; split into statements.
            for statement in _statements(MIGRATIONS[version]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
        applied.append(version + 1)
        LOGGER.info("database migrated to schema version %d", version + 1)
    return applied


def _statements(script: str) -> Iterator[str]:
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement in migration: {pending.strip()[:60]!r}")


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def connect(path: Path) -> sqlite3.Connection:
    """Open a connection with the service's settings (WAL, foreign keys, busy timeout)."""
    # isolation_level=None: no implicit transactions; `_transaction` makes them explicit.
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def placeholders(count: int) -> str:
    """`?, ?, ?`: the parameter marks of an `IN (...)` list of `count` values."""
    return ", ".join("?" * count)


class Database:
    """The job store, usable from trio: `await db.read(fn)` / `await db.write(fn)`.

    `fn` receives a `sqlite3.Connection` and runs in a worker thread; `write` wraps it in
    one transaction (committed when `fn` returns, rolled back when it raises). A call
    is not abandoned when cancelled: it finishes in its thread first, so a transaction
    is never left half-applied by a cancel. A full storage raises `StorageFull`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._idle: list[sqlite3.Connection] = []
        self._limiter = trio.CapacityLimiter(MAX_CONNECTIONS)
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> Database:
        """Open (creating if needed) and migrate the database at `path`."""
        db = cls(path)
        await trio.to_thread.run_sync(path.parent.mkdir, 0o755, True, True)
        await db.read(migrate)
        return db

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in a worker thread, outside any explicit transaction."""
        return await self._run(fn, transaction=False)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in a worker thread inside one write transaction."""
        return await self._run(fn, transaction=True)

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, transaction: bool) -> T:
        if self._closed:
            raise RuntimeError("database is closed")

        def call() -> T:
            conn = self._idle.pop() if self._idle else connect(self.path)
            try:
                if not transaction:
                    return fn(conn)
                with _transaction(conn):
                    return fn(conn)
            finally:
                # list.append/pop are atomic under the GIL; the limiter bounds the pool.
                self._idle.append(conn)

        try:
            return await trio.to_thread.run_sync(call, limiter=self._limiter)
        except sqlite3.Error as err:
            if is_storage_full(err):  # the transaction was rolled back: nothing changed
                raise StorageFull("there was no room to write to the job store") from err
            raise

    async def aclose(self) -> None:
        """Close every pooled connection once running calls finish; later calls raise."""
        self._closed = True
        # Hold every slot of the limiter: then no call is running in a thread any more.
        for slot in range(MAX_CONNECTIONS):
            await self._limiter.acquire_on_behalf_of(("aclose", id(self), slot))
        idle, self._idle = self._idle, []
        for conn in idle:
            await trio.to_thread.run_sync(conn.close)


# --- writes on a full storage ---------------------------------------------------------

# A write that must land tries again after this long, twice as long each time, up to the
# cap: soon after room returns, without a log line a second while it does not.
WRITE_RETRY_FIRST_S = 0.5
WRITE_RETRY_MAX_S = 30.0


class Writer(Protocol):
    """What writes to the store (`Database`)."""

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


async def write_if_room(db: Writer, fn: Callable[[sqlite3.Connection], T], *, what: str) -> bool:
    """Write `fn` unless the storage is full; return whether it was written.

    For writes the service can do without (progress only a page reload shows): a full
    storage is logged and the write skipped; any other error propagates.
    """
    try:
        await db.write(fn)
    except StorageFull as err:
        LOGGER.warning("storage full: %s skipped: %s", what, err.__cause__)
        return False
    return True


async def write_when_room(
    db: Writer,
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
        except StorageFull as err:
            LOGGER.warning("storage full: %s waits %g s for room: %s", what, delay, err.__cause__)
        if holding is not None:
            holding.shield = False
        await trio.sleep(delay)
        delay = min(2 * delay, WRITE_RETRY_MAX_S)
