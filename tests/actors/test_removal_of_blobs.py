"""Expiry, DELETE-style removal, eviction and reconciliation with the bytes in the data
directory and in a bucket of a real S3 server: blobs go before rows, the quota counts
what the store records (a bucket has no volume), and what no row names is found."""

from __future__ import annotations

import uuid

import pytest
import trio

from actors.download_tracker import DownloadTracker
from actors.evictor import Evictor
from actors.janitor import Janitor
from actors.runtime import Supervisor
from refresher.jobs import records
from refresher.jobs.lifecycle import Lifecycle
from refresher.jobs.transitions import RemovalReason
from refresher.storage import removal
from refresher.storage.blobs import BlobStore
from refresher.storage.paths import Paths
from refresher.store import Database
from tests.support.clock import DAY_S, WallClock, wait_for
from tests.support.jobs import NOW, make_finished_job, output_bytes
from tests.support.store import sql

pytestmark = [pytest.mark.both_stores, pytest.mark.both_blob_stores]


@pytest.fixture
async def tracker(nursery: trio.Nursery, db: Database, wall_clock: WallClock) -> DownloadTracker:
    running = DownloadTracker(db, now=wall_clock)
    await nursery.start(Supervisor([running]).run)
    return running


@pytest.fixture
def lifecycle(
    db: Database, paths: Paths, blob_store: BlobStore, wall_clock: WallClock
) -> Lifecycle:
    return Lifecycle(db, paths, now=wall_clock, ttl_s=DAY_S, blobs=blob_store)


def janitor(lifecycle: Lifecycle, tracker: DownloadTracker, **options: float) -> Janitor:
    return Janitor(lifecycle, tracker, interval_s=300, **options)


async def finished(lifecycle: Lifecycle, **options: object) -> str:
    return await make_finished_job(
        lifecycle.db,
        lifecycle.paths,
        blobs=lifecycle.blobs,
        **options,  # type: ignore[arg-type]
    )


def kept(blobs: BlobStore, paths: Paths, job_id: str) -> dict[str, bytes]:
    return output_bytes(paths, job_id, blobs)


async def test_expiry_removes_the_blobs_then_the_rows(
    lifecycle: Lifecycle, tracker: DownloadTracker, wall_clock: WallClock, paths: Paths
) -> None:
    job_id = await finished(lifecycle, now=NOW)
    other = await finished(lifecycle, now=NOW + DAY_S)
    assert len(await trio.to_thread.run_sync(kept, lifecycle.blobs, paths, job_id)) == 2
    wall_clock.value = NOW + DAY_S
    report = await janitor(lifecycle, tracker).sweep()
    assert report.expired == 1
    expired = await lifecycle.db.read(lambda conn: records.require_job(conn, job_id))
    assert (expired.status, expired.outputs) == ("expired", ())
    assert lifecycle.blobs.entries(paths.job_dir(job_id)) == frozenset()
    assert len(await trio.to_thread.run_sync(kept, lifecycle.blobs, paths, other)) == 2


async def test_a_removal_takes_every_blob_of_the_job(
    lifecycle: Lifecycle, tracker: DownloadTracker, paths: Paths
) -> None:
    job_id = await finished(lifecycle)
    upload = paths.upload_dir(job_id) / "0.upload"  # what a failed end left of its upload
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_bytes(b"u")
    await trio.to_thread.run_sync(lifecycle.blobs.keep, upload)
    done = await removal.remove(lifecycle, tracker, RemovalReason.DELETED, {job_id: None})
    assert done.retired == [job_id]
    assert lifecycle.blobs.entries(paths.jobs) == frozenset()
    assert lifecycle.blobs.entries(paths.uploads) == frozenset()


async def test_eviction_counts_the_stored_bytes_against_the_quota(
    nursery: trio.Nursery, lifecycle: Lifecycle, tracker: DownloadTracker, paths: Paths
) -> None:
    """A bucket has no volume to read: the store's own count of bytes is the usage."""
    jobs = [await finished(lifecycle, now=NOW + n, size=50_000, seed=n) for n in range(4)]
    # Four jobs of 100 kB against a 400 kB quota: above 85 %, evict down under 60 %.
    evictor = Evictor(lifecycle, tracker, quota_bytes=400_000, high=0.85, low=0.6,
                      interval_s=60)  # fmt: skip
    if not lifecycle.blobs.remote:  # the test's own volume is not the point here
        evictor.volume_usage = lambda _root: (0, 0)
    await nursery.start(Supervisor([evictor]).run)

    async def evicted() -> list[str]:
        rows = await lifecycle.db.read(
            lambda conn: [records.require_job(conn, job_id).status for job_id in jobs]
        )
        return rows if rows.count("evicted") == 2 else []

    assert await wait_for(evicted) == ["evicted", "evicted", "completed", "completed"]
    for gone in jobs[:2]:
        assert lifecycle.blobs.entries(paths.job_dir(gone)) == frozenset()
    for stays in jobs[2:]:
        assert len(await trio.to_thread.run_sync(kept, lifecycle.blobs, paths, stays)) == 2


async def test_reconciliation_finds_blobs_without_rows_and_rows_without_blobs(
    lifecycle: Lifecycle, tracker: DownloadTracker, paths: Paths
) -> None:
    blobs = lifecycle.blobs
    whole = await finished(lifecycle, variations=3)
    half = await finished(lifecycle, variations=2)
    # An output a worker kept but never recorded (killed between), in a finished job.
    unrecorded = paths.job_dir(whole) / "f_var9_deadbeef.mp4"
    unrecorded.write_bytes(b"v")
    # A still of it too, and an upload of a web process that died before its row.
    still = paths.stills(whole) / "f_var9_deadbeef.jpg"
    still.parent.mkdir(parents=True)
    still.write_bytes(b"s")
    orphan = paths.upload_dir(str(uuid.uuid4())) / "0.upload"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"u")
    for path in (unrecorded, still, orphan):
        await trio.to_thread.run_sync(blobs.keep, path)
    # One output of the other job vanished from the storage.
    [vanished, *_] = sorted(blobs.entries(paths.job_dir(half)))
    await trio.to_thread.run_sync(blobs.remove, paths.job_dir(half) / vanished)

    report = await janitor(lifecycle, tracker, orphan_grace_s=0).sweep()
    assert (report.orphans, report.partials, report.forgotten_outputs) == (1, 2, 1)
    assert sorted(blobs.entries(paths.job_dir(whole)) - {"stills"}) == sorted(
        name for name in kept(blobs, paths, whole)
    )
    assert blobs.entries(paths.stills(whole)) == frozenset()
    assert blobs.entries(paths.uploads) == frozenset()
    count = await lifecycle.db.read(
        lambda conn: sql(
            conn, "SELECT count(*) FROM output_files WHERE job_id = :id", id=half
        ).scalar_one()
    )
    assert count == 1


@pytest.mark.parametrize("blobs_kind", ["s3"], indirect=True)  # files have no such thing
async def test_an_upload_left_unfinished_in_a_bucket_is_aborted(
    lifecycle: Lifecycle, tracker: DownloadTracker, paths: Paths
) -> None:
    blobs = lifecycle.blobs
    from refresher.storage.s3 import S3Blobs

    assert isinstance(blobs, S3Blobs)
    key = blobs.key(paths.upload_dir(str(uuid.uuid4())) / "0.upload")
    begun = blobs.client.create_multipart_upload(Bucket=blobs.bucket, Key=key)
    blobs.client.upload_part(Bucket=blobs.bucket, Key=key, UploadId=begun["UploadId"],
                             PartNumber=1, Body=b"p" * 1024)  # fmt: skip
    assert (await janitor(lifecycle, tracker).sweep()).abandoned_uploads == 0  # too young
    report = await janitor(lifecycle, tracker, orphan_grace_s=0).sweep()
    assert report.abandoned_uploads == 1
    listing = blobs.client.list_multipart_uploads(Bucket=blobs.bucket)
    assert listing.get("Uploads", []) == []
