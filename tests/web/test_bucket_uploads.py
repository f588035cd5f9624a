"""Uploads when the bytes live in a bucket: kept there before the job exists, and a bucket
that refuses them is a clear 503 that leaves nothing behind, in the bucket or on disk."""

from __future__ import annotations

import httpx
import pytest

from refresher.config import Config
from refresher.storage.paths import Paths
from refresher.store import Database
from tests.support.clips import Clips
from tests.support.http import TEST_PASSWORD, StartService, upload
from tests.support.jobs import leftovers, make_finished_job, output_bytes
from tests.support.s3 import S3Server
from tests.support.throttle import throttled
from web.intake import STORAGE_UNREACHABLE
from wiring.service import RunningService


def objects(server: S3Server, bucket: str) -> list[str]:
    listing = server.client().list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listing.get("Contents", [])]


@pytest.mark.parametrize("blobs_kind", ["s3"], indirect=True)
async def test_an_upload_goes_to_the_bucket_and_its_scratch_copy_goes(
    service: RunningService, authed: httpx.AsyncClient, clips: Clips, config: Config,
    s3_server: S3Server, storage_url: str,
) -> None:  # fmt: skip
    bucket = storage_url.removeprefix("s3://").split("/")[0]
    response = await upload(authed, [clips.mp4, clips.mov])
    assert response.status_code == 202, response.text
    job_id = response.json()["jobId"]
    kept = [key for key in objects(s3_server, bucket) if f"/uploads/{job_id}/" in key]
    assert len(kept) == 2 or any(f"/jobs/{job_id}/" in k for k in objects(s3_server, bucket))
    assert [name for name in leftovers(config) if name.endswith(".upload")] == []


@pytest.mark.parametrize("blobs_kind", ["s3"], indirect=True)
async def test_an_upload_the_bucket_refuses_is_503_and_leaves_nothing(
    start_service: StartService, clips: Clips, config: Config, s3_server: S3Server,
    storage_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    async with throttled(s3_server.endpoint, bytes_per_s=1e9) as relay:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{relay.port}")
        service = await start_service()
    # The relay is gone: the storage cannot be reached any more.
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        auth = await http.post("/api/auth", json={"password": TEST_PASSWORD})
        http.headers["Authorization"] = f"Bearer {auth.json()['token']}"
        response = await upload(http, [clips.mp4])
        assert response.status_code == 503
        assert response.json() == {"error": STORAGE_UNREACHABLE}
        assert [name for name in leftovers(config) if name.endswith(".upload")] == []
        assert (await http.get("/api/jobs")).json() == []


async def test_results_kept_on_the_volume_move_to_the_bucket_when_it_is_set(
    start_service: StartService, config: Config, s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """An operator sets STORAGE_URL on a service that kept its results on its volume: the
    finished jobs stay whole, now from the bucket (not lost to reconciliation)."""
    paths = Paths(config.data_dir)
    paths.create()
    db = await Database.open(paths.database)  # what the earlier version left on the volume
    job_id = await make_finished_job(db, paths, variations=3)
    await db.aclose()
    wanted = output_bytes(paths, job_id)
    bucket = s3_server.fresh_bucket()
    try:
        for name, value in s3_server.env(bucket, prefix="results").items():
            monkeypatch.setenv(name, value)
        service = await start_service(storage_url=f"s3://{bucket}/results")
        blobs = service.state.lifecycle.blobs
        assert blobs.remote
        assert output_bytes(paths, job_id, blobs) == wanted
        assert list(paths.job_dir(job_id).glob("*.mp4")) == []
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
            auth = await http.post("/api/auth", json={"password": TEST_PASSWORD})
            http.headers["Authorization"] = f"Bearer {auth.json()['token']}"
            detail = (await http.get(f"/api/jobs/{job_id}")).json()
            assert detail["status"] == "completed"
            download = await http.get(f"/api/jobs/{job_id}/download")
            assert download.status_code == 200
            assert len(download.content) == detail["downloadBytes"]
    finally:
        s3_server.drop_bucket(bucket)
