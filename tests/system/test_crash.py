"""The whole service crashing: killed (SIGKILL) in the middle of an upload, a download and
a janitor pass, and signalled through its process group in the middle of an encode.

Each test restarts the service on the same data directory and holds it to DESIGN.md §5:
the store passes `PRAGMA integrity_check`, interrupted work ends as it should, no FFmpeg
and no partial upload is left once a janitor pass has run, and a finished job downloads
as a whole, valid ZIP (`tests.support.process.settle_after_restart`). A kill in the
middle of an encode is `test_job_resumes_after_the_service_is_killed_mid_encode` in
tests/system/test_process.py, which makes the same checks.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from refresher.jobs.status import JobStatus
from refresher.media.ffmpeg import find_ffmpeg, find_leftover_encoders, kill_leftover_encoders
from refresher.storage.paths import Paths
from refresher.store import Database
from tests.support.clips import ClipSpec, make_clip
from tests.support.clock import DAY_S, wait_for
from tests.support.http import finished, some_variation_done, upload, wait_for_job
from tests.support.jobs import make_finished_job
from tests.support.process import (
    JANITOR_PASS,
    ServiceProcess,
    assert_recovered,
    drain,
    integrity,
    logged_in,
    next_janitor_pass,
    running_service,
    settle_after_restart,
    stop_gracefully,
    store_rows,
)
from tests.support.tus import cut_patch, declare, offset_of, patch, tus_upload, upload_id

pytestmark = pytest.mark.slow

# Every wait here is seconds on an idle machine; the bound is for a loaded CI runner.
TIMEOUT_S = 60
# A restarted service makes a janitor pass this often, so a test waits for one briefly.
JANITOR_INTERVAL_S = "0.5"
# Random bytes as outputs: 4 variations of 8 MiB make a 32 MiB ZIP, far more than the
# loopback socket buffers hold, so a client that stops reading holds the download open.
BIG_OUTPUT_BYTES = 8 * 1024 * 1024
BIG_VARIATIONS = 4
# The service writes an upload in 1 MiB pieces: a 720p clip of 4 s (about 3.3 MB), sent
# half way, leaves one of them on disk.
UPLOAD_CLIP = ClipSpec(seconds=4.0, width=1280, height=720)
# Expired jobs for the janitor to remove; 200 take it about 0.1 s, time to kill it in.
EXPIRED_JOBS = 200


@pytest.fixture(scope="module")
def upload_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "spot-720p.mp4"
    return make_clip(find_ffmpeg(None), path, UPLOAD_CLIP)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """The data directory the service is started on, and started again on after a crash."""
    directory = tmp_path / "data"
    Paths(directory).create()
    yield directory
    # A test that failed half way may leave encoders of a killed service behind.
    kill_leftover_encoders(directory)


@contextlib.asynccontextmanager
async def restarted(data_dir: Path) -> AsyncIterator[tuple[ServiceProcess, httpx.AsyncClient]]:
    """The service started again on `data_dir` after a crash, with a client logged in;
    it makes a janitor pass every `JANITOR_INTERVAL_S`, so a test can wait for one."""
    async with (
        running_service(data_dir, JANITOR_INTERVAL_S=JANITOR_INTERVAL_S) as service,
        logged_in(service) as http,
    ):
        yield service, http


async def seed_finished_jobs(
    data_dir: Path, count: int, *, expired: bool = False, variations: int = 2, size: int = 4096
) -> list[str]:
    """Record `count` finished jobs with outputs on disk, straight in the store; expired
    ones finished two days ago with a day to live."""
    paths = Paths(data_dir)
    finished_at = time.time() - (2 * DAY_S if expired else 0)
    db = await Database.open(paths.database)
    try:
        return [
            await make_finished_job(
                db, paths, variations=variations, size=size, now=finished_at, ttl_s=DAY_S, seed=n
            )
            for n in range(count)
        ]
    finally:
        await db.aclose()


async def kill(service: ServiceProcess) -> None:
    service.process.send_signal(signal.SIGKILL)
    with trio.fail_after(10):
        assert await service.process.wait() == -signal.SIGKILL


async def count_rows(data_dir: Path, sql: str, *parameters: object) -> int:
    [(count,)] = await trio.to_thread.run_sync(lambda: store_rows(data_dir, sql, *parameters))
    assert isinstance(count, int)
    return count


def multipart(boundary: str, clip: Path, variations: int) -> bytes:
    fields = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="variations"\r\n\r\n'
        f"{variations}\r\n"
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="videos"; filename="{clip.name}"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    )
    return fields.encode() + clip.read_bytes() + f"\r\n--{boundary}--\r\n".encode()


async def job_dirs(paths: Paths) -> int:
    return len(await trio.to_thread.run_sync(os.listdir, paths.jobs))


def upload_bytes_on_disk(paths: Paths) -> int:
    return sum(path.stat().st_size for path in paths.uploads.glob("*/*"))


async def test_a_kill_mid_upload_leaves_no_upload_and_no_job(
    data_dir: Path, upload_clip: Path
) -> None:
    paths = Paths(data_dir)
    [finished_job] = await seed_finished_jobs(data_dir, 1)
    boundary = "crash-test-boundary"
    body = multipart(boundary, upload_clip, variations=2)
    # Half the body, in small pieces, as a slow line sends it.
    half = body[: len(body) // 2]
    async with running_service(data_dir) as first:
        async with logged_in(first) as http:
            token = http.headers["Authorization"]
        address = urlsplit(first.url)
        assert address.hostname is not None
        assert address.port is not None
        stream = await trio.open_tcp_stream(address.hostname, address.port)
        async with stream:
            await stream.send_all(
                f"POST /api/jobs HTTP/1.1\r\nHost: {address.netloc}\r\n"
                f"Authorization: {token}\r\nContent-Length: {len(body)}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
            )
            with trio.fail_after(TIMEOUT_S):
                for start in range(0, len(half), 16 * 1024):
                    await stream.send_all(half[start : start + 16 * 1024])
                    await trio.sleep(0.002)

                async def written() -> bool:
                    return await trio.to_thread.run_sync(upload_bytes_on_disk, paths) > 0

                # Killed once the service has written a part of the video to disk.
                await wait_for(written)
            await kill(first)
    partial_bytes = await trio.to_thread.run_sync(upload_bytes_on_disk, paths)
    assert 0 < partial_bytes < len(body)

    async with restarted(data_dir) as (second, http):
        with trio.fail_after(TIMEOUT_S):
            recovery = await settle_after_restart(second, http, data_dir, finished_job)
            listed = [job["id"] for job in (await http.get("/api/jobs")).json()]
            await stop_gracefully(second)
    assert_recovered(recovery, variations=2)
    assert listed == [finished_job]
    assert await count_rows(data_dir, "SELECT count(*) FROM jobs") == 1
    assert await trio.to_thread.run_sync(integrity, data_dir) == "ok"
    print(
        f"crash: killed mid-upload with {partial_bytes} of {len(body)} bytes on disk; "
        f"after {recovery.janitor_passes} janitor passes uploads left "
        f"{len(recovery.uploads_left)}, jobs {len(listed)}; download valid "
        f"({recovery.archive.received_bytes} bytes); integrity ok"
    )


async def test_a_resumable_upload_survives_kills_mid_patch_and_between_patches(
    data_dir: Path, upload_clip: Path
) -> None:
    """Killed mid-PATCH, the service keeps what it had recorded; killed between PATCHes,
    everything; after each restart (and a janitor pass) the client resumes from the offset
    the service reports, and the bytes it keeps are the clip's, to the byte (a job made
    from them is `tests/web/test_resumable_uploads.py`'s)."""
    data = await trio.Path(upload_clip).read_bytes()
    async with running_service(data_dir) as first:
        async with logged_in(first) as http:
            token = http.headers["Authorization"].removeprefix("Bearer ")
            location = (await declare(http, len(data), upload_clip.name)).headers["Location"]
            third = len(data) // 3
            assert (await patch(http, location, 0, data[:third])).status_code == 204
        await kill(first)  # between PATCHes
    async with restarted(data_dir) as (second, http):
        with trio.fail_after(TIMEOUT_S):
            await next_janitor_pass(second)
            assert await offset_of(http, location) == third
            address = urlsplit(second.url)
            assert address.port is not None

            async def progressed() -> bool:  # a piece past the first third is kept
                return await offset_of(http, location) > third

            killed = trio.Event()

            async def after_the_kill() -> bool:
                await killed.wait()
                return True

            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(
                        cut_patch, address.port, token, location, third, data[third:],
                        send_bytes=(len(data) - third) // 2, until=after_the_kill,
                    )
                )  # fmt: skip
                await wait_for(progressed, polls=3000)
                await kill(second)  # mid-PATCH: its connection still open
                killed.set()
    async with restarted(data_dir) as (third_run, http):
        with trio.fail_after(TIMEOUT_S):
            await next_janitor_pass(third_run)
            reached = await offset_of(http, location)
            assert third < reached < len(data)
            await tus_upload(third_run.url, token, upload_clip, url=f"{third_run.url}{location}")
            await stop_gracefully(third_run)
    kept = Paths(data_dir).resumable_upload(upload_id(location))
    assert await trio.Path(kept).read_bytes() == data
    assert await trio.to_thread.run_sync(integrity, data_dir) == "ok"
    print(
        f"crash: resumable upload of {len(data)} bytes killed between PATCHes at {third} "
        f"and mid-PATCH; resumed from {reached}; kept byte-identical"
    )


async def test_a_kill_mid_download_leaves_no_lease_and_the_job_downloads_and_deletes(
    data_dir: Path,
) -> None:
    [job_id] = await seed_finished_jobs(
        data_dir, 1, variations=BIG_VARIATIONS, size=BIG_OUTPUT_BYTES
    )
    async with (
        running_service(data_dir) as first,
        logged_in(first) as http,
        http.stream("GET", f"/api/jobs/{job_id}/download") as response,
    ):
        assert response.status_code == 200
        archive_bytes = int(response.headers["Content-Length"])
        received = 0
        # Held until the kill: a dropped iterator is finalised whenever the garbage
        # collector gets to it, and closing it would end the download (and its lease)
        # before the count below.
        chunks = response.aiter_raw()
        with trio.fail_after(TIMEOUT_S):
            async for chunk in chunks:
                received += len(chunk)
                if received >= 1024 * 1024:
                    break
        # Reading no further: the download is under way, holding its lease.
        leases_at_kill = await count_rows(data_dir, "SELECT count(*) FROM leases")
        await kill(first)
    assert leases_at_kill == 1
    assert received < archive_bytes

    async with restarted(data_dir) as (second, http):
        # The tracker drops a dead process's leases before the service listens.
        leases_after_restart = await count_rows(data_dir, "SELECT count(*) FROM leases")
        with trio.fail_after(TIMEOUT_S):
            recovery = await settle_after_restart(second, http, data_dir, job_id)

            async def no_lease() -> bool:
                return await count_rows(data_dir, "SELECT count(*) FROM leases") == 0

            # The fresh download's own lease goes as its request ends, just after the body.
            await wait_for(no_lease)
            deleted = await http.delete(f"/api/jobs/{job_id}")
            await stop_gracefully(second)
    assert leases_after_restart == 0
    assert_recovered(recovery, variations=BIG_VARIATIONS)
    assert recovery.archive.received_bytes == archive_bytes
    assert deleted.status_code == 200, deleted.text
    assert not await trio.Path(Paths(data_dir).job_dir(job_id)).exists()
    assert await trio.to_thread.run_sync(integrity, data_dir) == "ok"
    print(
        f"crash: killed mid-download after {received} of {archive_bytes} bytes; leases at "
        f"kill {leases_at_kill}, left {leases_after_restart}; download valid "
        f"({recovery.archive.received_bytes} bytes); DELETE {deleted.status_code}; "
        "integrity ok"
    )


# The pass reserves every expired job, then removes their files, then retires the rows in
# one transaction: the service is killed while it reserves (files all there) or while it
# removes files (some gone, rows still naming them).
@pytest.mark.parametrize("kill_while", ["reserving", "removing files"])
async def test_a_kill_mid_janitor_pass_ends_every_expired_job_as_a_tombstone(
    data_dir: Path, kill_while: str
) -> None:
    paths = Paths(data_dir)
    [kept_job] = await seed_finished_jobs(data_dir, 1)
    # The expired jobs appear just after the pass made on start (making them takes about
    # 0.2 s), so the test watches the next pass from its beginning.
    async with running_service(data_dir, JANITOR_INTERVAL_S="1.5") as first:
        with trio.fail_after(TIMEOUT_S):
            await first.wait_for_line(JANITOR_PASS)
            expired = await seed_finished_jobs(data_dir, EXPIRED_JOBS, expired=True)

            async def reserving() -> bool:
                reserved = await count_rows(data_dir, "SELECT count(*) FROM deletion_reservations")
                return reserved > 0

            async def removing_files() -> bool:
                # One directory gone of the expired jobs' and the kept job's.
                return await job_dirs(paths) <= EXPIRED_JOBS

            under_way = reserving if kill_while == "reserving" else removing_files
            await wait_for(under_way, polls=10_000, step_s=0.002)
            await kill(first)
    reserved_at_kill = await count_rows(data_dir, "SELECT count(*) FROM deletion_reservations")
    dirs_at_kill = await job_dirs(paths) - 1  # the kept job's too
    tombstones_at_kill = await count_rows(
        data_dir, "SELECT count(*) FROM jobs WHERE status = ?", JobStatus.EXPIRED
    )
    assert tombstones_at_kill == 0, "the pass ended before the kill"
    assert reserved_at_kill > 0

    async with restarted(data_dir) as (second, http):
        with trio.fail_after(TIMEOUT_S):
            recovery = await settle_after_restart(second, http, data_dir, kept_job)
            await stop_gracefully(second)
    assert_recovered(recovery, variations=2)
    rows = await trio.to_thread.run_sync(store_rows, data_dir, "SELECT id, status FROM jobs")
    statuses = {job_id: status for job_id, status in rows}
    assert {job_id: statuses[job_id] for job_id in expired} == dict.fromkeys(
        expired, JobStatus.EXPIRED
    )
    assert statuses[kept_job] == JobStatus.COMPLETED
    assert await trio.to_thread.run_sync(os.listdir, paths.jobs) == [kept_job]
    assert await count_rows(data_dir, "SELECT count(*) FROM deletion_reservations") == 0
    assert (
        await count_rows(data_dir, "SELECT count(*) FROM output_files WHERE job_id != ?", kept_job)
        == 0
    )
    assert await trio.to_thread.run_sync(integrity, data_dir) == "ok"
    print(
        f"crash: killed mid-janitor-pass ({kill_while}) with {reserved_at_kill} of "
        f"{EXPIRED_JOBS} reserved and {dirs_at_kill} directories left; after restart "
        f"{EXPIRED_JOBS} expired tombstones, 0 files, 0 reservations; download valid "
        f"({recovery.archive.received_bytes} bytes); integrity ok"
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_to_the_process_group_mid_encode_stops_gracefully_and_the_job_resumes(
    data_dir: Path, clips: Any, signum: signal.Signals
) -> None:
    encoder_groups: dict[int, int] = {}

    async def encoding() -> bool:
        for pid in await trio.to_thread.run_sync(find_leftover_encoders, data_dir):
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                encoder_groups[pid] = os.getpgid(pid)
        return bool(encoder_groups)

    async with running_service(data_dir, new_session=True) as first:
        group = os.getpgid(first.process.pid)
        assert group == first.process.pid  # its own group, not pytest's
        async with logged_in(first) as http:
            job_id = (await upload(http, [clips.long], variations="12")).json()["jobId"]
            with trio.fail_after(TIMEOUT_S):
                await wait_for_job(http, job_id, some_variation_done)
                await wait_for(encoding)
        os.killpg(group, signum)
        with trio.fail_after(TIMEOUT_S):
            output = await drain(first)
            status = await first.process.wait()
    # The service stopped its encoders itself: none is left, none was hit.
    left_at_stop = await trio.to_thread.run_sync(find_leftover_encoders, data_dir)
    [(status_at_stop, done_at_stop)] = await trio.to_thread.run_sync(
        store_rows,
        data_dir,
        "SELECT status, (SELECT count(*) FROM output_files WHERE job_id = jobs.id) FROM jobs",
    )
    assert status == 0, output
    assert f"{signum.name} received" in output
    assert group not in encoder_groups.values()
    assert left_at_stop == []
    # Interrupted, not ended: the processor leaves it `processing` for the next start to
    # requeue (actors/processor.py, `Processor.run`).
    assert status_at_stop in (JobStatus.QUEUED, JobStatus.PROCESSING)
    assert isinstance(done_at_stop, int)
    assert done_at_stop < 12

    async with restarted(data_dir) as (second, http):
        with trio.fail_after(TIMEOUT_S):
            detail = await wait_for_job(http, job_id, finished, timeout_s=TIMEOUT_S)
            recovery = await settle_after_restart(second, http, data_dir, job_id)
            await stop_gracefully(second)
    assert detail["status"] == "completed"
    [file] = detail["files"]
    assert (file["status"], file["error"]) == ("completed", None)
    assert [output["variationIndex"] for output in file["outputs"]] == list(range(1, 13))
    assert_recovered(recovery, variations=12)
    assert await trio.to_thread.run_sync(integrity, data_dir) == "ok"
    print(
        f"crash: {signum.name} to the process group mid-encode; exit {status}; encoders "
        f"in the service's group 0 of {len(encoder_groups)}, left {len(left_at_stop)}; "
        f"{done_at_stop} of 12 variations done at the stop, {status_at_stop}; after restart "
        f"{len(file['outputs'])} of 12; download valid "
        f"({recovery.archive.received_bytes} bytes); integrity ok"
    )
