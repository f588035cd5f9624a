"""Uploads when the bytes live in a bucket: kept there before the job exists, and a bucket
that refuses them is a clear 503 that leaves nothing behind, in the bucket or on disk."""

from __future__ import annotations

import httpx
import pytest

from refresher.config import Config
from tests.support.clips import Clips
from tests.support.http import TEST_PASSWORD, StartService, upload
from tests.support.jobs import leftovers
from tests.support.s3 import S3Server
from tests.support.throttle import throttled
from web.routes.uploads import STORAGE_UNREACHABLE
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
