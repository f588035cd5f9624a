"""Errors are sentences: a job that fails inside FFmpeg says so in words a person reads,
and no answer, list, detail or event, carries a server path; FFmpeg's own words go to the
log with the job's id."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.support.http import TEST_PASSWORD, StartService, finished, upload, wait_for_job
from tests.support.jobs import make_finished_job
from tests.support.sse import open_stream, receive_until
from tests.support.store import sql
from web.views import shown_error

FAILED = "FFmpeg could not make the variations from this video (it stopped with status 1)."


@pytest.fixture
def failing_ffmpeg(tmp_path: Path) -> Path:
    """An FFmpeg that fails as a real one does on a bad input: its stderr names the files
    it was given, by their full paths (the edge of the world: a process that fails)."""
    script = tmp_path / "bin" / "ffmpeg"
    script.parent.mkdir()
    script.write_text(
        '#!/bin/sh\necho "$@: Invalid data found when processing input" >&2\nexit 1\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def paths_in(data: Any, root: Path) -> list[str]:
    text = json.dumps(data, ensure_ascii=False)
    return [needle for needle in (str(root), str(root.resolve()), "/tmp/") if needle in text]


async def test_a_job_failed_by_ffmpeg_says_why_in_words_and_logs_ffmpeg(
    nursery: trio.Nursery,
    start_service: StartService,
    failing_ffmpeg: Path,
    clips: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    service = await start_service(ffmpeg=str(failing_ffmpeg))
    root = service.state.paths.root
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        login = await http.post("/api/auth", json={"password": TEST_PASSWORD})
        http.headers["Authorization"] = f"Bearer {login.json()['token']}"
        link = (await http.post("/api/events/link")).json()["url"]
        items = await open_stream(nursery, http, link)
        job_id = (await upload(http, [clips.mp4], variations="1")).json()["jobId"]
        detail = await wait_for_job(http, job_id, finished)
        (_kind, event), passed = await receive_until(
            items, lambda item: item[0] == "status" and item[1]["status"] == "failed"
        )
        listed = (await http.get("/api/jobs")).json()
    assert detail["status"] == "failed"
    assert detail["files"][0]["error"] == FAILED
    assert detail["error"] == f"Every video failed: creative.mp4: {FAILED}"
    for shown in (detail, listed, event, passed):
        assert paths_in(shown, root) == []
    logged = [record.getMessage() for record in caplog.records if job_id in record.getMessage()]
    assert any("Invalid data found when processing input" in line for line in logged), logged


def test_an_error_kept_by_an_older_version_is_shown_without_its_paths() -> None:
    kept = (
        "FFmpeg exited with status 1: /data/jobs/4f1c/5d2e_var1.mp4.part: No space left | "
        "/data/uploads/4f1c/0.upload: Invalid data"
    )
    assert shown_error(kept) == "FFmpeg exited with status 1: …: No space left | …: Invalid data"
    assert shown_error("The file “a.mp4” is 8000 by 8000.") == "The file “a.mp4” is 8000 by 8000."
    assert shown_error(None) is None


async def test_an_old_rows_error_reaches_no_answer_with_its_path(
    start_service: StartService,
) -> None:
    service = await start_service()
    job_id = await make_finished_job(service.state.db, service.state.paths)
    await service.state.db.write(
        lambda conn: sql(
            conn,
            "UPDATE job_files SET error = :error WHERE job_id = :id",
            error=f"FFmpeg exited with status 1: {service.state.paths.root}/x.part: bad",
            id=job_id,
        )
    )
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        login = await http.post("/api/auth", json={"password": TEST_PASSWORD})
        http.headers["Authorization"] = f"Bearer {login.json()['token']}"
        detail = (await http.get(f"/api/jobs/{job_id}")).json()
    assert detail["files"][0]["error"] == "FFmpeg exited with status 1: …: bad"
    assert paths_in(detail, service.state.paths.root) == []
