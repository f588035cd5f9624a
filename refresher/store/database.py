"""The job store, usable from trio, over either backend: queries in worker threads.

Every query is SQLAlchemy Core: `text()` with named parameters (`:job_id`), which
SQLAlchemy turns into each driver's own style, so one set of queries serves SQLite and
PostgreSQL. The little that differs (locking clauses, the database's own clock, how
schemas are made, notifications, cluster-wide locks) lives in the backend's module
(`refresher.store.sqlite`, `refresher.store.postgres`) behind `Backend`.

Queries block, so each call runs in a worker thread (`trio.to_thread`) on a connection
of the backend's pool, lent to exactly one thread for the length of one call. `write`
runs its function in one transaction (committed when it returns, rolled back when it
raises); `read` in one too, which it never commits anything in. A call is not abandoned
when cancelled: it finishes in its thread first, so a transaction is never left
half-applied by a cancel. A full storage raises `StorageFull`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol, TypeVar

import sqlalchemy
import trio
from sqlalchemy import Connection, Engine

from refresher.storage.full import StorageFull, is_storage_full

LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

# A lock another process holds is asked for again this often, while patience lasts.
EXCLUSIVE_RETRY_S = 0.25


class Backend(Protocol):
    """What differs between the stores: made by `refresher.store.sqlite.open_backend` or
    `refresher.store.postgres.open_backend`."""

    # "sqlite" or "postgresql": SQLAlchemy's dialect name.
    name: str
    # Whether several processes may share the store (and so need claims, notifications
    # and cluster-wide locks that mean something).
    shared: bool
    # Threads that may hold a connection at once: the pool's size.
    connections: int
    engine: Engine

    def migrate(self, conn: Connection) -> list[int]:
        """Bring the schema up to date; return the versions applied (blocking)."""
        ...

    def exclusive(self, name: str) -> AbstractAsyncContextManager[bool]:
        """Hold the lock `name` across every process sharing the store if it is free, for
        the block: yield whether it is held (a holder that dies hands it over)."""
        ...

    def close(self) -> None:
        """Close every pooled connection (blocking)."""
        ...


class Database:
    """The job store: `await db.read(fn)` / `await db.write(fn)`, where `fn` receives a
    SQLAlchemy `Connection` and runs in a worker thread."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._limiter = trio.CapacityLimiter(backend.connections)
        self._closed = False

    @property
    def shared(self) -> bool:
        """Whether other processes may use the store at the same time."""
        return self.backend.shared

    @classmethod
    async def open(cls, where: Path | str) -> Database:
        """Open (creating if needed) and migrate the store: a path is a SQLite file, a
        `postgresql://` URL a PostgreSQL database."""
        if str(where).startswith(("postgresql:", "postgres:")):
            from refresher.store import postgres

            backend: Backend = await trio.to_thread.run_sync(postgres.open_backend, str(where))
        else:
            from refresher.store import sqlite

            backend = await trio.to_thread.run_sync(sqlite.open_backend, Path(where))
        db = cls(backend)
        await db.write(backend.migrate)
        return db

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn(conn)` in a worker thread, in a transaction that changes nothing."""
        return await self._run(fn, write=False)

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn(conn)` in a worker thread inside one write transaction."""
        return await self._run(fn, write=True)

    async def _run(self, fn: Callable[[Connection], T], *, write: bool) -> T:
        if self._closed:
            raise RuntimeError("database is closed")

        def call() -> T:
            with self.backend.engine.connect() as conn:
                # Read by the backend as the transaction begins (SQLite takes the write
                # lock up front for a writer).
                conn.info["write"] = write
                with conn.begin() as transaction:
                    result = fn(conn)
                    if not write:
                        transaction.rollback()
                    return result

        try:
            return await trio.to_thread.run_sync(call, limiter=self._limiter)
        except sqlalchemy.exc.DBAPIError as err:
            if is_storage_full(err):  # the transaction was rolled back: nothing changed
                raise StorageFull("there was no room to write to the job store") from err
            raise

    @asynccontextmanager
    async def exclusive(self, name: str, *, patience_s: float = 0.0) -> AsyncIterator[bool]:
        """Hold the lock `name`, across every process sharing the store, for the block if
        it comes free within `patience_s`: yield whether it is held. A holder that dies
        hands it over."""
        deadline = trio.current_time() + patience_s
        while True:
            async with self.backend.exclusive(name) as held:
                if held or trio.current_time() >= deadline:
                    yield held
                    return
            await trio.sleep(EXCLUSIVE_RETRY_S)

    async def aclose(self) -> None:
        """Close the pool once running calls finish; later calls raise."""
        self._closed = True
        # Hold every slot of the limiter: then no call is running in a thread any more.
        for slot in range(self.backend.connections):
            await self._limiter.acquire_on_behalf_of(("aclose", id(self), slot))
        await trio.to_thread.run_sync(self.backend.close)


# --- writes on a full storage ---------------------------------------------------------

# A write that must land tries again after this long, twice as long each time, up to the
# cap: soon after room returns, without a log line a second while it does not.
WRITE_RETRY_FIRST_S = 0.5
WRITE_RETRY_MAX_S = 30.0


class Writer(Protocol):
    """What writes to the store (`Database`)."""

    async def write(self, fn: Callable[[Connection], T]) -> T: ...


async def write_if_room(db: Writer, fn: Callable[[Connection], T], *, what: str) -> bool:
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
    fn: Callable[[Connection], T],
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
