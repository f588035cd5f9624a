from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing
from sqlalchemy import Connection, text

from actors.download_tracker import DownloadTracker, LeaseRefused
from actors.runtime import Supervisor
from refresher.jobs import records
from refresher.jobs.lifecycle import Lifecycle
from refresher.jobs.transitions import RemovalReason
from refresher.storage import removal
from refresher.storage.paths import Paths
from refresher.store import Database
from refresher.store.database import Backend
from tests.support.clock import DAY_S
from tests.support.full_disk import FillingDatabase
from tests.support.jobs import NOW, make_finished_job
from tests.support.store import sql

# The job lifecycle, leases, removal and downloads hold on either store.
pytestmark = pytest.mark.both_stores

T = TypeVar("T")


async def start(nursery: trio.Nursery, tracker: DownloadTracker) -> Supervisor:
    supervisor = Supervisor([tracker])
    await nursery.start(supervisor.run)
    return supervisor


async def test_lease_and_reservation_exclude_each_other(
    nursery: trio.Nursery, db: Database, paths: Paths
) -> None:
    job_id = await make_finished_job(db, paths)
    tracker = DownloadTracker(db, now=lambda: NOW)
    await start(nursery, tracker)
    lease = await tracker.acquire(job_id)
    second = await tracker.acquire(job_id)
    assert not await tracker.reserve_for_deletion(job_id, reason="expired")
    await tracker.release(lease)
    assert not await tracker.reserve_for_deletion(job_id, reason="expired")
    await tracker.release(second)
    assert await tracker.reserve_for_deletion(job_id, reason="expired")
    assert await tracker.reserve_for_deletion(job_id, reason="expired")  # idempotent
    with pytest.raises(LeaseRefused, match=r"reserved$"):
        await tracker.acquire(job_id)


async def _with_status(db: Database, job_id: str, status: str) -> None:
    await db.write(
        lambda conn: conn.execute(
            text("UPDATE jobs SET status = :status WHERE id = :id"),
            {"status": status, "id": job_id},
        )
    )


@pytest.mark.parametrize("status", ["expired", "evicted"])
async def test_lease_refused_for_jobs_without_results(
    nursery: trio.Nursery, db: Database, paths: Paths, status: str
) -> None:
    job_id = await make_finished_job(db, paths)
    await _with_status(db, job_id, status)
    tracker = DownloadTracker(db, now=lambda: NOW)
    await start(nursery, tracker)
    with pytest.raises(LeaseRefused) as refused:
        await tracker.acquire(job_id)
    assert refused.value.reason == "gone"
    with pytest.raises(LeaseRefused) as unknown:
        await tracker.acquire("no-such-job")
    assert unknown.value.reason == "gone"


@pytest.mark.parametrize("status", ["queued", "processing"])
async def test_a_running_job_is_leased_while_its_recorded_variations_are_read(
    nursery: trio.Nursery, db: Database, paths: Paths, status: str
) -> None:
    """Its variations play as soon as they are recorded; a deletion waits for them."""
    job_id = await make_finished_job(db, paths)
    await _with_status(db, job_id, status)
    tracker = DownloadTracker(db, now=lambda: NOW)
    await start(nursery, tracker)
    lease = await tracker.acquire(job_id)
    assert not await tracker.reserve_for_deletion(job_id, reason="deleted")
    await tracker.release(lease)
    assert await tracker.reserve_for_deletion(job_id, reason="deleted")


async def test_leases_survive_a_kill_and_restart_of_the_tracker(
    nursery: trio.Nursery, db: Database, paths: Paths
) -> None:
    job_id = await make_finished_job(db, paths)
    tracker = DownloadTracker(db, now=lambda: NOW)
    supervisor = await start(nursery, tracker)
    lease = await tracker.acquire(job_id)
    supervisor.kill("download_tracker")
    # Asked while the tracker is down: the request waits in its inbox for the restart.
    assert not await tracker.reserve_for_deletion(job_id, reason="evicted")
    assert supervisor.status()["download_tracker"].restarts == 1
    await tracker.release(lease)
    assert await tracker.reserve_for_deletion(job_id, reason="evicted")


async def test_a_dead_process_leaves_no_lease_for_long(
    nursery: trio.Nursery, db: Database, paths: Paths
) -> None:
    lapse_s = 1.0
    job_id = await make_finished_job(db, paths)
    old = DownloadTracker(db, now=lambda: NOW, ttl_s=lapse_s)
    with trio.CancelScope() as old_process:
        async with trio.open_nursery() as old_nursery:
            await start(old_nursery, old)
            await old.acquire(job_id)
            await trio.sleep(2 * lapse_s)  # renewed while the process lives
            assert not await old.reserve_for_deletion(job_id, reason="expired")
            old_process.cancel()
    fresh = DownloadTracker(db, now=lambda: NOW, ttl_s=lapse_s)
    await start(nursery, fresh)
    if db.shared:
        # Other processes may be serving downloads: the dead one's lease lapses.
        assert not await fresh.reserve_for_deletion(job_id, reason="expired")
        await trio.sleep(lapse_s)
    # Where one process owns the store, an earlier run's leases go at once.
    assert await fresh.reserve_for_deletion(job_id, reason="expired")
    assert await db.read(lambda conn: records.load_job(conn, job_id)) is not None


class SlowWritesDatabase(Database):
    """A database whose writes wait for `gate` once `hold` is set: a tracker caught in the
    middle of writing a lease."""

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self.hold = False
        self.writing = trio.Event()
        self.gate = trio.Event()

    async def write(self, fn: Callable[[Connection], T]) -> T:
        if self.hold:
            self.writing.set()
            await self.gate.wait()
        return await super().write(fn)


async def lease_rows(db: Database) -> int:
    count: int = await db.read(
        lambda conn: conn.execute(text("SELECT count(*) FROM leases")).scalar_one()
    )
    return count


async def test_an_acquire_cancelled_while_the_lease_is_written_leaves_no_lease(
    nursery: trio.Nursery, paths: Paths, tmp_path: Path
) -> None:
    db = await Database.open(tmp_path / "slow.sqlite3")
    job_id = await make_finished_job(db, paths)
    slow = await SlowWritesDatabase.open(tmp_path / "slow.sqlite3")
    assert isinstance(slow, SlowWritesDatabase)
    tracker = DownloadTracker(slow, now=lambda: NOW)
    await start(nursery, tracker)
    slow.hold = True

    async def client(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await tracker.acquire(job_id)

    with trio.fail_after(10):
        async with trio.open_nursery() as clients:
            leaving = await clients.start(client)
            await slow.writing.wait()
            leaving.cancel()  # the client leaves while the tracker writes its lease
            await trio.testing.wait_all_tasks_blocked()
            slow.hold = False
            slow.gate.set()
        # The give-back queued behind the grant in the inbox: no lease is left.
        assert await lease_rows(db) == 0
        assert await tracker.reserve_for_deletion(job_id, reason="expired")
    await slow.aclose()
    await db.aclose()


async def test_a_release_whose_tracker_is_killed_before_it_writes_still_lands(
    nursery: trio.Nursery, paths: Paths, tmp_path: Path
) -> None:
    """The kill arrives while the release waits for the store: the request goes again to
    the restarted tracker. (Answered with the kill itself, the release gave up silently
    and its lease stayed, holding the job from removal until it lapsed.)"""
    db = await Database.open(tmp_path / "slow.sqlite3")
    job_id = await make_finished_job(db, paths)
    slow = await SlowWritesDatabase.open(tmp_path / "slow.sqlite3")
    assert isinstance(slow, SlowWritesDatabase)
    tracker = DownloadTracker(slow, now=lambda: NOW)
    supervisor = await start(nursery, tracker)
    lease = await tracker.acquire(job_id)
    slow.hold = True
    with trio.fail_after(10):
        async with trio.open_nursery() as releasing:
            releasing.start_soon(tracker.release, lease)
            await slow.writing.wait()
            supervisor.kill("download_tracker")  # before the release's write began
            await trio.testing.wait_all_tasks_blocked()
            slow.hold = False
            slow.gate.set()
        assert await lease_rows(db) == 0
        assert supervisor.status()["download_tracker"].restarts == 1
        assert await tracker.reserve_for_deletion(job_id, reason="expired")
    await slow.aclose()
    await db.aclose()


async def test_a_release_that_finds_the_store_full_gives_up_the_ballast_and_lands(
    nursery: trio.Nursery, paths: Paths, tmp_path: Path
) -> None:
    db = await FillingDatabase.open(tmp_path / "full.sqlite3")
    assert isinstance(db, FillingDatabase)
    job_id = await make_finished_job(db, paths)
    paths.ballast.write_bytes(bytes(4096))
    tracker = DownloadTracker(db, now=lambda: NOW, ballast=paths.ballast)
    await start(nursery, tracker)
    lease = await tracker.acquire(job_id)
    refusals = iter([True])  # the first release finds no room; then there is some
    db.full_for = lambda statements: (
        any("DELETE FROM leases" in s for s in statements) and next(refusals, False)
    )
    with trio.fail_after(10):
        await tracker.release(lease)
    assert len(db.refused) == 1
    assert not paths.ballast.exists()
    assert await lease_rows(db) == 0
    await db.aclose()


async def test_a_tombstone_is_reserved_for_its_deletion_only(
    nursery: trio.Nursery, db: Database, paths: Paths
) -> None:
    # The evictor chose the job, then the janitor expired it before the evictor reserved.
    job_id = await make_finished_job(db, paths)
    await db.write(
        lambda conn: sql(conn, "UPDATE jobs SET status = 'expired' WHERE id = :id", id=job_id)
    )
    tracker = DownloadTracker(db, now=lambda: NOW)
    await start(nursery, tracker)
    assert not await tracker.reserve_for_deletion(job_id, reason="evicted")
    assert not await tracker.reserve_for_deletion(job_id, reason="expired")
    assert await tracker.reserve_for_deletion(job_id, reason="deleted")


async def test_a_removal_that_finds_a_tombstone_lets_its_reservation_go(
    db: Database, paths: Paths
) -> None:
    job_id = await make_finished_job(db, paths)

    def reserved_then_expired(conn: Connection) -> None:
        sql(
            conn,
            """INSERT INTO deletion_reservations (job_id, reserved_at, reason)
               VALUES (:id, 'then', 'evicted')""",
            id=job_id,
        )
        sql(conn, "UPDATE jobs SET status = 'expired' WHERE id = :id", id=job_id)

    await db.write(reserved_then_expired)
    lifecycle = Lifecycle(db, paths, now=lambda: NOW, ttl_s=DAY_S)
    retired = await removal.resume(lifecycle, [RemovalReason.EVICTED])
    assert retired == {RemovalReason.EVICTED: []}
    reservations = "SELECT count(*) FROM deletion_reservations"
    assert await db.read(lambda conn: sql(conn, reservations).scalar()) == 0
    assert (await db.read(lambda conn: records.require_job(conn, job_id))).status == "expired"
