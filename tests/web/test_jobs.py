"""Upload and processing end to end, over real HTTP with real FFmpeg on tiny clips."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
import trio

from refresher.config import Config
from refresher.media import effects
from refresher.media.ffmpeg import find_leftover_encoders
from refresher.store.bus import JOB_QUEUED
from tests.support.http import (
    StartService,
    collect_events,
    finished,
    some_variation_done,
    upload,
    wait_for_job,
)
from tests.support.jobs import leftovers, made_variations, queue_files_job
from tests.support.store import sql
from wiring.service import RunningService

# The job lifecycle, leases, removal and downloads hold on either store.
pytestmark = pytest.mark.both_stores


async def test_two_clips_become_six_distinct_clean_variations(
    service: RunningService, authed: httpx.AsyncClient, token: str, config: Config, clips: Any
) -> None:
    response = await upload(authed, [clips.mp4, clips.mov], variations="3")
    assert response.status_code == 202, response.text
    created = response.json()
    job_id = created["jobId"]
    assert created["status"] == "queued"
    assert created["variationsPerVideo"] == 3
    assert created["totalVariations"] == 6
    assert created["statusUrl"] == f"/api/jobs/{job_id}"
    assert [f["name"] for f in created["files"]] == [clips.mp4.name, clips.mov.name]
    assert [f["size"] for f in created["files"]] == [
        clips.mp4.stat().st_size,
        clips.mov.stat().st_size,
    ]

    events: list[tuple[str, Any]] = []
    with trio.fail_after(120):
        await collect_events(authed, job_id, token, events)

    detail = (await authed.get(f"/api/jobs/{job_id}")).json()
    assert detail["status"] == "completed", detail
    assert detail["overallProgress"] == 100
    assert detail["error"] is None
    outputs = [out for file in detail["files"] for out in file["outputs"]]
    assert len(outputs) == 6
    assert [file["completedVariations"] for file in detail["files"]] == [3, 3]
    text = json.dumps(detail)  # no server paths
    assert str(config.data_dir) not in text
    assert "uploads/" not in text
    for file in detail["files"]:  # stored as `<file id>_var<N>.mp4`; shown by their ZIP names
        assert f"{file['id']}_var" not in text

    # The event stream showed progress climbing to 100 and then the end.
    progress = [data["progress"] for kind, data in events if kind == "progress"]
    assert progress
    assert max(progress) == 100
    assert events[-1][0] == "status"
    assert events[-1][1]["status"] == "completed"

    output_files = sorted((config.data_dir / "jobs" / job_id).glob("*.mp4"))
    assert len(output_files) == 6
    digests = {hashlib.sha256(path.read_bytes()).hexdigest() for path in output_files}
    assert len(digests) == 6
    for path in output_files:
        with av.open(str(path)) as container:
            assert "title" not in container.metadata
            assert "comment" not in container.metadata
            video = container.streams.video[0]
            assert video.codec_context.name == "h264"
            assert video.codec_context.pix_fmt == "yuv420p"
    # The sources are gone once the job has finished.
    assert list((config.data_dir / "uploads").iterdir()) == []

    listing = (await authed.get("/api/jobs")).json()
    assert [(job["id"], job["status"]) for job in listing] == [(job_id, "completed")]
    assert listing[0]["fileNames"] == [clips.mp4.name, clips.mov.name]
    thumbnail = await authed.get(listing[0]["thumbnailUrl"])
    assert thumbnail.status_code == 200
    assert thumbnail.headers["content-type"] == "image/webp"
    assert thumbnail.content[:4] == b"RIFF"


async def test_same_seed_gives_the_recorded_effects(
    service: RunningService, authed: httpx.AsyncClient, clips: Any
) -> None:
    job_id = (await upload(authed, [clips.mp4], variations="2")).json()["jobId"]
    await wait_for_job(authed, job_id, finished)
    job = await service.state.db.read(
        lambda conn: sql(conn, "SELECT seed FROM jobs WHERE id = :id", id=job_id).one()
    )
    recorded = await service.state.db.read(
        lambda conn: [
            row[0]
            for row in sql(
                conn,
                "SELECT effects_json FROM output_files WHERE job_id = :id ORDER BY variation_index",
                id=job_id,
            )
        ]
    )
    expected = [variation.as_dict() for variation in effects.generate(job.seed, 2)]
    assert [json.loads(text) for text in recorded] == expected


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("no files", 400, r"^Choose at least one video to upload \(field “videos”\)\.$"),
        ("eleven files", 400, r"^At most 10 videos per job; this upload has more\.$"),
        ("variations 0", 400, r"^variations must be a whole number from 1 to 20; got “0”\.$"),
        ("variations 21", 400, r"^variations must be a whole number from 1 to 20; got “21”\.$"),
        ("variations abc", 400, r"^variations must be a whole number from 1 to 20; got “abc”\.$"),
        ("oversize", 413, r"^“big\.mp4” is larger than the 200 KiB per-file limit\.$"),
        ("non-video", 415, r"^“notes\.mp4” is not a video file\. Upload MP4 or MOV videos\.$"),
        ("truncated", 415, r"^“cut\.mp4” .+\. Upload MP4 or MOV videos\.$"),
        ("zero bytes", 400, r"^“empty\.mp4” is empty\.$"),
        # JSON names finished resumable uploads; these names none.
        ("not multipart", 400, r"^Name at least one finished upload: "),
    ],
)
async def test_bad_upload_is_refused_and_leaves_nothing(
    start_service: StartService,
    config: Config,
    clips: Any,
    tmp_path: Path,
    case: str,
    status: int,
    message: str,
) -> None:
    service = await start_service(max_upload_bytes=200 * 1024)
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        token = (await http.post("/api/auth", json={"password": config.auth_password})).json()
        http.headers["Authorization"] = f"Bearer {token['token']}"
        good = clips.mp4
        text = tmp_path / "notes.mp4"
        text.write_text("shopping list: eggs, milk\n" * 50)
        big = tmp_path / "big.mp4"
        big.write_bytes(good.read_bytes() + bytes(300 * 1024))
        cut = tmp_path / "cut.mp4"
        cut.write_bytes(clips.mp4.read_bytes()[: clips.mp4.stat().st_size * 6 // 10])
        empty = tmp_path / "empty.mp4"
        empty.write_bytes(b"")
        if case == "no files":
            response = await http.post("/api/jobs", files={"variations": (None, "2")})
        elif case == "eleven files":
            response = await upload(http, [good] * 11)
        elif case.startswith("variations "):
            response = await upload(http, [good], variations=case.split()[1])
        elif case == "oversize":
            response = await upload(http, [good, big])
        elif case == "non-video":
            response = await upload(http, [good, text])
        elif case == "truncated":
            response = await upload(http, [cut])
        elif case == "zero bytes":
            response = await upload(http, [empty])
        else:
            response = await http.post("/api/jobs", json={"videos": []})
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert re.match(message, error), error
        assert (await http.get("/api/jobs")).json() == []
    assert leftovers(config) == []


async def test_upload_needs_login(client: httpx.AsyncClient, clips: Any, config: Config) -> None:
    response = await upload(client, [clips.mp4])
    assert response.status_code == 401
    assert leftovers(config) == []


async def test_cancel_mid_encode_keeps_finished_variations(
    start_service: StartService, config: Config, clips: Any
) -> None:
    service = await start_service()
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        token = (await http.post("/api/auth", json={"password": config.auth_password})).json()
        http.headers["Authorization"] = f"Bearer {token['token']}"
        job_id = (await upload(http, [clips.long], variations="6")).json()["jobId"]
        await wait_for_job(http, job_id, some_variation_done)
        response = await http.post(f"/api/jobs/{job_id}/cancel")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "cancelled"
        assert body["cancelledAt"] is not None
        assert 1 <= body["completedVariations"] < 6
        assert body["totalVariations"] == 6
        detail = (await http.get(f"/api/jobs/{job_id}")).json()
        kept = [out for file in detail["files"] for out in file["outputs"]]
        assert len(kept) == body["completedVariations"]
        again = await http.post(f"/api/jobs/{job_id}/cancel")
        assert again.status_code == 409
        assert again.json() == {"error": "The job has already ended (cancelled)."}
    folder = config.data_dir / "jobs" / job_id
    job_files = sorted(p.name for p in folder.iterdir())
    # Only finished variations (and the thumbnail) remain: no partial output.
    file_id = detail["files"][0]["id"]
    indices = sorted(out["variationIndex"] for out in kept)
    assert len(job_files) == 2 + len(kept)
    assert made_variations(folder, file_id) == indices
    # And the comparison stills of those alone, beside the source's.
    stills = sorted(p.name for p in (folder / "stills").iterdir())
    assert made_variations(folder / "stills", file_id, "jpg") == indices
    assert len(stills) == 1 + len(kept)
    assert len(list((folder / "stills").glob(f"{file_id}_source_*.jpg"))) == 1
    assert list((config.data_dir / "uploads").iterdir()) == []
    assert await trio.to_thread.run_sync(find_leftover_encoders, config.data_dir) == []


async def test_cancel_of_a_queued_job_and_of_unknown_jobs(
    authed: httpx.AsyncClient, service: RunningService, clips: Any, config: Config
) -> None:
    first = (await upload(authed, [clips.long], variations="4")).json()["jobId"]
    second = (await upload(authed, [clips.mp4], variations="2")).json()["jobId"]
    response = await authed.post(f"/api/jobs/{second}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["completedVariations"] == 0
    assert not (config.data_dir / "uploads" / second).exists()
    assert (await authed.post("/api/jobs/nope/cancel")).status_code == 404
    await authed.post(f"/api/jobs/{first}/cancel")


async def test_delete_removes_results(
    authed: httpx.AsyncClient, service: RunningService, clips: Any, config: Config
) -> None:
    job_id = (await upload(authed, [clips.mp4], variations="1")).json()["jobId"]
    await wait_for_job(authed, job_id, finished)
    assert (config.data_dir / "jobs" / job_id).exists()
    response = await authed.delete(f"/api/jobs/{job_id}")
    assert response.status_code == 200
    assert not (config.data_dir / "jobs" / job_id).exists()
    assert (await authed.get(f"/api/jobs/{job_id}")).status_code == 404
    assert (await authed.delete(f"/api/jobs/{job_id}")).status_code == 404


async def test_job_resumes_after_the_processor_is_killed_mid_encode(
    service: RunningService, authed: httpx.AsyncClient, clips: Any, config: Config
) -> None:
    # Twelve variations of a 320x240 clip encode in three batches of four.
    job_id = (await upload(authed, [clips.long], variations="12")).json()["jobId"]
    await wait_for_job(authed, job_id, some_variation_done)
    service.state.supervisor.kill("processor")
    at_kill = (await authed.get(f"/api/jobs/{job_id}")).json()
    assert at_kill["status"] == "processing"
    assert 4 <= at_kill["files"][0]["completedVariations"] < 12
    detail = await wait_for_job(authed, job_id, finished, timeout_s=120)
    assert detail["status"] == "completed"
    outputs = detail["files"][0]["outputs"]
    assert [out["variationIndex"] for out in outputs] == list(range(1, 13))
    assert service.state.supervisor.status()["processor"].restarts == 1
    assert await trio.to_thread.run_sync(find_leftover_encoders, config.data_dir) == []


async def queue_job_from_disk(service: RunningService, sources: list[Path], variations: int) -> str:
    """Queue a job whose uploads are `sources` as they are on disk, skipping upload checks
    (as if a file was damaged on disk after it was accepted), and ring the processor."""
    state = service.state
    job_id = await queue_files_job(
        state.db, state.paths, sources, variations, now=state.now(), ttl_s=3600
    )
    state.lifecycle.bus.publish(JOB_QUEUED, job_id)
    return job_id


async def test_a_failing_source_does_not_fail_the_others(
    service: RunningService, authed: httpx.AsyncClient, clips: Any, tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(clips.mp4.read_bytes()[:2000])
    job_id = await queue_job_from_disk(service, [clips.mp4, damaged], variations=2)
    detail = await wait_for_job(authed, job_id, finished)
    assert detail["status"] == "completed"
    good, bad = detail["files"]
    assert (good["status"], good["completedVariations"]) == ("completed", 2)
    assert bad["status"] == "failed"
    assert bad["error"].startswith("The file ")
    assert detail["downloadUrl"] is not None
    assert service.state.supervisor.status()["processor"].restarts == 0


async def test_a_job_whose_every_source_fails_is_failed_with_the_reasons(
    service: RunningService, authed: httpx.AsyncClient, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video")
    job_id = await queue_job_from_disk(service, [notes], variations=2)
    detail = await wait_for_job(authed, job_id, finished)
    assert detail["status"] == "failed"
    assert detail["error"].startswith("Every video failed: notes.mp4: The file ")
    assert detail["downloadUrl"] is None
    # Its source stays, so it can be retried without uploading again.
    assert detail["files"][0]["retryable"] is True
    assert service.state.paths.upload_dir(job_id).exists()
    assert service.state.supervisor.status()["processor"].restarts == 0


async def test_upload_without_room_is_507_and_leaves_nothing(
    start_service: StartService, config: Config, clips: Any
) -> None:
    # A quota smaller than the upload itself: nothing could ever make room.
    service = await start_service(storage_quota_bytes=clips.mp4.stat().st_size // 2)
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        token = (await http.post("/api/auth", json={"password": config.auth_password})).json()
        http.headers["Authorization"] = f"Bearer {token['token']}"
        response = await upload(http, [clips.mp4])
        assert response.status_code == 507
        assert response.json()["error"].startswith("There is no room for this upload right now")
        assert (await http.get("/api/jobs")).json() == []
    assert leftovers(config) == []


async def test_processor_fails_a_file_rather_than_fill_the_disk(
    start_service: StartService, config: Config, clips: Any
) -> None:
    # Room for the upload (and its form framing) under the 85 % mark, but not for the
    # four variations of a batch on top of it.
    size = clips.mp4.stat().st_size
    service = await start_service(storage_quota_bytes=int((size + 4096) / 0.85) + size)
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        token = (await http.post("/api/auth", json={"password": config.auth_password})).json()
        http.headers["Authorization"] = f"Bearer {token['token']}"
        response = await upload(http, [clips.mp4], variations="4")
        assert response.status_code == 202, response.text
        detail = await wait_for_job(http, response.json()["jobId"], finished)
    assert detail["status"] == "failed"
    assert "There was no room to store" in detail["files"][0]["error"]
    assert list((config.data_dir / "jobs" / detail["jobId"]).glob("*.mp4")) == []
