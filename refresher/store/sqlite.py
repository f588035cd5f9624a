"""The SQLite backend: one process's store in a file, the default.

Each connection runs in WAL mode with foreign keys on and a busy timeout. Writers take
the write lock up front (`BEGIN IMMEDIATE`), so two writers queue on the busy timeout
instead of failing with a lock upgrade deadlock; readers begin a plain (deferred)
transaction and see one snapshot. One process owns the file, so a cluster-wide lock is a
lock of this process (`exclusive`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
import trio
from sqlalchemy import Connection, Engine, event

from refresher.store.sql import Dialect, register

LOGGER = logging.getLogger(__name__)

# A writer waits this long for another writer's lock before SQLite gives up; long enough
# to ride out a janitor pass, short enough that a wedged writer shows as an error.
BUSY_TIMEOUT_MS = 10_000
# A writer holds the whole database from its BEGIN IMMEDIATE: nothing to lock row by row.
DIALECT = register(
    "sqlite",
    Dialect(for_update="", skip_locked="", now_s="((julianday('now') - 2440587.5) * 86400.0)"),
)
# Threads that may hold a connection at once: one writer at a time, and readers beside it
# are cheap under WAL; more threads than this only queue.
CONNECTIONS = 4

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
    """
    -- 5: past one machine. A lease names its holder (a process) and lasts until
    -- `expires_at` (the database's clock, unix seconds) unless renewed: a holder that
    -- dies leaves none for long. A source file's work is claimed by one worker at a time,
    -- with a heartbeat (`claimed_until`) and a token its outputs carry. Settings any
    -- process may share (the password, the token secret).
    ALTER TABLE leases RENAME COLUMN boot_id TO holder;
    ALTER TABLE leases ADD COLUMN expires_at REAL NOT NULL DEFAULT 0;
    CREATE INDEX leases_expires ON leases (expires_at);
    ALTER TABLE job_files ADD COLUMN claimed_by TEXT;
    ALTER TABLE job_files ADD COLUMN claim_token TEXT;
    ALTER TABLE job_files ADD COLUMN claimed_until REAL;
    CREATE TABLE settings (
        key                  TEXT PRIMARY KEY,
        value                TEXT NOT NULL
    );
    """,
    """
    -- 6: uploads that survive. A job says where its results were made (`source`: the
    -- server encoded an upload, or a device sent its results). A failed file can be
    -- retried (`retries` counts how often). A resumable upload (tus) is a row of its own
    -- until a job takes it: its declared length, the bytes received so far, who is
    -- writing it now (and until when that writer's hold lasts unless renewed), the
    -- pieces a bucket holds it in, and when it expires if left unfinished.
    ALTER TABLE jobs ADD COLUMN source TEXT NOT NULL DEFAULT 'upload';
    ALTER TABLE job_files ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE uploads (
        id                   TEXT PRIMARY KEY,
        name                 TEXT NOT NULL,
        length               INTEGER NOT NULL,
        received             INTEGER NOT NULL DEFAULT 0,
        metadata             TEXT NOT NULL DEFAULT '{}',
        created_at           TEXT NOT NULL,
        expires_at           REAL NOT NULL,
        writer               TEXT,
        writer_until         REAL,
        pieces               TEXT NOT NULL DEFAULT '[]',
        taken_by             TEXT
    );
    CREATE INDEX uploads_expires ON uploads (expires_at);
    """,
    """
    -- 7: a fair queue. When a worker last took a batch of the job (the store's clock,
    -- unix seconds): the next batch goes to the job served longest ago, one never served
    -- first.
    ALTER TABLE jobs ADD COLUMN served_at REAL;
    """,
)


def schema_version(conn: Connection) -> int:
    version: int = conn.exec_driver_sql("PRAGMA user_version").scalar_one()
    return version


def migrate(conn: Connection) -> list[int]:
    """Bring the schema up to date, in the caller's transaction; return versions applied.

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
        for statement in _statements(MIGRATIONS[version]):
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql(f"PRAGMA user_version = {version + 1}")
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


def make_engine(path: Path) -> Engine:
    """An engine over the file at `path` (made if need be) with the service's settings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = sqlalchemy.create_engine(
        f"sqlite+pysqlite:///{path}",
        poolclass=sqlalchemy.QueuePool,
        pool_size=CONNECTIONS,
        max_overflow=0,
        # isolation_level None: the driver begins nothing; `_begin` below does.
        connect_args={
            "check_same_thread": False,
            "timeout": BUSY_TIMEOUT_MS / 1000,
            "isolation_level": None,
        },
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        for pragma in (
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = NORMAL",
            "PRAGMA foreign_keys = ON",
            f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
        ):
            dbapi_connection.execute(pragma)

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")

    return engine


class SqliteBackend:
    """The store in one SQLite file, for one process."""

    name = "sqlite"
    shared = False
    connections = CONNECTIONS

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine = make_engine(path)
        self._locks: dict[str, trio.Lock] = {}

    def migrate(self, conn: Connection) -> list[int]:
        return migrate(conn)

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        lock = self._locks.setdefault(name, trio.Lock())
        if lock.locked():
            yield False
            return
        async with lock:
            yield True

    def close(self) -> None:
        self.engine.dispose()


def open_backend(path: Path) -> SqliteBackend:
    """The SQLite backend over the file at `path` (blocking)."""
    return SqliteBackend(path)


@contextmanager
def writing(path: Path) -> Iterator[Connection]:
    """One write transaction on the store in the file at `path`, migrated first, outside
    trio: for tools that fill a store before a service opens it (blocking)."""
    backend = open_backend(path)
    try:
        with backend.engine.connect() as conn:
            conn.info["write"] = True
            with conn.begin():
                backend.migrate(conn)
                yield conn
    finally:
        backend.close()
