"""The ZIP download over real HTTP: bytes, headers, ranges, resume, leases."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import zipfile
from pathlib import Path

import httpx
import pytest
import trio

from tests.support.http import StartService
from tests.support.jobs import lease_count, make_finished_job, output_bytes, wait_for_leases
from tests.support.store import sql
from tests.support.zips import check_with_all_tools, extract_with_all_tools
from wiring.service import RunningService

# The job lifecycle, leases, removal and downloads hold on either store, and with the
# bytes in a bucket.
pytestmark = [pytest.mark.both_stores, pytest.mark.both_blob_stores]

# A job whose ZIP cannot sit whole in the loopback's socket buffers (several MB each way):
# its download is still running, holding its lease, while the client reads slowly.
LARGER_THAN_SOCKET_BUFFERS = {"variations": 8, "size": 8 * 1024 * 1024}


async def finished_job(service: RunningService, **options: object) -> str:
    state = service.state
    assert state is not None
    return await make_finished_job(
        state.db,
        state.paths,
        blobs=state.lifecycle.blobs,
        **options,  # type: ignore[arg-type]
    )


async def test_zip_holds_every_variation_in_folders_by_source(
    service: RunningService, authed: httpx.AsyncClient, tmp_path: Path
) -> None:
    job_id = await finished_job(
        service, sources=["ad.mp4", "ad.mp4", "Résumé: final?.mov"], variations=2
    )
    response = await authed.get(f"/api/jobs/{job_id}/download")
    assert response.status_code == 200
    headers = response.headers
    assert headers["content-type"] == "application/zip"
    assert int(headers["content-length"]) == len(response.content)
    assert headers["accept-ranges"] == "bytes"
    assert headers["etag"].startswith('"')
    assert "last-modified" in headers
    assert headers["content-disposition"].startswith('attachment; filename="video-refresher-')
    archive = tmp_path / "job.zip"
    archive.write_bytes(response.content)
    names = ["manifest.json"] + [
        f"{folder}/{folder}_var{index}.mp4"
        for folder in ("ad", "ad (2)", "Résumé_ final_")
        for index in (1, 2)
    ]
    check_with_all_tools(archive, names)
    detail = (await authed.get(f"/api/jobs/{job_id}")).json()
    on_disk = output_bytes(service.state.paths, job_id, service.state.lifecycle.blobs)
    with zipfile.ZipFile(archive) as opened:
        manifest = json.loads(opened.read("manifest.json"))
        assert manifest["jobId"] == job_id
        assert [v["file"] for v in manifest["variations"]] == names[1:]
        assert manifest["variations"][0]["effects"] == {"rotation": 1}
        for file, folder in zip(detail["files"], ("ad", "ad (2)", "Résumé_ final_"), strict=True):
            for index in (1, 2):
                entry = opened.read(f"{folder}/{folder}_var{index}.mp4")
                assert entry == on_disk[f"{file['id']}_var{index}.mp4"]
    await wait_for_leases(service.state, 0)


HOSTILE_NAMES = [
    "manifest.json.mp4",  # would be a folder beside the manifest file of that name
    "MANIFEST.JSON.mov",
    "CON.mp4",  # Windows devices, in any case, with or without more after a dot
    "con.mov",
    "Lpt9.mp4",
    "aux.backup.mp4",
    "COM1 .mp4",
    "nul",
    "trailing dots....mp4",
    "trailing space .mp4",
]


async def test_archive_names_extract_everywhere(
    service: RunningService, authed: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Every tool extracts every entry of an archive whose sources have names that are
    reserved, devices on Windows, or end in dots or spaces; no folder shares a name with
    a file, whatever the case."""
    job_id = await finished_job(service, sources=HOSTILE_NAMES, variations=1)
    archive = tmp_path / "job.zip"
    archive.write_bytes((await authed.get(f"/api/jobs/{job_id}/download")).content)
    with zipfile.ZipFile(archive) as opened:
        names = opened.namelist()
    folders = [name.split("/", 1)[0] for name in names if "/" in name]
    assert names[0] == "manifest.json"
    assert "manifest.json" not in {folder.casefold() for folder in folders}
    assert len({folder.casefold() for folder in folders}) == len(HOSTILE_NAMES)
    devices = {
        "con",
        "prn",
        "aux",
        "nul",
        *(f"{p}{d}" for p in ("com", "lpt") for d in "0123456789"),
    }
    for name in names:
        for part in name.split("/"):
            assert part.split(".", 1)[0].rstrip(" ").casefold() not in devices, name
            assert part == part.rstrip(". "), name
    check_with_all_tools(archive, names)
    extracted = extract_with_all_tools(archive, tmp_path / "out")
    for tool, files in extracted.items():
        assert files == sorted(names), tool


async def test_head_reads_no_file_and_takes_no_lease(
    service: RunningService, authed: httpx.AsyncClient
) -> None:
    job_id = await finished_job(service)
    full = await authed.get(f"/api/jobs/{job_id}/download")
    blobs, folder = service.state.lifecycle.blobs, service.state.paths.job_dir(job_id)
    for name in blobs.entries(folder):
        blobs.remove(folder / name)  # HEAD must not need them
    head = await authed.head(f"/api/jobs/{job_id}/download")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(full.content))
    assert head.headers["etag"] == full.headers["etag"]
    await wait_for_leases(service.state, 0)


async def test_ranges_return_exact_slices(
    service: RunningService, authed: httpx.AsyncClient
) -> None:
    job_id = await finished_job(service, sources=["a.mp4", "b.mp4"], variations=3, size=50_000)
    url = f"/api/jobs/{job_id}/download"
    full = await authed.get(url)
    whole, size, etag = full.content, len(full.content), full.headers["etag"]
    rng = random.Random(11)
    for _ in range(40):
        start = rng.randrange(0, size)
        end = rng.randrange(start, size)
        part = await authed.get(url, headers={"Range": f"bytes={start}-{end}"})
        assert part.status_code == 206
        assert part.headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert part.content == whole[start : end + 1]
    tail = await authed.get(url, headers={"Range": "bytes=-100", "If-Range": etag})
    assert tail.status_code == 206
    assert tail.content == whole[-100:]
    changed = await authed.get(url, headers={"Range": "bytes=0-9", "If-Range": '"old"'})
    assert changed.status_code == 200
    assert changed.content == whole
    beyond = await authed.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"
    moved = await authed.get(url, headers={"Range": "bytes=10-", "If-Match": '"old"'})
    assert moved.status_code == 412
    firefox = await authed.get(
        url,
        headers={
            "Range": "bytes=10-",
            "If-Match": etag,
            "If-Unmodified-Since": full.headers["last-modified"],
        },
    )
    assert firefox.status_code == 206
    assert firefox.content == whole[10:]
    await wait_for_leases(service.state, 0)


async def test_signed_link_downloads_without_a_header(
    service: RunningService, authed: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    job_id = await finished_job(service)
    other = await finished_job(service)
    detail = (await authed.get(f"/api/jobs/{job_id}")).json()
    link = detail["downloadUrl"]
    async with httpx.AsyncClient(base_url=service.url) as anonymous:
        response = await anonymous.get(link)
        assert response.status_code == 200
        assert len(response.content) == detail["downloadBytes"]
        stolen = link.replace(job_id, other)
        assert (await anonymous.get(stolen)).status_code == 401
        assert (await anonymous.get(f"/api/jobs/{job_id}/download")).status_code == 401


async def test_curl_resumes_an_interrupted_download(
    service: RunningService, authed: httpx.AsyncClient, tmp_path: Path
) -> None:
    job_id = await finished_job(service, variations=3, size=300_000)
    url = service.url + (await authed.get(f"/api/jobs/{job_id}")).json()["downloadUrl"]
    whole = (await authed.get(f"/api/jobs/{job_id}/download")).content
    target = tmp_path / "resumed.zip"
    # The first attempt stops after 123 456 bytes, as a dropped connection would.
    await trio.run_process(["curl", "-sS", "-r", "0-123455", "-o", str(target), url])
    assert target.stat().st_size == 123_456
    await trio.run_process(["curl", "-sS", "-C", "-", "-o", str(target), url])
    assert target.read_bytes() == whole


@pytest.mark.parametrize(
    ("setup", "status", "message"),
    [
        ("unknown", 404, "There is no such job; it may have been deleted."),
        ("queued", 404, "This job has no results to download yet."),
        ("expired", 410, "This job's results have expired or were removed."),
    ],
)
async def test_download_refusals(
    service: RunningService, authed: httpx.AsyncClient, setup: str, status: int, message: str
) -> None:
    job_id = "no-such-job"
    if setup != "unknown":
        job_id = await finished_job(service)
        await service.state.db.write(
            lambda conn: sql(conn, "UPDATE jobs SET status = :s WHERE id = :id", s=setup, id=job_id)
        )
    response = await authed.get(f"/api/jobs/{job_id}/download")
    assert response.status_code == status
    assert response.json() == {"error": message}


@pytest.mark.parametrize("kill_tracker", [False, True])
async def test_cleanup_leaves_a_job_alone_while_it_downloads(
    service: RunningService, authed: httpx.AsyncClient, kill_tracker: bool
) -> None:
    job_id = await finished_job(service, **LARGER_THAN_SOCKET_BUFFERS)
    tracker = service.state.tracker
    async with authed.stream("GET", f"/api/jobs/{job_id}/download") as response:
        stream = response.aiter_raw()
        received = len(await stream.__anext__())
        if kill_tracker:
            service.state.supervisor.kill("download_tracker")
        assert not await tracker.reserve_for_deletion(job_id, reason="expired")
        delete = await authed.delete(f"/api/jobs/{job_id}")
        assert delete.status_code == 409
        assert delete.json() == {
            "error": "The job is being downloaded right now; try again when it ends."
        }
        async for chunk in stream:
            received += len(chunk)
        assert received == int(response.headers["content-length"])
    await wait_for_leases(service.state, 0)
    assert (await authed.delete(f"/api/jobs/{job_id}")).status_code == 200
    assert not service.state.lifecycle.blobs.entries(service.state.paths.job_dir(job_id))


async def test_client_that_goes_away_releases_its_lease(
    service: RunningService, authed: httpx.AsyncClient
) -> None:
    job_id = await finished_job(service, **LARGER_THAN_SOCKET_BUFFERS)
    async with authed.stream("GET", f"/api/jobs/{job_id}/download") as response:
        # Held: an iterator dropped is finalized, which closes the response early.
        stream = response.aiter_raw()
        await stream.__anext__()
        assert await lease_count(service.state) == 1
    await wait_for_leases(service.state, 0)


async def test_client_that_stops_reading_is_cut_and_releases_its_lease(
    start_service: StartService,
) -> None:
    service = await start_service(download_stall_s=0.5)
    job_id = await finished_job(service, variations=8, size=8 * 1024 * 1024)
    host, port = service.url.removeprefix("http://").split(":")
    async with httpx.AsyncClient(base_url=service.url) as http:
        password = service.state.config.auth_password
        token = (await http.post("/api/auth", json={"password": password})).json()["token"]
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, int(port)))
    request = (
        f"GET /api/jobs/{job_id}/download HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    )
    await sock.send(request.encode())
    await wait_for_leases(service.state, 1)
    # Read nothing more: the server's sends stall and it must give up.
    await wait_for_leases(service.state, 0)
    sock.close()


async def test_a_trickling_reader_is_cut_and_its_job_can_be_deleted(
    start_service: StartService,
) -> None:
    """A client that reads, but a trickle, keeps acknowledging: no kernel timeout ever
    cuts it. It must not pin its job: below the minimum rate it is cut within about
    DOWNLOAD_STALL_S, its lease goes, and DELETE (409 meanwhile) goes through."""
    service = await start_service(download_stall_s=2.0, download_min_rate_bytes_s=1024 * 1024)
    job_id = await finished_job(service, variations=4, size=8 * 1024 * 1024)
    host, port = service.url.removeprefix("http://").split(":")
    async with httpx.AsyncClient(base_url=service.url) as http:
        password = service.state.config.auth_password
        token = (await http.post("/api/auth", json={"password": password})).json()["token"]
        http.headers["Authorization"] = f"Bearer {token}"
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        await sock.connect((host, int(port)))
        request = (
            f"GET /api/jobs/{job_id}/download HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        )
        await sock.send(request.encode())
        await wait_for_leases(service.state, 1)
        assert (await http.delete(f"/api/jobs/{job_id}")).status_code == 409
        received, began = 0, trio.current_time()
        # About 80 KB/s, read steadily, the window opening every 0.1 s (so the kernel's
        # timeout for unacknowledged data never fires): far below the 1 MiB/s asked for.
        while trio.current_time() - began < 20:
            data = await sock.recv(8192)
            received += len(data)
            if not data or await lease_count(service.state) == 0:
                break
            await trio.sleep(0.1)
        cut_after_s = trio.current_time() - began
        sock.close()
        await wait_for_leases(service.state, 0)
        assert (await http.delete(f"/api/jobs/{job_id}")).status_code == 200
    assert received < 32 * 1024 * 1024  # cut long before the end
    assert cut_after_s < 15, cut_after_s


def test_zip_tools_are_installed() -> None:
    for tool in (["unzip", "-v"], ["7z"], ["bsdtar", "--version"], ["curl", "--version"]):
        assert subprocess.run(tool, capture_output=True).returncode == 0, tool
