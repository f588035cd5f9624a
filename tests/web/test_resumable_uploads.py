"""Resumable uploads (tus 1.0) against the real route, with the real tus client (tuspy):
declared, sent in PATCHes, cut and resumed, terminated, refused, and made into jobs by
reference, on the volume and in a bucket."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest
import trio

from refresher.config import Config
from refresher.uploads import received, records
from tests.support.clips import Clips
from tests.support.clock import WallClock
from tests.support.http import finished, wait_for_job
from tests.support.jobs import leftovers
from tests.support.tus import (
    TUS,
    cut_patch,
    declare,
    metadata,
    offset_of,
    patch,
    settled_offset,
    tus_upload,
    upload_id,
)
from web.http.tus import http_date
from web.routes import resumable
from wiring.service import RunningService


# The flows that touch the store and the bytes run on every pairing of the two.
def on_every_store(test: object) -> object:
    return pytest.mark.both_stores(pytest.mark.both_blob_stores(test))


async def job_from(http: httpx.AsyncClient, *locations: str, variations: int = 1) -> str:
    response = await http.post(
        "/api/jobs",
        json={"uploads": [upload_id(url) for url in locations], "variations": variations},
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["jobId"]
    return job_id


@on_every_store
async def test_a_tus_upload_becomes_a_job_by_reference_and_leaves_nothing_behind(
    service: RunningService, authed: httpx.AsyncClient, token: str, clips: Clips, config: Config
) -> None:
    with trio.fail_after(60):
        mp4, mov = await tus_upload(service.url, token, clips.mp4, chunk_size=8192), None
        mov = await tus_upload(service.url, token, clips.mov)
        job_id = await job_from(authed, mp4, mov)
        detail = await wait_for_job(authed, job_id, finished)
    assert detail["status"] == "completed", detail
    assert detail["source"] == "upload"
    sizes = [file["size"] for file in detail["files"]]
    assert sizes == [clips.mp4.stat().st_size, clips.mov.stat().st_size]
    assert [file["name"] for file in detail["files"]] == [clips.mp4.name, clips.mov.name]
    # The uploads were consumed: gone from the protocol, their bytes moved or removed.
    assert (await authed.head(mp4, headers=TUS)).status_code == 404
    assert not [name for name in leftovers(config) if "resumable/" in name]


@on_every_store
async def test_a_patch_cut_at_several_offsets_resumes_byte_identical(
    service: RunningService, authed: httpx.AsyncClient, token: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Pieces of 64 KiB, so a HEAD sees progress while the PATCH still streams.
    monkeypatch.setattr(resumable, "PIECE_BYTES", 64 * 1024)
    data = random.Random(7).randbytes(3 * 1024 * 1024 + 5)
    source = tmp_path / "clip.mp4"
    source.write_bytes(data)
    location = (await declare(authed, len(data))).headers["Location"]
    port = int(service.url.rsplit(":", 1)[1])
    offsets = [0]
    with trio.fail_after(60):
        for _ in range(3):  # three cuts, each part-way through what is left
            start = offsets[-1]

            async def progressed(start: int = start) -> bool:
                return await offset_of(authed, location) >= start + 256 * 1024

            await cut_patch(
                port, token, location, start, data[start:], send_bytes=512 * 1024,
                until=progressed,
            )  # fmt: skip
            offsets.append(await settled_offset(authed, location))
        assert offsets == sorted(set(offsets)), offsets  # every cut kept bytes
        assert offsets[-1] < len(data)
        # The real client finishes it from where the server has it.
        await tus_upload(service.url, token, source, url=f"{service.url}{location}")
    record = await service.state.db.read(lambda conn: records.load(conn, upload_id(location)))
    assert record is not None
    assert record.received == len(data)
    joined = tmp_path / "joined"
    state = service.state
    await trio.to_thread.run_sync(
        received.assemble, state.lifecycle.blobs, state.paths, record, joined
    )
    assert joined.read_bytes() == data


async def test_head_reports_offsets_and_a_wrong_offset_or_overflow_is_refused(
    authed: httpx.AsyncClient,
) -> None:
    location = (await declare(authed, 1000)).headers["Location"]
    assert await offset_of(authed, location) == 0
    first = await patch(authed, location, 0, b"x" * 400)
    assert first.status_code == 204, first.text
    assert first.headers["Upload-Offset"] == "400"
    assert "Upload-Expires" in first.headers
    assert await offset_of(authed, location) == 400
    stale = await patch(authed, location, 0, b"x" * 10)
    assert stale.status_code == 409
    assert stale.headers["Upload-Offset"] == "400"
    past = await patch(authed, location, 400, b"x" * 601)
    assert past.status_code == 413
    assert await offset_of(authed, location) == 400
    assert (await patch(authed, location, 400, b"x" * 600)).status_code == 204
    assert await offset_of(authed, location) == 1000


async def test_a_job_refuses_unfinished_unknown_and_reused_uploads(
    service: RunningService, authed: httpx.AsyncClient, token: str, clips: Clips
) -> None:
    location = (await declare(authed, 1000, "half.mp4")).headers["Location"]
    await patch(authed, location, 0, b"x" * 10)
    unfinished = await authed.post("/api/jobs", json={"uploads": [upload_id(location)]})
    assert unfinished.status_code == 409
    assert unfinished.json()["error"].startswith("“half.mp4” has not finished uploading")
    unknown = await authed.post("/api/jobs", json={"uploads": ["0" * 32]})
    assert unknown.status_code == 400
    assert "no upload" in unknown.json()["error"]
    for bad in ([], ["../../etc"], [1], "abc", [upload_id(location)] * 2):
        refused = await authed.post("/api/jobs", json={"uploads": bad})
        assert refused.status_code == 400, (bad, refused.text)
    done = await tus_upload(service.url, token, clips.mp4)
    made = await job_from(authed, done)
    # The same request again (its answer was lost) gets the same job, not a second one.
    again = await authed.post("/api/jobs", json={"uploads": [upload_id(done)], "variations": 1})
    assert again.status_code == 202, again.text
    assert again.json()["jobId"] == made
    assert len((await authed.get("/api/jobs")).json()) == 1
    # Another job cannot take an upload that one has.
    other = await tus_upload(service.url, token, clips.mov)
    mixed = await authed.post("/api/jobs", json={"uploads": [upload_id(other), upload_id(done)]})
    assert mixed.status_code == 409
    assert mixed.json()["error"] == f"The upload “{upload_id(done)}” is already another job's."
    assert (await authed.head(other, headers=TUS)).status_code == 200  # still its own


@on_every_store
async def test_a_non_video_upload_is_refused_when_the_job_takes_it_and_is_removed(
    service: RunningService, authed: httpx.AsyncClient, token: str, tmp_path: Path,
    config: Config,
) -> None:  # fmt: skip
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"not a video at all " * 100)
    location = await tus_upload(service.url, token, fake)
    refused = await authed.post("/api/jobs", json={"uploads": [upload_id(location)]})
    assert refused.status_code == 415, refused.text
    assert "fake.mp4" in refused.json()["error"]
    assert (await authed.head(location, headers=TUS)).status_code == 404
    assert (await authed.get("/api/jobs")).json() == []
    assert not [name for name in leftovers(config) if "resumable/" in name or ".upload" in name]


@on_every_store
async def test_terminate_removes_the_upload_and_its_bytes(
    authed: httpx.AsyncClient, config: Config
) -> None:
    location = (await declare(authed, 100)).headers["Location"]
    await patch(authed, location, 0, b"y" * 50)
    gone = await authed.delete(location, headers=TUS)
    assert gone.status_code == 204
    assert (await authed.head(location, headers=TUS)).status_code == 404
    assert (await patch(authed, location, 50, b"y")).status_code == 404
    assert not [name for name in leftovers(config) if "resumable/" in name]


async def test_concurrent_uploads_each_arrive_whole(
    service: RunningService, authed: httpx.AsyncClient, token: str, clips: Clips
) -> None:
    locations: list[str] = []

    async def one(path: Path) -> None:
        locations.append(await tus_upload(service.url, token, path, chunk_size=4096))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for path in (clips.mp4, clips.mov, clips.mp4):
                nursery.start_soon(one, path)
    for location in locations:
        response = await authed.head(location, headers=TUS)
        assert response.headers["Upload-Offset"] == response.headers["Upload-Length"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Upload-Length": "abc"}, 400),
        ({"Upload-Length": "-1"}, 400),
        ({"Upload-Length": "1e9"}, 400),
        ({"Upload-Length": "9" * 40}, 400),
        ({"Upload-Length": ""}, 400),
        ({"Upload-Metadata": "filename %%%"}, 400),
        ({"Upload-Metadata": "filename " + "//79"}, 400),  # base64 of invalid UTF-8
        ({"Upload-Metadata": metadata(filename="a.mp4") + "," + metadata(filename="b.mp4")}, 400),
        ({"Upload-Metadata": metadata(filetype="video/mp4")}, 400),  # no name
        ({"Upload-Metadata": metadata(filename="notes.txt", filetype="text/plain")}, 415),
        ({"Tus-Resumable": "0.2.2"}, 412),
        ({"Upload-Defer-Length": "1"}, 400),
    ],
)
async def test_hostile_declarations_are_refused_with_a_sentence(
    authed: httpx.AsyncClient, headers: dict[str, str], status: int
) -> None:
    base = {**TUS, "Upload-Length": "100", "Upload-Metadata": metadata(filename="a.mp4")}
    response = await authed.post("/api/uploads", headers={**base, **headers})
    assert response.status_code == status, response.text
    assert response.json()["error"]


async def test_declarations_past_the_limits_or_the_quota_are_refused(
    start_service: object, config: Config
) -> None:
    service: RunningService = await start_service(  # type: ignore[operator]
        max_upload_bytes=10_000, storage_quota_bytes=50_000
    )
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        assert (await declare(http, 100)).status_code == 401
        from tests.support.http import TEST_PASSWORD

        auth = await http.post("/api/auth", json={"password": TEST_PASSWORD})
        http.headers["Authorization"] = f"Bearer {auth.json()['token']}"
        too_big = await declare(http, 10_001)
        assert too_big.status_code == 413
        assert "per-file limit" in too_big.json()["error"]
        # Traversal in a name is only ever a name: shown, never a path.
        sneaky = await declare(http, 100, "../../etc/passwd.mp4")
        assert sneaky.status_code == 201
        assert not (config.data_dir.parent / "etc").exists()


async def test_bytes_past_the_quota_are_refused_with_507(
    start_service: object,
) -> None:
    service: RunningService = await start_service(storage_quota_bytes=200_000)  # type: ignore[operator]
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        from tests.support.http import TEST_PASSWORD

        auth = await http.post("/api/auth", json={"password": TEST_PASSWORD})
        http.headers["Authorization"] = f"Bearer {auth.json()['token']}"
        assert (await declare(http, 10_000_000)).status_code == 507


async def test_an_upload_left_past_its_expiry_is_gone_and_each_patch_moves_its_expiry(
    authed: httpx.AsyncClient, wall_clock: WallClock, config: Config
) -> None:
    ttl_s = config.resumable_upload_ttl_s
    declared = await declare(authed, 100)
    location = declared.headers["Location"]
    assert declared.headers["Upload-Expires"] == http_date(wall_clock.value + ttl_s)
    wall_clock.advance(ttl_s - 1)
    moved = await patch(authed, location, 0, b"x" * 10)  # bytes arrive: kept longer
    assert moved.headers["Upload-Expires"] == http_date(wall_clock.value + ttl_s)
    wall_clock.advance(ttl_s - 1)
    assert await offset_of(authed, location) == 10
    wall_clock.advance(2)
    for gone in (await authed.head(location, headers=TUS), await patch(authed, location, 10, b"x")):
        assert gone.status_code == 404


async def test_an_upload_whose_bytes_vanished_is_dropped_never_filled_with_zeros(
    service: RunningService, authed: httpx.AsyncClient
) -> None:
    """Bytes removed under a live row (by hand, or an expiry racing a late PATCH): the
    next PATCH, or the job that takes the upload, says so and drops the upload."""
    paths = service.state.paths
    half = (await declare(authed, 20)).headers["Location"]
    whole = (await declare(authed, 10)).headers["Location"]
    assert (await patch(authed, half, 0, b"a" * 10)).status_code == 204
    assert (await patch(authed, whole, 0, b"a" * 10)).status_code == 204
    for location in (half, whole):
        await trio.Path(paths.resumable_upload(upload_id(location))).unlink()
    assert (await patch(authed, half, 10, b"b" * 10)).status_code == 404
    refused = await authed.post("/api/jobs", json={"uploads": [upload_id(whole)]})
    assert refused.status_code == 400
    assert refused.json()["error"] == "The bytes of “clip.mp4” are gone; upload it again."
    for location in (half, whole):
        assert (await authed.head(location, headers=TUS)).status_code == 404
