"""Retrying a failed video without uploading it again: its source is kept (and counted)
until its job's results go, `POST /api/jobs/:id/files/:fileId/retry` queues it again,
and it either completes the job or fails again saying why."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from refresher.jobs import records
from refresher.media.ffmpeg import find_ffmpeg
from refresher.storage.usage import stored_bytes
from tests.support.clips import Clips
from tests.support.clock import wait_for
from tests.support.http import TEST_PASSWORD, StartService, finished, upload, wait_for_job
from wiring.service import RunningService

pytestmark = [pytest.mark.both_stores, pytest.mark.both_blob_stores]


@pytest.fixture
def fault(tmp_path: Path) -> Path:
    """While this file exists, the encoder fails on the job's second source."""
    return tmp_path / "encoder-fault"


@pytest.fixture
def flaky_ffmpeg(tmp_path: Path, fault: Path) -> Path:
    """An FFmpeg that fails on the second source (`1.upload`) while `fault` exists: a
    fault at the edge, the real encoder otherwise."""
    script = tmp_path / "bin" / "ffmpeg"
    script.parent.mkdir()
    script.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{fault}" ]; then case "$*" in *1.upload*) '
        'echo "$@: Invalid data found when processing input" >&2; exit 1;; esac; fi\n'
        f'exec "{find_ffmpeg(None)}" "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@asynccontextmanager
async def signed_in(service: RunningService) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        login = await http.post("/api/auth", json={"password": TEST_PASSWORD})
        http.headers["Authorization"] = f"Bearer {login.json()['token']}"
        yield http


async def test_a_failed_video_is_retried_from_its_kept_source_and_completes_the_job(
    start_service: StartService, flaky_ffmpeg: Path, fault: Path, clips: Clips
) -> None:
    await trio.Path(fault).touch()
    service = await start_service(ffmpeg=str(flaky_ffmpeg))
    async with signed_in(service) as http:
        job_id = (await upload(http, [clips.mp4, clips.mov], variations="2")).json()["jobId"]
        with trio.fail_after(60):
            detail = await wait_for_job(http, job_id, finished)
        assert detail["status"] == "completed"  # one of two made its variations
        good, bad = detail["files"]
        assert (good["status"], good["retryable"]) == ("completed", False)
        assert (bad["status"], bad["retryable"], bad["retries"]) == ("failed", True, 0)
        assert bad["error"]
        # Only the failed file's source stays (the other goes just after the job's end is
        # told), and it counts against the quota.
        state = service.state

        async def one_source_left() -> records.JobRecord | None:
            job = await state.db.read(lambda conn: records.load_job(conn, job_id))
            assert job is not None
            return (
                job if [file.upload_path is None for file in job.files] == [True, False] else None
            )

        job = await wait_for(one_source_left)
        kept = [file.upload_path for file in job.files if file.upload_path is not None]
        assert state.lifecycle.blobs.exists(state.paths.absolute(kept[0]))
        outputs = sum(output.size for output in job.outputs)
        assert await state.db.read(stored_bytes) == outputs + bad["size"]

        await trio.Path(fault).unlink()
        retried = await http.post(f"/api/jobs/{job_id}/files/{bad['id']}/retry")
        assert retried.status_code == 200, retried.text
        assert retried.json() == {"jobId": job_id, "fileId": bad["id"], "status": "queued"}
        with trio.fail_after(60):
            detail = await wait_for_job(
                http, job_id, lambda d: finished(d) and d["files"][1]["status"] != "failed"
            )
        assert detail["status"] == "completed"
        again = detail["files"][1]
        assert (again["status"], again["retries"], again["retryable"]) == ("completed", 1, False)
        assert [o["variationIndex"] for o in again["outputs"]] == [1, 2]
        assert detail["downloadUrl"]

        # Its source goes once its job has ended again (just after its end is told).
        async def sources_gone() -> bool:
            job = await state.db.read(lambda conn: records.load_job(conn, job_id))
            assert job is not None
            return [file.upload_path for file in job.files] == [None, None]

        await wait_for(sources_gone)
        assert not state.lifecycle.blobs.exists(state.paths.absolute(kept[0]))
        # A file that did not fail is not retried.
        refused = await http.post(f"/api/jobs/{job_id}/files/{bad['id']}/retry")
        assert refused.status_code == 409
        assert refused.json()["error"].startswith("Only a failed video can be retried")
        unknown = await http.post(f"/api/jobs/{job_id}/files/nope/retry")
        assert unknown.status_code == 404


async def test_a_retried_video_that_fails_again_says_why_and_can_be_retried_again(
    start_service: StartService, flaky_ffmpeg: Path, fault: Path, clips: Clips
) -> None:
    await trio.Path(fault).touch()
    service = await start_service(ffmpeg=str(flaky_ffmpeg))
    async with signed_in(service) as http:
        job_id = (await upload(http, [clips.mp4, clips.mov], variations="1")).json()["jobId"]
        with trio.fail_after(60):
            detail = await wait_for_job(http, job_id, finished)
        bad = detail["files"][1]
        assert (await http.post(f"/api/jobs/{job_id}/files/{bad['id']}/retry")).status_code == 200
        with trio.fail_after(60):
            detail = await wait_for_job(
                http, job_id, lambda d: finished(d) and d["files"][1]["retries"] == 1
            )
        failed_again = detail["files"][1]
        assert failed_again["status"] == "failed"
        assert failed_again["error"]
        assert failed_again["retryable"] is True
