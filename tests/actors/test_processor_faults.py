"""The processor's faults are results, not crashes: a full disk fails the file it was
writing and frees what it wrote, a signal from outside never fails a file, and the
processor stays up through both (its supervisor counts no restart).

Real FFmpeg on the session's tiny clips, a real SQLite store, and where the machine lets
us mount one, a real small tmpfs. Where only the database must be full, a store with a
fault hook refuses the writes a test picks as SQLite does on a full disk.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.processor import JobQueued, Processor
from actors.runtime import Supervisor
from refresher.jobs import records
from refresher.jobs.events import JobEvent
from refresher.jobs.lifecycle import Lifecycle
from refresher.jobs.status import TERMINAL, JobStatus
from refresher.media.ffmpeg import find_ffmpeg, find_leftover_encoders
from refresher.storage.paths import Paths
from refresher.store import Database
from tests.support.clock import DAY_S, WallClock, wait_for
from tests.support.full_disk import (
    FillingDatabase,
    mounted_tmpfs,
    never,
    resize_tmpfs,
    statements_with,
)
from tests.support.http import finished as finished_detail
from tests.support.http import some_variation_done, upload, wait_for_job
from tests.support.jobs import make_unfinished_job, queue_files_job
from tests.support.process import drain, logged_in, running_service

# Every FFmpeg here runs for a second or two on an idle machine; the bound is for a
# loaded CI runner.
TIMEOUT_S = 120


@dataclass
class Service:
    """The processor as the service runs it: under a supervisor, stopped by cancelling."""

    processor: Processor
    supervisor: Supervisor
    scope: trio.CancelScope
    events: list[JobEvent]
    stopped: trio.Event

    @property
    def restarts(self) -> int:
        return self.supervisor.status()["processor"].restarts

    async def stop(self) -> None:
        """Stop the processor as the service's shutdown does, and wait until it has."""
        self.scope.cancel()
        await self.stopped.wait()


async def run_service(db: Database, paths: Paths, *, task_status: trio.TaskStatus[Service]) -> None:
    events: list[JobEvent] = []
    lifecycle = Lifecycle(db, paths, now=WallClock(), ttl_s=DAY_S, publish=events.append)
    processor = Processor(lifecycle, ffmpeg=find_ffmpeg(None))
    supervisor = Supervisor([processor])
    stopped = trio.Event()
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.run)
                task_status.started(Service(processor, supervisor, scope, events, stopped))
    finally:
        stopped.set()


async def start_service(nursery: trio.Nursery, db: Database, paths: Paths) -> Service:
    service: Service = await nursery.start(run_service, db, paths)
    return service


@pytest.fixture
async def filling_db(tmp_path: Path) -> AsyncIterator[FillingDatabase]:
    db = await FillingDatabase.open(tmp_path / "db.sqlite3")
    assert isinstance(db, FillingDatabase)
    yield db
    await db.aclose()


async def load(db: Database, job_id: str) -> records.JobRecord:
    return await db.read(functools.partial(records.require_job, job_id=job_id))


async def wait_until(
    db: Database, job_id: str, check: Callable[[records.JobRecord], bool]
) -> records.JobRecord:
    async def holds() -> bool:
        return check(await load(db, job_id))

    await wait_for(holds, polls=100_000)
    return await load(db, job_id)


def finished(job: records.JobRecord) -> bool:
    return job.status in TERMINAL


def written(paths: Paths, job_id: str) -> list[str]:
    """The variations and partial files in the job's folder."""
    folder = paths.job_dir(job_id)
    return sorted(path.name for path in folder.glob("*_var*")) if folder.exists() else []


async def running_encoder(paths: Paths) -> int:
    """Wait for a variation encoder (not a thumbnail's FFmpeg) to run; return its PID."""

    def encoders() -> list[int]:
        found = []
        for pid in find_leftover_encoders(paths.root):
            with contextlib.suppress(OSError):  # ended meanwhile
                if b"-progress" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
        return found

    found: list[int] = []

    async def one_runs() -> bool:
        found[:] = await trio.to_thread.run_sync(encoders)
        return bool(found)

    await wait_for(one_runs, polls=100_000, step_s=0.005)
    return found[0]


# --- a full disk -----------------------------------------------------------------------


async def test_progress_writes_that_find_the_disk_full_are_skipped_and_the_job_completes(
    nursery: trio.Nursery, filling_db: FillingDatabase, paths: Paths, clips: Any
) -> None:
    filling_db.full_for = statements_with("UPDATE job_files SET progress")
    service = await start_service(nursery, filling_db, paths)
    # Six variations of a 320x240 clip are two batches of three: the first one's end
    # moves the progress at least once.
    job_id = await queue_files_job(filling_db, paths, [clips.mp4], variations=6)
    service.processor.inbox.post(JobQueued(job_id))
    with trio.fail_after(TIMEOUT_S):
        job = await wait_until(filling_db, job_id, finished)
    assert job.status == JobStatus.COMPLETED
    assert [output.variation_index for output in job.outputs] == [1, 2, 3, 4, 5, 6]
    assert filling_db.refused
    assert service.restarts == 0


async def test_variations_the_store_has_no_room_to_record_are_removed_and_their_file_fails(
    nursery: trio.Nursery, filling_db: FillingDatabase, paths: Paths, clips: Any
) -> None:
    job_id = await queue_files_job(filling_db, paths, [clips.mp4, clips.mov], variations=2)
    first, second = (await load(filling_db, job_id)).files
    filling_db.full_for = lambda statements: any(
        "INSERT INTO output_files" in sql and first.id in sql for sql in statements
    )
    service = await start_service(nursery, filling_db, paths)
    service.processor.inbox.post(JobQueued(job_id))
    with trio.fail_after(TIMEOUT_S):
        job = await wait_until(filling_db, job_id, finished)
    assert job.status == JobStatus.COMPLETED
    assert [(file.status, file.error) for file in job.files] == [
        (
            JobStatus.FAILED,
            "The storage is full: the variations were made, but there was no room to record them.",
        ),
        (JobStatus.COMPLETED, None),
    ]
    # Files before rows: the first file's finished variations went with their rows.
    assert written(paths, job_id) == sorted(Path(output.path).name for output in job.outputs)
    assert [(output.job_file_id, output.variation_index) for output in job.outputs] == [
        (second.id, 1),
        (second.id, 2),
    ]
    assert service.restarts == 0


async def test_a_full_volume_fails_the_file_frees_its_outputs_and_room_lets_the_next_run(
    tmp_path: Path, clips: Any
) -> None:
    upload_bytes = clips.long.stat().st_size  # ~400 KB; each variation is about as big
    with mounted_tmpfs(tmp_path / "volume", upload_bytes + 1024 * 1024) as volume:
        paths = Paths(volume / "data")
        paths.create()
        db = await Database.open(paths.database)
        try:
            async with trio.open_nursery() as nursery:
                service = await start_service(nursery, db, paths)
                # Six variations (~2.4 MB) cannot fit beside the upload and the store.
                full = await queue_files_job(db, paths, [clips.long], variations=6)
                service.processor.inbox.post(JobQueued(full))
                with trio.fail_after(TIMEOUT_S):
                    job = await wait_until(db, full, finished)
                [file] = job.files
                assert (job.status, file.status) == (JobStatus.FAILED, JobStatus.FAILED)
                assert file.error is not None
                assert file.error.startswith("The storage is full: "), file.error
                assert written(paths, full) == []
                # Its source stays, so it can be retried once there is room.
                assert [file.upload_path] == [
                    paths.relative(path) for path in paths.upload_dir(full).iterdir()
                ]
                assert service.restarts == 0

                resize_tmpfs(volume, 64 * 1024 * 1024)
                after = await queue_files_job(db, paths, [clips.long], variations=6)
                service.processor.inbox.post(JobQueued(after))
                with trio.fail_after(TIMEOUT_S):
                    job = await wait_until(db, after, finished)
                assert job.status == JobStatus.COMPLETED
                assert len(job.outputs) == 6
                assert service.restarts == 0
                await service.stop()
        finally:
            await db.aclose()


async def test_state_writes_wait_for_room_across_a_restart_and_the_job_ends_with_its_reason(
    nursery: trio.Nursery,
    filling_db: FillingDatabase,
    paths: Paths,
    idle_jump_clock: trio.testing.MockClock,
) -> None:
    # A job whose upload is not a video fails at once, without an encode; on this disk
    # every write that sets a file's state or ends a job finds no room.
    job_id = await make_unfinished_job(filling_db, paths)
    filling_db.full_for = statements_with("SET status = 'failed'", "finished_at")
    first = await start_service(nursery, filling_db, paths)
    first.processor.inbox.post(JobQueued(job_id))

    async def failure_refused_twice() -> bool:
        return len(filling_db.refused) >= 2

    await wait_for(failure_refused_twice)
    await trio.sleep(60)
    # The file's failure waits for room 0.5 s, then twice as long each time up to 30 s:
    # attempts at 0, 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s, and at 61.5 s the eighth.
    assert 2 <= len(filling_db.refused) <= 8
    assert (await load(filling_db, job_id)).status == JobStatus.PROCESSING
    assert first.restarts == 0

    # The service stops while the write waits; it starts again on a disk now full for
    # every write.
    await first.stop()
    filling_db.full_for = lambda statements: True
    refused_before = len(filling_db.refused)
    second = await start_service(nursery, filling_db, paths)
    await trio.sleep(60)
    assert len(filling_db.refused) - refused_before <= 8  # requeueing waits as well
    assert second.restarts == 0

    filling_db.full_for = never
    job = await wait_until(filling_db, job_id, finished)
    assert job.status == JobStatus.FAILED
    assert job.error is not None
    assert job.error.startswith("Every video failed: ad.mp4: The file "), job.error
    assert second.restarts == 0


# --- signals ---------------------------------------------------------------------------


async def test_a_job_stopped_with_the_service_resumes_and_completes_every_variation(
    nursery: trio.Nursery, db: Database, paths: Paths, clips: Any
) -> None:
    # Twelve variations of a 320x240 clip encode in three batches of four.
    job_id = await queue_files_job(db, paths, [clips.long], variations=12)
    first = await start_service(nursery, db, paths)
    first.processor.inbox.post(JobQueued(job_id))
    with trio.fail_after(TIMEOUT_S):
        pid = await running_encoder(paths)
        group = os.getpgid(pid)
        # A terminal's Ctrl-C goes to the service's process group: FFmpeg is not in it.
        assert group != os.getpgrp()
        # A signal to FFmpeg's own group, which the service did not send, ends it...
        os.killpg(group, signal.SIGINT)

        async def ended() -> bool:
            return pid not in await trio.to_thread.run_sync(find_leftover_encoders, paths.root)

        await wait_for(ended)
        # ...and the service stops before that counts against the file.
        await first.stop()
    stopped = await load(db, job_id)
    assert stopped.status == JobStatus.PROCESSING
    assert [(file.status, file.error) for file in stopped.files] == [(JobStatus.PROCESSING, None)]
    assert not any(event.data.get("status") == JobStatus.FAILED for event in first.events)

    second = await start_service(nursery, db, paths)
    with trio.fail_after(TIMEOUT_S):
        job = await wait_until(db, job_id, finished)
    assert job.status == JobStatus.COMPLETED
    assert [output.variation_index for output in job.outputs] == list(range(1, 13))
    assert (first.restarts, second.restarts) == (0, 0)


async def test_an_ffmpeg_killed_from_outside_runs_again_and_the_job_completes(
    nursery: trio.Nursery,
    db: Database,
    paths: Paths,
    clips: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("refresher.media.ffmpeg.INTERRUPTED_PAUSE_S", 0.05)
    job_id = await queue_files_job(db, paths, [clips.long], variations=12)
    service = await start_service(nursery, db, paths)
    service.processor.inbox.post(JobQueued(job_id))
    with trio.fail_after(TIMEOUT_S):
        os.kill(await running_encoder(paths), signal.SIGKILL)  # as the OOM killer would
        job = await wait_until(db, job_id, finished)
    assert job.status == JobStatus.COMPLETED
    assert [(file.status, file.error) for file in job.files] == [(JobStatus.COMPLETED, None)]
    assert [output.variation_index for output in job.outputs] == list(range(1, 13))
    assert service.restarts == 0


def ctrl_c(service_pid: int, data_dir: Path) -> None:
    """Send SIGINT as a terminal's Ctrl-C does, to the service's process group. Here that
    group is the test runner's too: so only to the service and its encoders in it."""
    group = os.getpgid(service_pid)
    for pid in [*find_leftover_encoders(data_dir), service_pid]:
        with contextlib.suppress(ProcessLookupError):  # an encoder that just ended
            if os.getpgid(pid) == group:
                os.kill(pid, signal.SIGINT)


async def test_ctrl_c_stops_the_service_gracefully_and_the_job_resumes_after_a_restart(
    tmp_path: Path, clips: Any
) -> None:
    data_dir = tmp_path / "data"
    async with running_service(data_dir) as first:
        async with logged_in(first) as http:
            job_id = (await upload(http, [clips.long], variations="12")).json()["jobId"]
            with trio.fail_after(TIMEOUT_S):
                await wait_for_job(http, job_id, some_variation_done)
                encoder = await running_encoder(Paths(data_dir))
        # Whether a Ctrl-C reached FFmpeg before the service stopped it is a race; that
        # it cannot reach it is not.
        assert os.getpgid(encoder) != os.getpgid(first.process.pid)
        ctrl_c(first.process.pid, data_dir)
        with trio.fail_after(30):
            output = await drain(first)
            assert await first.process.wait() == 0, output
    assert "SIGINT received" in output
    async with running_service(data_dir) as second:
        async with logged_in(second) as http:
            detail = await wait_for_job(http, job_id, finished_detail, timeout_s=TIMEOUT_S)
        second.process.send_signal(signal.SIGTERM)
        assert await second.process.wait() == 0
    assert detail["status"] == "completed"
    [file] = detail["files"]
    assert (file["status"], file["error"]) == ("completed", None)
    assert [output["variationIndex"] for output in file["outputs"]] == list(range(1, 13))
