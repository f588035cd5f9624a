"""Past one machine, on one machine: one PostgreSQL, two web processes and two workers,
each a real process started as operators start them. Every test runs in both shapes: the
processes sharing one data directory (one machine), and each with a data directory of
its own and the bytes in a bucket of a real S3 server (machines of their own).

Each test is one promise of the scaled-out service: work flows from any web process to
the workers and back to any web process; a worker killed mid-encode is taken over; a
download through one web process holds off removals through another, until it ends or
its process dies; a cancel through one web process stops a worker's FFmpeg; and an
event stream on one web process follows what a worker does.
"""

from __future__ import annotations

import contextlib
import io
import signal
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from refresher.archive.job_archive import MANIFEST_NAME
from refresher.media.ffmpeg import PARTIAL_SUFFIX, find_leftover_encoders
from refresher.store.bus import JOB_QUEUED
from tests.support.clips import Clips
from tests.support.clock import wait_for
from tests.support.cluster import (
    CLAIM_TTL_S,
    Cluster,
    alive,
    hold_download,
    logged,
    running_cluster,
)
from tests.support.http import (
    TEST_PASSWORD,
    StartService,
    collect_events,
    finished,
    upload,
    wait_for_job,
)
from tests.support.jobs import queue_files_job
from tests.support.process import ServiceProcess
from tests.support.s3 import S3Server
from tests.support.tus import declare, offset_of, patch, tus_upload, upload_id

pytestmark = pytest.mark.slow

TIMEOUT_S = 120


@pytest.fixture(params=["one-disk", "bucket"])
def shape(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """How the processes keep the bytes: `running_cluster`'s options for each shape."""
    if request.param == "one-disk":
        yield {}
        return
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.fresh_bucket()
    yield {"separate": True, **server.env(bucket, prefix="results")}
    server.drop_bucket(bucket)


@contextlib.asynccontextmanager
async def login(url: str, password: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the web process at `url`, logged in with `password`."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        response = await http.post("/api/auth", json={"password": password})
        assert response.status_code == 200, response.text
        http.headers["Authorization"] = f"Bearer {response.json()['token']}"
        yield http


@contextlib.asynccontextmanager
async def through_both(
    cluster: Cluster,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Clients of web processes A and B, each logged in."""
    web_a, web_b = cluster.webs
    async with (
        login(web_a.url, web_a.password) as via_a,
        login(web_b.url, web_b.password) as via_b,
    ):
        yield via_a, via_b


async def zip_members(http: httpx.AsyncClient, job_id: str) -> dict[str, bytes]:
    """The job's ZIP, read back whole: each member's name and bytes."""
    response = await http.get(f"/api/jobs/{job_id}/download")
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}


def token_of(http: httpx.AsyncClient) -> str:
    return str(http.headers["Authorization"]).removeprefix("Bearer ")


async def encoder_of(cluster: Cluster) -> tuple[ServiceProcess, list[int]]:
    """Wait until a worker runs an encoder; return the worker and its encoders' PIDs."""

    async def running() -> tuple[ServiceProcess, list[int]] | None:
        busy = await trio.to_thread.run_sync(cluster.encoding)
        for worker in cluster.workers:
            if busy.get(worker.process.pid):
                return worker, busy[worker.process.pid]
        return None

    with trio.fail_after(TIMEOUT_S):
        found = await wait_for(running, polls=10**6, step_s=0.05)
    assert found is not None
    return found


def bucket_keys(request: pytest.FixtureRequest, shape: dict[str, Any], job_id: str) -> list[str]:
    """The keys of a job's objects in the bucket of `shape` (blocking)."""
    server: S3Server = request.getfixturevalue("s3_server")
    bucket, _, prefix = shape["STORAGE_URL"].removeprefix("s3://").partition("/")
    listing = server.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/jobs/{job_id}/")
    return [item["Key"] for item in listing.get("Contents", [])]


async def test_work_goes_from_one_web_process_through_the_workers_to_another(
    tmp_path: Path,
    postgres_url: str,
    clips: Clips,
    shape: dict[str, Any],
    start_service: StartService,
    request: pytest.FixtureRequest,
) -> None:
    async with running_cluster(tmp_path / "data", postgres_url, **shape) as cluster:
        web_a, web_b = cluster.webs
        # One password and one signing key for all: a token from A works on B.
        assert web_a.password == web_b.password
        async with (
            login(web_a.url, web_a.password) as via_a,
            httpx.AsyncClient(base_url=web_b.url, timeout=30) as via_b,
        ):
            via_b.headers["Authorization"] = via_a.headers["Authorization"]
            health = (await via_b.get("/api/health")).json()
            assert "processor" not in health["actors"]  # web processes do not encode
            # A resumable upload whose PATCHes reach either web process: declared on A,
            # half sent to A, the rest to B from the offset B reports; another sent
            # whole through B by the real client; the job made from both on A.
            data = clips.mp4.read_bytes()
            location = (await declare(via_a, len(data), clips.mp4.name)).headers["Location"]
            assert (await patch(via_a, location, 0, data[: len(data) // 2])).status_code == 204
            offset = await offset_of(via_b, location)
            assert offset == len(data) // 2
            assert (await patch(via_b, location, offset, data[offset:])).status_code == 204
            token = via_a.headers["Authorization"].removeprefix("Bearer ")
            other = await tus_upload(web_b.url, token, clips.mov)
            response = await via_a.post(
                "/api/jobs",
                json={"uploads": [upload_id(location), upload_id(other)], "variations": 3},
            )
            assert response.status_code == 202, response.text
            job_id = response.json()["jobId"]
            job = await wait_for_job(via_b, job_id, finished, timeout_s=TIMEOUT_S)
            assert job["status"] == "completed", job
            scaled_out = await zip_members(via_b, job_id)
        # Both workers took part: each claimed one of the two source files.
        worked = [w for w in cluster.workers if any(job_id in line for line in w.output)]
        if cluster.separate:  # the bytes are in the bucket; the data directories scratch
            kept = await trio.to_thread.run_sync(bucket_keys, request, shape, job_id)
            assert len([key for key in kept if key.endswith(".mp4")]) == 6, kept
            assert [p for d in cluster.data_dirs for p in d.rglob("*.mp4")] == []
        [(seed,)] = await trio.to_thread.run_sync(
            lambda: cluster.rows("SELECT seed FROM jobs WHERE id = %(id)s", id=job_id)
        )

    # The same job, with the same seed, in one process on its SQLite store.
    single = await start_service(data_dir=tmp_path / "single")
    same = await queue_files_job(
        single.state.db, single.state.paths, [clips.mp4, clips.mov], 3, seed=seed
    )
    single.state.lifecycle.bus.publish(JOB_QUEUED, same)
    async with login(single.url, TEST_PASSWORD) as http:
        await wait_for_job(http, same, finished, timeout_s=TIMEOUT_S)
        one_process = await zip_members(http, same)
    videos = {name: data for name, data in scaled_out.items() if name != MANIFEST_NAME}
    assert len(videos) == 6
    assert videos == {name: data for name, data in one_process.items() if name != MANIFEST_NAME}
    assert len(worked) == 2, [len(w.output) for w in cluster.workers]


async def test_a_worker_killed_mid_encode_is_taken_over_and_its_encoder_dies_with_it(
    tmp_path: Path, postgres_url: str, clips: Clips, shape: dict[str, Any]
) -> None:
    data_dir = tmp_path / "data"
    async with (
        running_cluster(data_dir, postgres_url, **shape) as cluster,
        login(cluster.webs[0].url, cluster.webs[0].password) as http,
    ):
        # Twelve variations of one source: several batches, one worker's claim.
        response = await upload(http, [clips.long], variations="12")
        job_id = response.json()["jobId"]
        done_before = await wait_for_job(
            http, job_id, lambda job: job["files"][0]["completedVariations"] >= 1,
            timeout_s=TIMEOUT_S,
        )  # fmt: skip
        kept = {out["id"] for out in done_before["files"][0]["outputs"]}
        victim, encoders = await encoder_of(cluster)
        victim.process.send_signal(signal.SIGKILL)
        await victim.process.wait()
        killed_at = trio.current_time()

        # Its FFmpeg dies with it, not when someone notices.
        async def encoders_gone() -> bool:
            return not any(alive(pid) for pid in encoders)

        await wait_for(encoders_gone, polls=100, step_s=0.05)
        job = await wait_for_job(http, job_id, finished, timeout_s=TIMEOUT_S)
        assert job["status"] == "completed", job
        [file] = job["files"]
        assert sorted(out["variationIndex"] for out in file["outputs"]) == list(range(1, 13))
        # Resumed after what was recorded: the variations made before the kill stay.
        assert kept <= {out["id"] for out in file["outputs"]}
        [survivor] = [worker for worker in cluster.workers if worker is not victim]
        line = await logged(survivor, rf"job={job_id} file=\S+ processing")
        assert line
        members = await zip_members(http, job_id)
        assert len(members) == 1 + 12
        # The data directories of the processes still running; with a bucket, each has its
        # own, and the dead worker's scratch is its own to clear when it starts again.
        live_dirs = {
            cluster.dir_of[service.process.pid]
            for service in [*cluster.webs, *cluster.workers]
            if service is not victim or not cluster.separate
        }
    taken_over_s = trio.current_time() - killed_at
    # No partial file and no encoder left behind.
    for where in live_dirs:
        assert list(where.rglob(f"*{PARTIAL_SUFFIX}")) == []
    for where in {data_dir, *cluster.data_dirs}:
        assert await trio.to_thread.run_sync(find_leftover_encoders, where) == []
    print(f"\n[takeover] claim ttl {CLAIM_TTL_S:g} s; job done {taken_over_s:.1f} s after kill")


async def finished_job(http: httpx.AsyncClient, clips: Clips) -> str:
    """Upload a job whose ZIP (about a megabyte) outgrows a socket's buffers; wait for it
    to complete; return its id."""
    job_id = (await upload(http, [clips.long], variations="3")).json()["jobId"]
    job = await wait_for_job(http, job_id, finished, timeout_s=TIMEOUT_S)
    assert job["status"] == "completed", job
    return str(job_id)


async def lease_rows(cluster: Cluster, job_id: str) -> int:
    rows = await trio.to_thread.run_sync(
        lambda: cluster.rows("SELECT count(*) FROM leases WHERE job_id = %(id)s", id=job_id)
    )
    return int(rows[0][0])


async def test_a_download_through_one_web_process_holds_off_removals_through_another(
    tmp_path: Path, postgres_url: str, clips: Clips, shape: dict[str, Any]
) -> None:
    async with running_cluster(
        tmp_path / "data", postgres_url, **shape, workers=1, JANITOR_INTERVAL_S="0.5",
        DOWNLOAD_STALL_S="60", DOWNLOAD_MIN_RATE_BYTES_S="0",
    ) as cluster:  # fmt: skip
        web_a, web_b = cluster.webs
        async with through_both(cluster) as (via_a, via_b):
            job_id = await finished_job(via_a, clips)
            download = await hold_download(web_a.url, f"/api/jobs/{job_id}/download",
                                           token_of(via_a))  # fmt: skip
            assert download.status == 200
            assert await lease_rows(cluster, job_id) == 1
            refused = await via_b.delete(f"/api/jobs/{job_id}")
            assert refused.status_code == 409, refused.text
            assert "being downloaded" in refused.json()["error"]
            # Its results are due to expire: B's janitor finds the job busy, and leaves it.
            await trio.to_thread.run_sync(
                lambda: cluster.rows(
                    "UPDATE jobs SET expires_at = '2001-01-01T00:00:00.000Z' WHERE id = %(id)s",
                    id=job_id,
                )
            )
            line = await logged(web_b, r"janitor pass in .* busy=1")
            assert "expired=0" in line
            assert (await via_b.get(f"/api/jobs/{job_id}")).json()["status"] == "completed"
            # The download ends whole, and then the janitor expires the job.
            body = await download.finish()
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                assert archive.testzip() is None
                assert len(archive.namelist()) == 1 + 3
            expired = await wait_for_job(
                via_b, job_id, lambda job: job["status"] == "expired", timeout_s=30
            )
            assert expired["error"] == "Results expired."
            assert (await via_b.delete(f"/api/jobs/{job_id}")).status_code == 200


async def test_a_web_process_killed_mid_download_leaves_leases_that_lapse(
    tmp_path: Path, postgres_url: str, clips: Clips, shape: dict[str, Any]
) -> None:
    stall_s = 3.0
    async with running_cluster(
        tmp_path / "data", postgres_url, **shape, workers=1, DOWNLOAD_STALL_S=str(stall_s)
    ) as cluster:
        web_a, web_b = cluster.webs
        async with login(web_b.url, web_b.password) as via_b:
            job_id = await finished_job(via_b, clips)
            download = await hold_download(web_a.url, f"/api/jobs/{job_id}/download",
                                           token_of(via_b))  # fmt: skip
            assert download.status == 200
            web_a.process.send_signal(signal.SIGKILL)
            await web_a.process.wait()
            killed_at = trio.current_time()
            download.sock.close()
            # The dead process's lease still stands until it lapses; then the job goes.
            assert (await via_b.delete(f"/api/jobs/{job_id}")).status_code == 409

            async def deleted() -> bool:
                response = await via_b.delete(f"/api/jobs/{job_id}")
                assert response.status_code in (200, 409), response.text
                return response.status_code == 200

            await wait_for(deleted, polls=100, step_s=0.2)
            waited_s = trio.current_time() - killed_at
            assert (await via_b.get(f"/api/jobs/{job_id}")).status_code == 404
            assert await lease_rows(cluster, job_id) == 0
    # Within the lease's time to live, and a renewal's third of it.
    assert waited_s < stall_s * 4 / 3 + 5
    print(f"\n[lease] time to live {stall_s:g} s; deleted {waited_s:.1f} s after the kill")


async def test_a_cancel_through_one_web_process_stops_a_workers_encoder(
    tmp_path: Path, postgres_url: str, clips: Clips, shape: dict[str, Any]
) -> None:
    async with (
        running_cluster(tmp_path / "data", postgres_url, **shape) as cluster,
        through_both(cluster) as (via_a, via_b),
    ):
        job_id = (await upload(via_a, [clips.long], variations="12")).json()["jobId"]
        _, encoders = await encoder_of(cluster)
        asked = trio.current_time()
        response = await via_b.post(f"/api/jobs/{job_id}/cancel")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"

        async def encoders_gone() -> bool:
            return not any(alive(pid) for pid in encoders)

        await wait_for(encoders_gone, polls=200, step_s=0.05)
        stopped_s = trio.current_time() - asked
        detail = (await via_a.get(f"/api/jobs/{job_id}")).json()
        assert detail["status"] == "cancelled"
        assert detail["files"][0]["status"] == "cancelled"
    # The notice reaches the worker at once; FFmpeg is asked to quit, then made to.
    assert stopped_s < 5, stopped_s
    print(f"\n[cancel] encoder stopped {stopped_s:.2f} s after the request")


async def test_an_event_stream_on_one_web_process_follows_a_worker(
    tmp_path: Path, postgres_url: str, clips: Clips, shape: dict[str, Any]
) -> None:
    async with (
        running_cluster(tmp_path / "data", postgres_url, **shape) as cluster,
        through_both(cluster) as (via_a, via_b),
    ):
        job_id = (await upload(via_a, [clips.long], variations="6")).json()["jobId"]
        events: list[tuple[str, Any]] = []
        with trio.fail_after(TIMEOUT_S):
            await collect_events(via_b, job_id, token_of(via_b), events)
    progress = [data for kind, data in events if kind == "progress"]
    assert progress, events
    assert [data["progress"] for data in progress] == sorted(data["progress"] for data in progress)
    assert progress[-1]["progress"] == 100.0
    assert progress[-1]["overallProgress"] == 100.0
    assert events[-1][0] == "status"
    assert events[-1][1]["status"] == "completed"
