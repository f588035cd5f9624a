"""One variation over real HTTP: for a player and a download, resumable, leased."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Any

import av
import httpx
import pytest
import trio

from refresher.jobs import records
from tests.support.http import finished, upload, wait_for_job
from tests.support.jobs import lease_count, make_finished_job, make_unfinished_job, wait_for_leases
from tests.support.store import sql
from wiring.service import RunningService

# A variation is streamed the same way from the data directory and from a bucket.
pytestmark = pytest.mark.both_blob_stores

# One video of 1 s in 2 variations: a few seconds of FFmpeg on a small machine.
PROCESSING_TIMEOUT_S = 120


def _larger_than_socket_buffers() -> int:
    """A size that cannot sit whole in a loopback connection's socket buffers: the most
    the kernel lets TCP's receive and send buffers grow to, and 8 MiB more. A variation
    this big is still streaming, holding its lease, while the client reads slowly."""
    most = sum(
        int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
        for name in ("tcp_rmem", "tcp_wmem")
    )
    return most + 8 * 1024 * 1024


LARGER_THAN_SOCKET_BUFFERS = _larger_than_socket_buffers()


@pytest.fixture
async def anonymous(service: RunningService) -> AsyncIterator[httpx.AsyncClient]:
    """A client without any header, like a `<video>` element."""
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        yield http


async def outputs_of(authed: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    detail = (await authed.get(f"/api/jobs/{job_id}")).json()
    return [output for file in detail["files"] for output in file["outputs"]]


async def stored_bytes(service: RunningService, job_id: str, output_id: str) -> bytes:
    job = await service.state.db.read(lambda conn: records.require_job(conn, job_id))
    (output,) = [out for out in job.outputs if out.id == output_id]
    blobs = service.state.lifecycle.blobs
    return await trio.to_thread.run_sync(blobs.load, service.state.paths.absolute(output.path))


async def no_leases(service: RunningService) -> None:
    await wait_for_leases(service.state, 0)


async def test_a_real_variation_plays_from_its_link_as_stored(
    service: RunningService, authed: httpx.AsyncClient, anonymous: httpx.AsyncClient, clips: Any
) -> None:
    created = await upload(authed, [clips.mp4], variations="2")
    job_id = created.json()["jobId"]
    await wait_for_job(authed, job_id, finished, timeout_s=PROCESSING_TIMEOUT_S)
    outputs = await outputs_of(authed, job_id)
    assert len(outputs) == 2
    for output in outputs:
        response = await anonymous.get(output["url"])
        assert response.status_code == 200
        assert response.content == await stored_bytes(service, job_id, output["id"])
        assert int(response.headers["content-length"]) == output["fileSize"]
        with av.open(io.BytesIO(response.content)) as container:
            frames = sum(1 for _frame in container.decode(video=0))
        assert frames >= 20  # 1 s at 25 frames per second, give or take the variation's cut
        # A player's seek: the tail as a range, then the rest, make the same bytes.
        size = output["fileSize"]
        tail = await anonymous.get(output["url"], headers={"Range": f"bytes={size // 2}-"})
        head = await anonymous.get(output["url"], headers={"Range": f"bytes=0-{size // 2 - 1}"})
        assert head.content + tail.content == response.content
        assert output["effects"]  # what the manifest records of it
        still = await anonymous.get(output["stillUrl"])
        assert (still.status_code, still.headers["content-type"]) == (200, "image/jpeg")
        assert still.content.startswith(b"\xff\xd8")
    detail = (await authed.get(f"/api/jobs/{job_id}")).json()
    for url in (detail["thumbnailUrl"], detail["files"][0]["stillUrl"]):
        image = await anonymous.get(url)
        assert image.status_code == 200, url
        cache = {part.strip() for part in image.headers["cache-control"].split(",")}
        assert cache == {"private", "max-age=3600"}
    await no_leases(service)


async def test_headers_say_what_it_is_and_how_to_cache_it(
    service: RunningService, authed: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    job_id = await make_finished_job(
        service.state.db, service.state.paths, blobs=service.state.lifecycle.blobs, size=5000
    )
    output = (await outputs_of(authed, job_id))[0]
    response = await anonymous.get(output["url"])
    assert response.status_code == 200
    headers = response.headers
    assert headers["content-type"] == "video/mp4"
    assert headers["content-length"] == "5000"
    assert headers["accept-ranges"] == "bytes"
    assert headers["etag"].startswith('"')
    assert headers["last-modified"] == "Fri, 15 Jan 2027 08:00:00 GMT"  # its created_at
    assert headers["cache-control"] == "private, no-transform"
    assert headers["content-disposition"] == (
        "inline; filename=\"ad_var1.mp4\"; filename*=UTF-8''ad_var1.mp4"
    )
    assert response.content == await stored_bytes(service, job_id, output["id"])
    again = await authed.get(f"/api/jobs/{job_id}/outputs/{output['id']}")  # the bearer way
    assert again.content == response.content
    assert again.headers["etag"] == headers["etag"]


async def test_download_link_saves_it_under_its_name_in_the_zip(
    service: RunningService, authed: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    sources = ["ad.mp4", "ad.mp4", "Résumé: final?.mov"]
    job_id = await make_finished_job(
        service.state.db, service.state.paths, blobs=service.state.lifecycle.blobs, sources=sources
    )
    detail = (await authed.get(f"/api/jobs/{job_id}")).json()
    archive = zipfile.ZipFile(io.BytesIO((await anonymous.get(detail["downloadUrl"])).content))
    in_zip = [name for name in archive.namelist() if name != "manifest.json"]
    outputs = [output for file in detail["files"] for output in file["outputs"]]
    assert [output["name"] for output in outputs] == [PurePosixPath(name).name for name in in_zip]
    assert outputs[2]["name"] == "ad (2)_var1.mp4"
    for output, entry in zip(outputs, in_zip, strict=True):
        assert output["downloadUrl"] == output["url"] + "&download=1"
        response = await anonymous.get(output["downloadUrl"])
        assert response.status_code == 200
        disposition = response.headers["content-disposition"]
        assert disposition.startswith(f'attachment; filename="{output["name"]}"'.replace("é", "?"))
        assert response.content == archive.read(entry)
    assert outputs[4]["name"] == "Résumé_ final__var1.mp4"
    disposition = (await anonymous.head(outputs[4]["downloadUrl"])).headers["content-disposition"]
    assert disposition == (
        'attachment; filename="R?sum?_ final__var1.mp4"; '
        "filename*=UTF-8''R%C3%A9sum%C3%A9_%20final__var1.mp4"
    )


async def test_the_detail_shows_each_variation_with_its_effects_and_links(
    service: RunningService, authed: httpx.AsyncClient
) -> None:
    job_id = await make_finished_job(
        service.state.db, service.state.paths, blobs=service.state.lifecycle.blobs, variations=2
    )
    outputs = await outputs_of(authed, job_id)
    assert [
        (output["variationIndex"], output["fileSize"], output["effects"], output["name"])
        for output in outputs
    ] == [(1, 4096, {"rotation": 1}, "ad_var1.mp4"), (2, 4096, {"rotation": 2}, "ad_var2.mp4")]
    for output in outputs:
        assert output["url"].startswith(f"/api/jobs/{job_id}/outputs/{output['id']}?token=")


async def test_ranges_validators_and_head(
    service: RunningService, authed: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    job_id = await make_finished_job(
        service.state.db,
        service.state.paths,
        blobs=service.state.lifecycle.blobs,
        variations=1,
        size=50_000,
    )
    url = (await outputs_of(authed, job_id))[0]["url"]
    full = await anonymous.get(url)
    whole, etag, modified = full.content, full.headers["etag"], full.headers["last-modified"]
    size = len(whole)

    part = await anonymous.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    assert part.headers["content-length"] == "100"
    assert part.content == whole[100:200]
    tail = await anonymous.get(url, headers={"Range": "bytes=-10", "If-Range": etag})
    assert (tail.status_code, tail.content) == (206, whole[-10:])
    by_date = await anonymous.get(url, headers={"Range": "bytes=5-", "If-Range": modified})
    assert (by_date.status_code, by_date.content) == (206, whole[5:])
    changed = await anonymous.get(url, headers={"Range": "bytes=0-9", "If-Range": '"old"'})
    assert (changed.status_code, changed.content) == (200, whole)

    beyond = await anonymous.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"
    assert beyond.json() == {"error": f"The video is {size} bytes; that range lies beyond it."}
    for precondition in (
        {"If-Match": '"old"'},
        {"If-Unmodified-Since": "Thu, 01 Jan 2026 00:00:00 GMT"},
    ):
        moved = await anonymous.get(url, headers={"Range": "bytes=10-", **precondition})
        assert moved.status_code == 412
        assert moved.json() == {"error": "The video has changed since this download began."}
    resumed = await anonymous.get(
        url, headers={"Range": "bytes=10-", "If-Match": etag, "If-Unmodified-Since": modified}
    )
    assert (resumed.status_code, resumed.content) == (206, whole[10:])

    blobs, folder = service.state.lifecycle.blobs, service.state.paths.job_dir(job_id)
    for name in blobs.entries(folder):
        blobs.remove(folder / name)  # HEAD must not need it
    head = await anonymous.head(url)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(size)
    assert head.headers["etag"] == etag
    ranged_head = await anonymous.head(url, headers={"Range": "bytes=0-99"})
    assert ranged_head.status_code == 206
    assert ranged_head.headers["content-length"] == "100"
    await no_leases(service)


async def large_variation(service: RunningService, authed: httpx.AsyncClient) -> tuple[str, str]:
    """A finished job of one variation larger than the socket buffers: its id and the
    variation's signed player link."""
    job_id = await make_finished_job(
        service.state.db,
        service.state.paths,
        blobs=service.state.lifecycle.blobs,
        variations=1,
        size=LARGER_THAN_SOCKET_BUFFERS,
    )
    return job_id, (await outputs_of(authed, job_id))[0]["url"]


async def test_a_player_holds_the_job_until_its_stream_ends(
    service: RunningService, authed: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    job_id, url = await large_variation(service, authed)
    async with anonymous.stream("GET", url) as response:
        stream = response.aiter_raw()
        received = len(await stream.__anext__())
        assert await lease_count(service.state) == 1
        delete = await authed.delete(f"/api/jobs/{job_id}")
        assert delete.status_code == 409
        assert delete.json() == {
            "error": "The job is being downloaded right now; try again when it ends."
        }
        async for chunk in stream:
            received += len(chunk)
        assert received == LARGER_THAN_SOCKET_BUFFERS
    await no_leases(service)
    assert (await authed.delete(f"/api/jobs/{job_id}")).status_code == 200
    assert (await anonymous.get(url)).status_code == 404


async def test_a_player_that_goes_away_releases_its_lease(
    service: RunningService, authed: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    _job_id, url = await large_variation(service, authed)
    async with anonymous.stream("GET", url) as response:
        # Held: an iterator dropped is finalized, which closes the response early.
        stream = response.aiter_raw()
        await stream.__anext__()
        assert await lease_count(service.state) == 1
    await no_leases(service)


@pytest.mark.parametrize(
    ("setup", "status", "message"),
    [
        ("unknown job", 404, "There is no such job; it may have been deleted."),
        ("unknown output", 404, "This job has no such variation; it may have been removed."),
        ("another job's output", 404, "This job has no such variation; it may have been removed."),
        ("expired", 410, "This job's results have expired or were removed."),
        ("evicted", 410, "This job's results have expired or were removed."),
    ],
)
async def test_refusals(
    service: RunningService, authed: httpx.AsyncClient, setup: str, status: int, message: str
) -> None:
    db, paths, blobs = service.state.db, service.state.paths, service.state.lifecycle.blobs
    job_id = await make_finished_job(db, paths, blobs=blobs)
    output_id = (await outputs_of(authed, job_id))[0]["id"]
    if setup == "unknown job":
        job_id = "no-such-job"
    elif setup == "unknown output":
        output_id = "no-such-output"
    elif setup == "another job's output":
        job_id = await make_finished_job(db, paths, blobs=blobs)
    else:
        await db.write(
            lambda conn: sql(conn, "UPDATE jobs SET status = :s WHERE id = :id", s=setup, id=job_id)
        )
    for method in ("GET", "HEAD"):
        response = await authed.request(method, f"/api/jobs/{job_id}/outputs/{output_id}")
        assert response.status_code == status
        if method == "GET":
            assert response.json() == {"error": message}
    assert await lease_count(service.state) == 0


async def test_a_variation_plays_as_soon_as_it_is_recorded_while_its_job_runs(
    service: RunningService, authed: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    """Recorded means whole and kept where it stays: the first variation is there for
    the team before the job's last one is made."""
    db, paths, blobs = service.state.db, service.state.paths, service.state.lifecycle.blobs
    job_id = await make_unfinished_job(db, paths, processing=True, output_bytes=100)
    # Kept where the batch maker keeps what it records (a bucket, with one).
    [made] = await trio.to_thread.run_sync(lambda: list(paths.job_dir(job_id).glob("*.mp4")))
    await trio.to_thread.run_sync(blobs.keep, made)
    [output] = await outputs_of(authed, job_id)
    assert output["url"]
    assert output["downloadUrl"] == f"{output['url']}&download=1"
    response = await anonymous.get(output["url"])
    assert response.status_code == 200
    assert len(response.content) == output["fileSize"] == 100
    assert (await anonymous.head(output["downloadUrl"])).status_code == 200
    await no_leases(service)
    # The job's ZIP waits for the job's end.
    assert (await authed.get(f"/api/jobs/{job_id}")).json()["downloadUrl"] is None


async def test_a_lease_refused_as_the_job_is_removed_is_410(
    service: RunningService, authed: httpx.AsyncClient
) -> None:
    job_id = await make_finished_job(
        service.state.db, service.state.paths, blobs=service.state.lifecycle.blobs
    )
    output_id = (await outputs_of(authed, job_id))[0]["id"]
    # Reserved for removal (by the janitor, say) between the route's look and its lease.
    assert await service.state.tracker.reserve_for_deletion(job_id, reason="expired")
    response = await authed.get(f"/api/jobs/{job_id}/outputs/{output_id}")
    assert response.status_code == 410
    assert response.json() == {"error": "This job's results are being removed."}
    # Nothing was removed by the refusal: the job is as it was.
    assert (await authed.get(f"/api/jobs/{job_id}")).json()["status"] == "completed"


@pytest.mark.parametrize("odd", ["%00", "%ff%fe", "%E2%98%83", "a" * 5000, "%2e%2e"])
async def test_odd_ids_are_404_json(authed: httpx.AsyncClient, odd: str) -> None:
    for path in (f"/api/jobs/{odd}/outputs/x", f"/api/jobs/x/outputs/{odd}"):
        with trio.fail_after(10):
            response = await authed.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
