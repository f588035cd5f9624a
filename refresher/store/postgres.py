"""The PostgreSQL backend: the store, the queue and the event bus of any number of
processes, on any number of machines.

- Queries are the same as SQLite's (`refresher.store.database`); a transaction that must
  exclude others locks the rows it decides on (`FOR UPDATE`), and a claim takes rows no
  one else holds (`FOR UPDATE SKIP LOCKED`). Times that must agree across machines
  (leases, claims) come from the database's clock.
- The schema is made by numbered migrations of its own (`MIGRATIONS`), under a
  transaction-scoped advisory lock, so processes starting together migrate once.
- A lock across every process (`exclusive`) is a session advisory lock held on one
  connection for the block: a holder that dies closes its connection, and the lock goes.
- Notifications (`PostgresBus`): `NOTIFY` to publish, and `LISTEN` on a connection of
  its own in a thread of its own (psycopg's async API is asyncio's; trio runs it in a
  thread, as it runs every query).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import psycopg
import sqlalchemy
import trio
from psycopg import sql
from sqlalchemy import Connection, text

from refresher.store.sql import Dialect, register

LOGGER = logging.getLogger(__name__)

DIALECT = register(
    "postgresql",
    # NO KEY UPDATE, not UPDATE: a row locked so still lets others insert rows that
    # refer to it (a foreign key check takes KEY SHARE), so a job's lock never waits on,
    # or deadlocks with, a worker recording outputs of the job.
    Dialect(
        for_update=" FOR NO KEY UPDATE",
        skip_locked=" FOR NO KEY UPDATE SKIP LOCKED",
        now_s="extract(epoch FROM clock_timestamp())::double precision",
    ),
)
# Threads of one process that may hold a connection at once: each process of the
# cluster opens this many (plus a held lock's), so the server's max_connections bounds
# how many processes may share it.
CONNECTIONS = 4
# Connections beyond the pool's for a while (a held lock, a burst): never a wait.
OVERFLOW_CONNECTIONS = 4
# The LISTEN connection looks for a stop this often while no notification comes.
LISTEN_POLL_S = 0.5
# Notifications waiting to be sent; past it a publisher drops one (with a warning)
# rather than wait: events are hints, and every reader can read the store afresh.
PENDING_NOTIFICATIONS = 10_000
# The advisory lock every migration takes, so that one process migrates at a time.
MIGRATION_LOCK = "video-refresher migrations"

# Each entry moves the schema from version N to N+1 (N = its index). Never edit a
# released entry: add a new one. Version 1 is SQLite's version 5, made at once.
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
        seed                 BIGINT NOT NULL,
        thumbnail_path       TEXT,
        error                TEXT,
        cancelled_at         TEXT,
        deleted_reason       TEXT,
        archive_bytes        BIGINT,
        strength             TEXT NOT NULL DEFAULT 'subtle'
            CHECK (strength IN ('subtle', 'standard', 'strong')),
        mirror               INTEGER NOT NULL DEFAULT 0 CHECK (mirror IN (0, 1))
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
        file_size            BIGINT NOT NULL CHECK (file_size >= 0),
        status               TEXT NOT NULL CHECK (status IN
            ('queued', 'processing', 'completed', 'failed', 'cancelled')),
        progress             DOUBLE PRECISION NOT NULL DEFAULT 0,
        duration_s           DOUBLE PRECISION,
        completed_variations INTEGER NOT NULL DEFAULT 0,
        error                TEXT,
        updated_at           TEXT NOT NULL,
        still_path           TEXT,
        claimed_by           TEXT,
        claim_token          TEXT,
        claimed_until        DOUBLE PRECISION,
        UNIQUE (job_id, position)
    );

    CREATE TABLE output_files (
        id                   TEXT PRIMARY KEY,
        job_id               TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        job_file_id          TEXT NOT NULL REFERENCES job_files (id) ON DELETE CASCADE,
        variation_index      INTEGER NOT NULL CHECK (variation_index >= 1),
        path                 TEXT NOT NULL,
        size                 BIGINT NOT NULL CHECK (size >= 0),
        crc32                BIGINT NOT NULL,
        effects_json         TEXT NOT NULL,
        created_at           TEXT NOT NULL,
        measured_json        TEXT,
        pdq_hashes           BYTEA,
        attempts             INTEGER NOT NULL DEFAULT 1,
        still_path           TEXT,
        UNIQUE (job_file_id, variation_index)
    );
    CREATE INDEX output_files_job ON output_files (job_id);

    CREATE TABLE leases (
        id                   TEXT PRIMARY KEY,
        job_id               TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        holder               TEXT NOT NULL,
        acquired_at          TEXT NOT NULL,
        expires_at           DOUBLE PRECISION NOT NULL DEFAULT 0
    );
    CREATE INDEX leases_job ON leases (job_id);
    CREATE INDEX leases_expires ON leases (expires_at);

    CREATE TABLE deletion_reservations (
        job_id               TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
        reserved_at          TEXT NOT NULL,
        reason               TEXT NOT NULL
    );

    CREATE TABLE settings (
        key                  TEXT PRIMARY KEY,
        value                TEXT NOT NULL
    );
    """,
    """
    -- 2: uploads that survive (see the SQLite backend's migration 6).
    ALTER TABLE jobs ADD COLUMN source TEXT NOT NULL DEFAULT 'upload';
    ALTER TABLE job_files ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE uploads (
        id                   TEXT PRIMARY KEY,
        name                 TEXT NOT NULL,
        length               BIGINT NOT NULL,
        received             BIGINT NOT NULL DEFAULT 0,
        metadata             TEXT NOT NULL DEFAULT '{}',
        created_at           TEXT NOT NULL,
        expires_at           DOUBLE PRECISION NOT NULL,
        writer               TEXT,
        writer_until         DOUBLE PRECISION,
        pieces               TEXT NOT NULL DEFAULT '[]',
        taken_by             TEXT
    );
    CREATE INDEX uploads_expires ON uploads (expires_at);
    """,
    """
    -- 3: a fair queue (see the SQLite backend's migration 7).
    ALTER TABLE jobs ADD COLUMN served_at DOUBLE PRECISION;
    """,
)


def lock_key(name: str) -> int:
    """A stable 64-bit advisory lock key for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def migrate(conn: Connection) -> list[int]:
    """Bring the schema up to date in the caller's transaction; return versions applied.

    A database from a newer release is refused, not downgraded."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(MIGRATION_LOCK)})
    conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
    current = conn.execute(text("SELECT max(version) FROM schema_version")).scalar() or 0
    if current > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema version {current} is newer than this release knows "
            f"({len(MIGRATIONS)}); refusing to touch it"
        )
    applied = []
    for version in range(current, len(MIGRATIONS)):
        conn.exec_driver_sql(MIGRATIONS[version])
        conn.execute(text("INSERT INTO schema_version (version) VALUES (:v)"), {"v": version + 1})
        applied.append(version + 1)
        LOGGER.info("database migrated to schema version %d", version + 1)
    return applied


def engine_url(url: str) -> str:
    """SQLAlchemy's URL for a libpq one: the psycopg (3) driver named."""
    scheme, _, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if scheme in ("postgresql", "postgres") else url


class PostgresBackend:
    """The store in one PostgreSQL database, for any number of processes."""

    name = "postgresql"
    shared = True
    connections = CONNECTIONS

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sqlalchemy.create_engine(
            engine_url(url),
            poolclass=sqlalchemy.QueuePool,
            pool_size=CONNECTIONS,
            max_overflow=OVERFLOW_CONNECTIONS,
            pool_pre_ping=True,
        )

    def migrate(self, conn: Connection) -> list[int]:
        return migrate(conn)

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        key = lock_key(name)

        def take() -> tuple[Connection, bool]:
            conn = self.engine.connect()
            try:
                held = bool(
                    conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
                )
                conn.commit()  # the lock is the session's; no transaction stays open
            except BaseException:
                conn.close()
                raise
            return conn, held

        def give_back(conn: Connection, held: bool) -> None:
            try:
                if held:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    conn.commit()
            finally:
                conn.close()

        conn, held = await trio.to_thread.run_sync(take)
        try:
            yield held
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(give_back, conn, held)

    def close(self) -> None:
        self.engine.dispose()


def open_backend(url: str) -> PostgresBackend:
    """The PostgreSQL backend of the database at `url` (blocking)."""
    return PostgresBackend(url)


class PostgresBus:
    """Notifications between every process that shares the database.

    `publish` never waits: it queues, and `run` sends what is queued with `pg_notify` in
    a thread. `run` also listens, on a connection of its own, to the channels subscribed
    to, and calls each handler in the loop. Run it under a supervisor: a listening
    connection that breaks ends `run` with the error, and a restart listens again.
    Notifications sent while no connection listened are lost; every reader of one reads
    the store afresh at its next look, so they are hints, never the record.
    """

    name = "bus"

    def __init__(self, url: str, engine: sqlalchemy.Engine) -> None:
        self.url = url
        self.engine = engine
        self._handlers: dict[str, list[Callable[[str], object]]] = {}
        self._send, self._pending = trio.open_memory_channel[tuple[str, str]](PENDING_NOTIFICATIONS)

    def subscribe(self, channel: str, handler: Callable[[str], object]) -> None:
        """Call `handler(payload)` for every notification on `channel` (not waiting)."""
        self._handlers.setdefault(channel, []).append(handler)

    def publish(self, channel: str, payload: str) -> None:
        try:
            self._send.send_nowait((channel, payload))
        except trio.WouldBlock:
            LOGGER.warning("notification on %s dropped: %d waiting", channel, PENDING_NOTIFICATIONS)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send and receive notifications until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._listen, list(self._handlers))
            nursery.start_soon(self._send_pending)
            task_status.started()

    async def _send_pending(self) -> None:
        while True:
            batch = [await self._pending.receive()]
            while True:
                try:
                    batch.append(self._pending.receive_nowait())
                except trio.WouldBlock:
                    break

            def send(notes: Sequence[tuple[str, str]] = tuple(batch)) -> None:
                with self.engine.begin() as conn:
                    for channel, payload in notes:
                        conn.execute(
                            text("SELECT pg_notify(:channel, :payload)"),
                            {"channel": channel, "payload": payload},
                        )

            await trio.to_thread.run_sync(send)

    async def _listen(
        self, channels: list[str], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()
        listening = trio.Event()

        def deliver(channel: str, payload: str) -> None:
            for handler in self._handlers.get(channel, []):
                try:
                    handler(payload)
                except Exception:  # one handler's fault must not silence the others
                    LOGGER.exception("a handler of %s failed", channel)

        def listen() -> None:
            with psycopg.connect(self.url, autocommit=True) as conn:
                for channel in channels:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                token.run_sync_soon(listening.set)
                while not stop.is_set():
                    for note in conn.notifies(timeout=LISTEN_POLL_S):
                        token.run_sync_soon(deliver, note.channel, note.payload)
                        if stop.is_set():
                            break

        async with trio.open_nursery() as nursery:

            async def run_listener() -> None:
                try:
                    await trio.to_thread.run_sync(listen, abandon_on_cancel=False)
                finally:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(run_listener)
            await listening.wait()
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                stop.set()
