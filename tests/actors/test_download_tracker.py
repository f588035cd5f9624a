from __future__ import annotations

import pytest
import trio

from actors.download_tracker import DownloadTracker, LeaseRefused
from actors.runtime import Supervisor
from refresher import jobstore
from refresher.db import Database
from refresher.storage import Paths
from tests.support.jobs import NOW, make_finished_job


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


@pytest.mark.parametrize(("status", "reason"), [("queued", "not_ready"), ("expired", "gone")])
async def test_lease_refused_for_jobs_without_results(
    nursery: trio.Nursery, db: Database, paths: Paths, status: str, reason: str
) -> None:
    job_id = await make_finished_job(db, paths)
    await db.write(
        lambda conn: conn.execute("UPDATE jobs SET status = ? WHERE id = ?", (status, job_id))
    )
    tracker = DownloadTracker(db, now=lambda: NOW)
    await start(nursery, tracker)
    with pytest.raises(LeaseRefused) as refused:
        await tracker.acquire(job_id)
    assert refused.value.reason == reason
    with pytest.raises(LeaseRefused) as unknown:
        await tracker.acquire("no-such-job")
    assert unknown.value.reason == "gone"


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


async def test_a_new_process_drops_leases_of_the_dead_one(
    nursery: trio.Nursery, db: Database, paths: Paths
) -> None:
    job_id = await make_finished_job(db, paths)
    old = DownloadTracker(db, now=lambda: NOW)
    with trio.CancelScope() as old_process:
        async with trio.open_nursery() as old_nursery:
            await start(old_nursery, old)
            await old.acquire(job_id)
            old_process.cancel()
    fresh = DownloadTracker(db, now=lambda: NOW)
    await start(nursery, fresh)
    assert await fresh.reserve_for_deletion(job_id, reason="expired")
    assert await db.read(lambda conn: jobstore.load_job(conn, job_id)) is not None
