"""Killed mid-upload into the bucket: a worker while it uploads an output, a web process
while it uploads a source. Uploads to the bucket go through a relay that paces them, so
each kill lands while the upload is under way. After the janitor's next pass, no object
is left that a row does not account for, and no unfinished upload."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from refresher.media.ffmpeg import find_ffmpeg
from tests.support.clips import Clips
from tests.support.clock import wait_for
from tests.support.cluster import Cluster, running_cluster
from tests.support.http import finished, upload, wait_for_job
from tests.support.process import ServiceProcess
from tests.support.s3 import S3Server
from tests.support.throttle import throttled

pytestmark = pytest.mark.slow

TIMEOUT_S = 120
PREFIX = "results"
# Fast enough for a test: a pass every half second, strays judged after a second.
JANITOR = {"JANITOR_INTERVAL_S": "0.5", "ORPHAN_GRACE_S": "1"}


@pytest.fixture
def bucket(s3_server: S3Server) -> Iterator[str]:
    name = s3_server.fresh_bucket()
    yield name
    s3_server.drop_bucket(name)


@pytest.fixture(scope="module")
def large_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid video of about 12 MB: its upload to the bucket goes in parts."""
    path = tmp_path_factory.mktemp("large") / "large.mp4"
    subprocess.run(
        [find_ffmpeg(None), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", "nullsrc=s=320x240:r=25,geq=random(1)*255:128:128",
         "-t", "4", "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0",
         "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip
    assert path.stat().st_size > 10 * 1024 * 1024, path.stat().st_size
    return path


def unaccounted(cluster: Cluster, server: S3Server, bucket: str) -> tuple[list[str], list[str]]:
    """Objects under the prefix that no row names, and unfinished uploads (blocking)."""
    named = {
        f"{PREFIX}/{path}"
        for (path,) in cluster.rows(
            """SELECT path FROM output_files UNION SELECT still_path FROM output_files
               UNION SELECT still_path FROM job_files UNION SELECT upload_path FROM job_files
               UNION SELECT thumbnail_path FROM jobs"""
        )
        if path is not None
    }
    client = server.client()
    objects = [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX)
        for item in page.get("Contents", [])
    ]
    unfinished = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return [key for key in objects if key not in named], [u["Key"] for u in unfinished]


async def passes_after(web: ServiceProcess, count: int) -> None:
    """Wait until `web` logs `count` more janitor passes than it has so far."""
    before = sum("janitor pass" in line for line in web.output)

    async def passed() -> bool:
        return sum("janitor pass" in line for line in web.output) >= before + count

    with trio.fail_after(TIMEOUT_S):
        await wait_for(passed, polls=10**6, step_s=0.1)


@contextlib.asynccontextmanager
async def login(web: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=web.url, timeout=60) as http:
        response = await http.post("/api/auth", json={"password": web.password})
        assert response.status_code == 200, response.text
        http.headers["Authorization"] = f"Bearer {response.json()['token']}"
        yield http


async def test_a_worker_killed_mid_upload_of_an_output_leaves_nothing_unaccounted(
    tmp_path: Path, postgres_url: str, clips: Clips, s3_server: S3Server, bucket: str
) -> None:
    async with throttled(s3_server.endpoint, bytes_per_s=256 * 1024) as relay:
        env = {**s3_server.env(bucket, prefix=PREFIX), **JANITOR,
               "AWS_ENDPOINT_URL": f"http://127.0.0.1:{relay.port}"}  # fmt: skip
        uploading = relay.watch(rf"PUT /{bucket}/{PREFIX}/jobs/\S+_var\d+_\w+\.mp4")
        async with (
            running_cluster(
                tmp_path / "data", postgres_url, webs=1, workers=2, separate=True, **env
            ) as cluster,
            login(cluster.webs[0]) as http,
        ):
            job_id = (await upload(http, [clips.long], variations="6")).json()["jobId"]
            with trio.fail_after(TIMEOUT_S):
                await uploading.wait()
            [victim] = [w for w in cluster.workers if any(job_id in x for x in w.output)]
            victim.process.send_signal(signal.SIGKILL)
            await victim.process.wait()
            job = await wait_for_job(http, job_id, finished, timeout_s=TIMEOUT_S)
            assert job["status"] == "completed", job
            assert len(job["files"][0]["outputs"]) == 6
            await passes_after(cluster.webs[0], 2)
            strays, unfinished = await trio.to_thread.run_sync(
                unaccounted, cluster, s3_server, bucket
            )
            assert strays == []
            assert unfinished == []
            download = await http.get(f"/api/jobs/{job_id}/download")
            assert download.status_code == 200


async def test_a_web_process_killed_mid_upload_of_a_source_leaves_nothing_behind(
    tmp_path: Path, postgres_url: str, s3_server: S3Server, bucket: str, large_clip: Path
) -> None:
    async with throttled(s3_server.endpoint, bytes_per_s=4 * 1024 * 1024) as relay:
        env = {**s3_server.env(bucket, prefix=PREFIX), **JANITOR,
               "AWS_ENDPOINT_URL": f"http://127.0.0.1:{relay.port}"}  # fmt: skip
        # The second part begins: the first is stored in the bucket, the upload unfinished.
        second_part = relay.watch(rf"PUT /{bucket}/{PREFIX}/uploads/\S+partNumber=2")
        async with running_cluster(
            tmp_path / "data", postgres_url, webs=2, workers=0, separate=True, **env
        ) as cluster:
            victim, survivor = cluster.webs
            async with login(victim) as http, trio.open_nursery() as nursery:

                async def send() -> None:
                    with contextlib.suppress(httpx.HTTPError):  # its process was killed
                        await upload(http, [large_clip], variations="2")

                nursery.start_soon(send)
                with trio.fail_after(TIMEOUT_S):
                    await second_part.wait()
                victim.process.send_signal(signal.SIGKILL)
                await victim.process.wait()
            spooled = list((cluster.dir_of[victim.process.pid] / "uploads").rglob("*"))
            assert spooled  # the dead process's own scratch copy is still there
            await passes_after(survivor, 3)
            strays, unfinished = await trio.to_thread.run_sync(
                unaccounted, cluster, s3_server, bucket
            )
            assert strays == []
            assert unfinished == []
            # The upload was caught unfinished, and the janitor ended it.
            assert any("abandoned_uploads=1" in line for line in survivor.output)
            assert await trio.to_thread.run_sync(cluster.rows, "SELECT id FROM jobs") == []
            # Started again in its own data directory, it clears its scratch copy.
            again = await cluster.start_web(cluster.dir_of[victim.process.pid])
            await passes_after(again, 2)
            left = cluster.dir_of[victim.process.pid] / "uploads"
            assert [p for p in left.rglob("*") if p.is_file()] == []
