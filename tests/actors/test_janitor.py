"""The janitor: expiry on the wall clock, stale queued jobs, tombstones, orphans, kills.

Passes are driven by calling `sweep()` with a wall clock the test moves by hand, except
where the periodic loop itself is under test: there virtual time jumps only after real
idleness, since SQLite runs in threads during which trio sees every task blocked.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from actors.download_tracker import DownloadTracker, LeaseRefused
from actors.janitor import Janitor
from actors.runtime import Supervisor
from refresher.archive import job_archive
from refresher.jobs import records, transitions
from refresher.jobs.lifecycle import Lifecycle
from refresher.jobs.transitions import RemovalReason
from refresher.storage import removal
from refresher.storage.paths import Paths, remove_tree
from refresher.store import Database
from refresher.timestamps import iso
from refresher.uploads import records as upload_records
from tests.support.clock import DAY_S, WallClock, wait_for
from tests.support.fakes import GatedTracker
from tests.support.jobs import NOW, make_finished_job, make_unfinished_job
from tests.support.store import sql

# The job lifecycle, leases, removal and downloads hold on either store.
pytestmark = pytest.mark.both_stores

HOUR_S = 3600.0
INTERVAL_S = 300.0


@pytest.fixture
async def tracker(nursery: trio.Nursery, db: Database, wall_clock: WallClock) -> DownloadTracker:
    running = DownloadTracker(db, now=wall_clock)
    await nursery.start(Supervisor([running]).run)
    return running


def make_janitor(
    db: Database, paths: Paths, tracker: DownloadTracker, clock: Callable[[], float]
) -> Janitor:
    return Janitor(Lifecycle(db, paths, now=clock, ttl_s=DAY_S), tracker, interval_s=INTERVAL_S)


async def job(db: Database, job_id: str) -> records.JobRecord:
    return await db.read(lambda conn: records.require_job(conn, job_id))


async def expired(db: Database, job_id: str) -> bool:
    return (await job(db, job_id)).status == "expired"


async def job_exists(db: Database, job_id: str) -> bool:
    return await db.read(lambda conn: records.load_job(conn, job_id)) is not None


def files_on_disk(paths: Paths) -> set[str]:
    return {
        paths.relative(Path(directory) / name)
        for directory, _dirs, names in os.walk(paths.root)
        for name in names
    } | {
        paths.relative(Path(directory) / name) + "/"
        for directory, dirs, _names in os.walk(paths.root)
        for name in dirs
    }


async def test_finished_job_is_downloadable_until_24_hours_after_it_finished(
    db: Database, paths: Paths, tracker: DownloadTracker, wall_clock: WallClock
) -> None:
    job_id = await make_finished_job(db, paths, now=NOW)
    janitor = make_janitor(db, paths, tracker, wall_clock)
    wall_clock.value = NOW + DAY_S - 60
    report = await janitor.sweep()
    assert report.expired == 0
    await tracker.release(await tracker.acquire(job_id))
    assert len(list(paths.job_dir(job_id).glob("*.mp4"))) == 2

    wall_clock.value = NOW + DAY_S
    report = await janitor.sweep()
    assert report.expired == 1
    expired = await job(db, job_id)
    assert expired.status == "expired"
    assert expired.deleted_reason == "Results expired 24 hours after the job finished."
    assert expired.outputs == ()
    assert [file.original_name for file in expired.files] == ["ad.mp4"]
    assert not paths.job_dir(job_id).exists()
    with pytest.raises(LeaseRefused, match=r": gone$"):
        await tracker.acquire(job_id)


async def test_run_makes_a_pass_on_start_and_then_every_interval(
    nursery: trio.Nursery, db: Database, paths: Paths, idle_jump_clock: trio.testing.MockClock
) -> None:
    def wall() -> float:
        return NOW + trio.current_time()

    already_expired = await make_finished_job(db, paths, now=NOW - DAY_S - HOUR_S)
    # Finishes at NOW and is kept 10 minutes; passes every minute from NOW: the pass at
    # NOW + 600 s (the 11th) is the first to find it expired.
    expiring = await make_finished_job(db, paths, now=NOW, ttl_s=600)
    tracker = DownloadTracker(db, now=wall)
    janitor = Janitor(Lifecycle(db, paths, now=wall, ttl_s=DAY_S), tracker, interval_s=60)
    with trio.fail_after(3600):
        await nursery.start(Supervisor([tracker, janitor]).run)
        await wait_for(lambda: expired(db, already_expired), step_s=1)
        assert trio.current_time() < 60
        await trio.sleep(599 - trio.current_time())
        assert (await job(db, expiring)).status == "completed"
        await wait_for(lambda: expired(db, expiring), step_s=1)
    tombstone = await job(db, expiring)
    assert iso(NOW + 600) <= tombstone.updated_at < iso(NOW + 660)
    assert tombstone.deleted_reason == "Results expired 10 minutes after the job finished."


async def test_a_pass_logs_one_summary_line(
    db: Database,
    paths: Paths,
    tracker: DownloadTracker,
    wall_clock: WallClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await make_finished_job(db, paths, now=NOW - DAY_S)
    janitor = make_janitor(db, paths, tracker, wall_clock)
    with caplog.at_level(logging.INFO, logger="actors.janitor"):
        await janitor.sweep()
    lines = [record.getMessage() for record in caplog.records if record.name == "actors.janitor"]
    assert len(lines) == 1
    assert re.fullmatch(
        r"janitor pass in \d+\.\d{3} s: expired=1 failed_queued=0 cancelled=0 purged=0 lost=0 "
        r"forgotten_outputs=0 orphans=0 ended_uploads=0 partials=0 abandoned_uploads=0 "
        r"scratch=0 expired_uploads=0 resumable_orphans=0 busy=0",
        lines[0],
    ), lines[0]


async def test_queued_job_past_expiry_fails_and_its_upload_goes(
    db: Database, paths: Paths, tracker: DownloadTracker, wall_clock: WallClock
) -> None:
    processing = await make_unfinished_job(db, paths, processing=True)
    stale = await make_unfinished_job(db, paths, now=NOW + 1)
    fresh = await make_unfinished_job(db, paths, now=NOW + HOUR_S)
    janitor = make_janitor(db, paths, tracker, wall_clock)
    wall_clock.value = NOW + DAY_S + 1
    report = await janitor.sweep()
    assert (report.failed_queued, report.ended_uploads, report.expired) == (1, 1, 0)

    failed = await job(db, stale)
    assert failed.status == "failed"
    assert failed.error == (
        "The job waited in the queue for more than 24 hours without starting; "
        "upload the videos again."
    )
    assert [(file.status, file.error, file.upload_path) for file in failed.files] == [
        ("failed", failed.error, None)
    ]
    assert failed.finished_at == iso(NOW + DAY_S + 1)
    # Shown as failed for as long as any finished job's results would be.
    assert failed.expires_at == iso(NOW + 2 * DAY_S + 1)
    assert not paths.upload_dir(stale).exists()
    # Processing jobs never expire by age; a queued job within its TTL stays queued.
    for job_id, status in ((processing, "processing"), (fresh, "queued")):
        survivor = await job(db, job_id)
        assert survivor.status == status
        assert survivor.files[0].upload_path is not None
        assert paths.absolute(survivor.files[0].upload_path).exists()


async def test_tombstone_is_purged_after_the_retention(
    db: Database, paths: Paths, tracker: DownloadTracker, wall_clock: WallClock
) -> None:
    job_id = await make_finished_job(db, paths, now=NOW)
    janitor = make_janitor(db, paths, tracker, wall_clock)
    wall_clock.value = NOW + DAY_S
    await janitor.sweep()
    assert await expired(db, job_id)
    # Retention (7 days) counts from the moment the job became a tombstone.
    wall_clock.value = NOW + DAY_S + 7 * DAY_S - 1
    assert (await janitor.sweep()).purged == 0
    assert await job_exists(db, job_id)
    wall_clock.value = NOW + DAY_S + 7 * DAY_S
    assert (await janitor.sweep()).purged == 1
    assert not await job_exists(db, job_id)
    assert await db.read(lambda conn: sql(conn, "SELECT count(*) FROM job_files").scalar()) == 0


async def test_leased_job_is_skipped_and_expired_on_the_pass_after_release(
    db: Database, paths: Paths, tracker: DownloadTracker, wall_clock: WallClock
) -> None:
    job_id = await make_finished_job(db, paths, now=NOW)
    lease = await tracker.acquire(job_id)
    janitor = make_janitor(db, paths, tracker, wall_clock)
    wall_clock.value = NOW + DAY_S + INTERVAL_S
    report = await janitor.sweep()
    assert (report.busy, report.expired) == (1, 0)
    assert (await job(db, job_id)).status == "completed"
    assert len(list(paths.job_dir(job_id).glob("*.mp4"))) == 2

    await tracker.release(lease)
    wall_clock.advance(INTERVAL_S)
    report = await janitor.sweep()
    assert (report.busy, report.expired) == (0, 1)
    assert await expired(db, job_id)
    assert not paths.job_dir(job_id).exists()


def age(path: Path, seconds: float) -> None:
    """Make `path` and what is in it look last written `seconds` ago (OS clock)."""
    stamp = time.time() - seconds
    for entry in [path, *path.iterdir()] if path.is_dir() else [path]:
        os.utime(entry, (stamp, stamp))


async def test_each_kind_of_orphan_goes_in_one_pass_and_nothing_else_is_touched(
    db: Database, paths: Paths, tracker: DownloadTracker, wall_clock: WallClock
) -> None:
    intact = await make_finished_job(db, paths)
    processing = await make_unfinished_job(db, paths, processing=True)
    queued = await make_unfinished_job(db, paths, now=NOW + 1)
    for busy in (queued, processing):  # an interrupted run's partial file, the processor's
        paths.job_dir(busy).mkdir()
        (paths.job_dir(busy) / "f_var1.mp4.part").write_bytes(b"p")
    uploading = paths.upload_dir(str(uuid.uuid4()))  # an upload in progress: no row yet
    uploading.mkdir()
    (uploading / "0.upload").write_bytes(b"u")
    being_made = paths.job_dir(str(uuid.uuid4()))  # files just written, row not yet
    being_made.mkdir()
    (being_made / "x_var1.mp4").write_bytes(b"x")

    planted: set[str] = set()
    no_row_job_dir = paths.job_dir(str(uuid.uuid4()))
    no_row_job_dir.mkdir()
    (no_row_job_dir / "x_var1.mp4").write_bytes(b"x")
    age(no_row_job_dir, 2 * HOUR_S)
    planted |= {"jobs/" + no_row_job_dir.name + "/", "jobs/" + no_row_job_dir.name + "/x_var1.mp4"}
    (paths.jobs / "stray.tmp").write_bytes(b"s")
    age(paths.jobs / "stray.tmp", 2 * HOUR_S)
    planted.add("jobs/stray.tmp")
    dead_upload = paths.upload_dir(str(uuid.uuid4()))
    dead_upload.mkdir()
    (dead_upload / "0.upload").write_bytes(b"d")
    age(dead_upload, 2 * HOUR_S)
    planted |= {f"uploads/{dead_upload.name}/", f"uploads/{dead_upload.name}/0.upload"}

    ended = await make_finished_job(db, paths, seed=2)  # its upload outlived it
    (paths.upload_dir(ended)).mkdir()
    (paths.upload_dir(ended) / "0.upload").write_bytes(b"e")
    await db.write(
        lambda conn: sql(
            conn,
            "UPDATE job_files SET upload_path = :path WHERE job_id = :id",
            path=f"uploads/{ended}/0.upload",
            id=ended,
        )
    )
    planted |= {f"uploads/{ended}/", f"uploads/{ended}/0.upload"}

    with_partial = await make_finished_job(db, paths, seed=3)
    (paths.job_dir(with_partial) / "f_var3.mp4.part").write_bytes(b"p")
    planted.add(f"jobs/{with_partial}/f_var3.mp4.part")

    half_gone = await make_finished_job(db, paths, seed=4)
    vanished = sorted(paths.job_dir(half_gone).glob("*.mp4"))[0]
    vanished.unlink()

    all_gone = await make_finished_job(db, paths, seed=5)
    for output in paths.job_dir(all_gone).iterdir():
        output.unlink()
    planted.add(f"jobs/{all_gone}/")

    tombstone = await make_finished_job(db, paths, seed=6)
    await db.write(
        lambda conn: sql(conn, "UPDATE jobs SET status = 'evicted' WHERE id = :id", id=tombstone)
    )
    planted |= {f"jobs/{tombstone}/"} | {
        f"jobs/{tombstone}/{output.name}" for output in paths.job_dir(tombstone).iterdir()
    }

    before_disk = files_on_disk(paths)
    untouched = [intact, queued, processing, with_partial]
    before_rows = [await job(db, job_id) for job_id in untouched]
    report = await make_janitor(db, paths, tracker, wall_clock).sweep()

    assert (report.orphans, report.ended_uploads, report.partials) == (4, 1, 1)
    assert (report.forgotten_outputs, report.lost, report.expired) == (1, 1, 0)
    assert files_on_disk(paths) == before_disk - planted
    assert [await job(db, job_id) for job_id in untouched] == before_rows
    assert all(file.upload_path is None for file in (await job(db, ended)).files)
    survivor = await job(db, half_gone)
    assert survivor.status == "completed"
    assert [paths.absolute(output.path).name for output in survivor.outputs] == [
        name for name in sorted(p.name for p in paths.job_dir(half_gone).glob("*.mp4"))
    ]
    assert survivor.files[0].completed_variations == 1
    lost = await job(db, all_gone)
    assert (lost.status, lost.deleted_reason, lost.outputs) == (
        "expired",
        transitions.LOST_MESSAGE,
        (),
    )
    # A second pass finds nothing more to do.
    again = await make_janitor(db, paths, tracker, wall_clock).sweep()
    assert again.summary() == (
        "expired=0 failed_queued=0 cancelled=0 purged=0 lost=0 forgotten_outputs=0 orphans=0 "
        "ended_uploads=0 partials=0 abandoned_uploads=0 scratch=0 expired_uploads=0 "
        "resumable_orphans=0 busy=0"
    )


async def test_a_partial_upload_of_a_dead_process_goes_on_the_first_pass(
    db: Database, paths: Paths, tracker: DownloadTracker, wall_clock: WallClock
) -> None:
    dead = paths.upload_dir(str(uuid.uuid4()))  # the process crashed mid-upload
    dead.mkdir()
    (dead / "0.upload").write_bytes(b"d")
    age(dead, 10)
    started = time.time()  # this process starts
    live = paths.upload_dir(str(uuid.uuid4()))  # one of its uploads, still streaming
    live.mkdir()
    (live / "0.upload").write_bytes(b"u")

    janitor = Janitor(
        Lifecycle(db, paths, now=wall_clock, ttl_s=DAY_S), tracker, interval_s=INTERVAL_S,
        process_started=started,
    )  # fmt: skip
    report = await janitor.sweep()
    assert report.orphans == 1
    assert not dead.exists()  # at once, not an hour later
    assert live.exists()


async def test_without_the_tracker_nothing_needing_a_reservation_is_deleted(
    db: Database, paths: Paths, idle_jump_clock: trio.testing.MockClock, wall_clock: WallClock
) -> None:
    expiring = await make_finished_job(db, paths, now=NOW - DAY_S)
    all_gone = await make_finished_job(db, paths, seed=2)
    for output in paths.job_dir(all_gone).iterdir():
        output.unlink()
    orphan = paths.job_dir(str(uuid.uuid4()))
    orphan.mkdir()
    age(orphan, 2 * HOUR_S)
    silent = DownloadTracker(db, now=wall_clock)  # never started: it answers nothing
    with trio.fail_after(120):
        report = await make_janitor(db, paths, silent, wall_clock).sweep()
    assert report.skipped_deletions == "download tracker did not answer Reserve in time"
    assert (report.expired, report.lost, report.orphans) == (0, 0, 1)
    assert (await job(db, expiring)).status == "completed"
    assert len(list(paths.job_dir(expiring).glob("*.mp4"))) == 2
    assert len((await job(db, all_gone)).outputs) == 2
    assert not orphan.exists()


async def test_killing_the_janitor_mid_pass_is_harmless(
    nursery: trio.Nursery, db: Database, paths: Paths, wall_clock: WallClock
) -> None:
    # Expiry order: `earlier` is reserved first, then the pass waits on `later`'s
    # reservation, with `earlier` reserved but its files still there.
    earlier = await make_finished_job(db, paths, now=NOW - DAY_S - 1)
    later = await make_finished_job(db, paths, now=NOW - DAY_S, seed=2)
    tracker = GatedTracker(db, now=wall_clock, hold_call=2)
    janitor = make_janitor(db, paths, tracker, wall_clock)
    supervisor = Supervisor([tracker, janitor])
    with trio.fail_after(20):
        await nursery.start(supervisor.run)

        async def holding() -> bool:
            return tracker.calls >= 2

        await wait_for(holding)
        reserved = await db.read(
            lambda conn: sql(conn, "SELECT job_id FROM deletion_reservations").fetchall()
        )
        assert [row[0] for row in reserved] == [earlier]
        assert len(list(paths.job_dir(earlier).glob("*.mp4"))) == 2
        supervisor.kill("janitor")
        await supervisor.wait_until("janitor", lambda status: status.restarts == 1)
        tracker.gate.set()
        await wait_for(lambda: expired(db, earlier))
        await wait_for(lambda: expired(db, later))
    for job_id in (earlier, later):
        assert not paths.job_dir(job_id).exists()
    reservations = await db.read(
        lambda conn: sql(conn, "SELECT count(*) FROM deletion_reservations").scalar()
    )
    assert reservations == 0
    assert supervisor.status()["janitor"].state == "running"


async def test_removals_a_kill_cut_short_are_finished_and_evictions_left_alone(
    db: Database, paths: Paths, tracker: DownloadTracker, wall_clock: WallClock
) -> None:
    # Killed after the files went, before the row changed.
    files_gone = await make_finished_job(db, paths, now=NOW - DAY_S)
    assert await tracker.reserve_for_deletion(files_gone, reason=RemovalReason.EXPIRED)
    for output in paths.job_dir(files_gone).iterdir():
        output.unlink()
    # Killed after reserving a job whose files were lost, before removing anything.
    judged_lost = await make_finished_job(db, paths, seed=2)
    assert await tracker.reserve_for_deletion(judged_lost, reason=RemovalReason.LOST)
    # Expired, but the evictor has it: its own restart finishes it.
    evicting = await make_finished_job(db, paths, now=NOW - DAY_S, seed=3)
    assert await tracker.reserve_for_deletion(evicting, reason=RemovalReason.EVICTED)

    report = await make_janitor(db, paths, tracker, wall_clock).sweep()
    assert (report.expired, report.lost) == (1, 1)
    assert (await job(db, files_gone)).deleted_reason == (
        "Results expired 24 hours after the job finished."
    )
    assert (await job(db, judged_lost)).deleted_reason == transitions.LOST_MESSAGE
    assert not paths.job_dir(judged_lost).exists()
    assert (await job(db, evicting)).status == "completed"
    assert len(list(paths.job_dir(evicting).glob("*.mp4"))) == 2


async def test_a_delete_cut_short_is_finished_by_the_next_pass(
    db: Database, paths: Paths, tracker: DownloadTracker, wall_clock: WallClock
) -> None:
    # A DELETE killed after reserving its job, before removing anything.
    reserved_only = await make_finished_job(db, paths)
    assert await tracker.reserve_for_deletion(reserved_only, reason=RemovalReason.DELETED)
    # One killed after the files went, before the row did; its results had expired too.
    files_gone = await make_finished_job(db, paths, now=NOW - DAY_S, seed=2)
    assert await tracker.reserve_for_deletion(files_gone, reason=RemovalReason.DELETED)
    remove_tree(paths.job_dir(files_gone))
    janitor = make_janitor(db, paths, tracker, wall_clock)

    # A DELETE reserved this recently may still be at work in its request: left to it.
    wall_clock.advance(removal.DELETE_RESUME_AFTER_S - 1)
    report = await janitor.sweep()
    assert await job_exists(db, reserved_only)
    assert await job_exists(db, files_gone)
    assert (report.expired, report.lost) == (0, 0)

    wall_clock.advance(1)
    report = await janitor.sweep()
    # Deleted as their owner asked, not kept until expiry nor turned into tombstones.
    assert not await job_exists(db, reserved_only)
    assert not await job_exists(db, files_gone)
    assert not paths.job_dir(reserved_only).exists()
    assert (report.expired, report.lost) == (0, 0)


async def test_a_delete_takes_over_a_removal_the_janitor_began(
    db: Database, paths: Paths, tracker: DownloadTracker, wall_clock: WallClock
) -> None:
    # Expiring: reserved by the janitor, whose pass was then cut short.
    job_id = await make_finished_job(db, paths, now=NOW - DAY_S)
    assert await tracker.reserve_for_deletion(job_id, reason=RemovalReason.EXPIRED)
    # Its owner deletes it meanwhile; the request dies before removing anything.
    assert await tracker.reserve_for_deletion(job_id, reason=RemovalReason.DELETED)

    wall_clock.advance(removal.DELETE_RESUME_AFTER_S)
    report = await make_janitor(db, paths, tracker, wall_clock).sweep()
    assert not await job_exists(db, job_id)  # deleted, not left an `expired` tombstone
    assert report.expired == 0


async def test_forgetting_vanished_outputs_keeps_the_archive_size_true(
    db: Database, paths: Paths, tracker: DownloadTracker, wall_clock: WallClock
) -> None:
    half_gone = await make_finished_job(db, paths, variations=3)
    before = (await job(db, half_gone)).archive_bytes
    assert before == job_archive.size_of(await job(db, half_gone))
    sorted(paths.job_dir(half_gone).glob("*.mp4"))[0].unlink()

    await make_janitor(db, paths, tracker, wall_clock).sweep()
    survivor = await job(db, half_gone)
    assert len(survivor.outputs) == 2
    assert survivor.archive_bytes == job_archive.size_of(survivor)
    assert survivor.archive_bytes is not None
    assert before is not None
    assert survivor.archive_bytes < before


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"interval_s": 0}, r"^interval_s must be > 0$"),
        ({"tombstone_retention_s": -1}, r"^tombstone_retention_s must be >= 0$"),
        ({"orphan_grace_s": -1}, r"^orphan_grace_s must be >= 0$"),
    ],
)
def test_janitor_refuses_bad_settings(
    paths: Paths, changes: dict[str, float], message: str
) -> None:
    settings: dict[str, float] = {"interval_s": 1.0, **changes}
    lifecycle = Lifecycle(None, paths, now=time.time, ttl_s=DAY_S)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        Janitor(lifecycle, None, **settings)  # type: ignore[arg-type]


async def test_abandoned_resumable_uploads_expire_bytes_first_and_are_counted(
    db: Database, paths: Paths, tracker: DownloadTracker, wall_clock: WallClock
) -> None:
    """An upload nobody came back to goes once past its expiry (its file, then its row),
    one still within it stays, and bytes under resumable/ that no row names go once idle
    (`orphan_grace_s`, one hour by default)."""
    paths.create()
    ttl_s = 6 * HOUR_S

    async def declared(upload_id: str, at: float) -> Path:
        await db.write(
            lambda conn: upload_records.declare(
                conn, upload_id=upload_id, name="a.mp4", length=10, metadata={}, now=at,
                ttl_s=ttl_s,
            )
        )  # fmt: skip
        path = paths.resumable_upload(upload_id)
        path.write_bytes(b"12345")
        return path

    abandoned = await declared("a" * 32, NOW)
    recent = await declared("b" * 32, NOW + ttl_s)
    stray = paths.resumable_upload("c" * 32)
    stray.write_bytes(b"no row names me")
    os.utime(stray, (time.time() - 2 * HOUR_S,) * 2)
    wall_clock.value = NOW + ttl_s + 1
    report = await make_janitor(db, paths, tracker, wall_clock).sweep()
    assert (report.expired_uploads, report.resumable_orphans) == (1, 1)
    assert not abandoned.exists()
    assert not stray.exists()
    assert recent.exists()
    assert await db.read(upload_records.upload_ids) == {"b" * 32}
