"""The strength an upload asks for, and what the API shows of each variation's measures."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import trio

from refresher.config import Config
from tests.support.http import StartService, wait_for_job
from tests.support.jobs import leftovers


async def post(http: httpx.AsyncClient, clips: Any, **fields: str) -> httpx.Response:
    files = [("videos", ("ad.mp4", await trio.Path(clips.mp4).read_bytes(), "video/mp4"))]
    return await http.post("/api/jobs", files=files, data={"variations": "2", **fields})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"strength": "extreme"},
            r"^strength must be one of subtle, standard, strong; got “extreme”\.$",
        ),
        (
            {"strength": "strong", "mirror": "maybe"},
            r"^mirror must be true or false; got “maybe”\.$",
        ),
        ({"mirror": "true"}, r"^mirror applies only at the standard or strong strength\.$"),
    ],
)
async def test_bad_strength_fields_are_refused(
    authed: httpx.AsyncClient, clips: Any, config: Config, fields: dict[str, str], message: str
) -> None:
    response = await post(authed, clips, **fields)
    assert response.status_code == 400, response.text
    assert re.match(message, response.json()["error"]), response.json()
    assert (await authed.get("/api/jobs")).json() == []
    assert leftovers(config) == []


async def test_the_configured_default_and_a_measured_variation(
    start_service: StartService, config: Config, clips: Any
) -> None:
    service = await start_service(default_strength="standard")
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        assert (await http.get("/api/config")).json()["defaultStrength"] == "standard"
        login = await http.post("/api/auth", json={"password": config.auth_password})
        http.headers["Authorization"] = f"Bearer {login.json()['token']}"
        response = await post(http, clips, mirror="on")
        assert response.status_code == 202, response.text
        assert (response.json()["strength"], response.json()["mirror"]) == ("standard", True)
        job_id = response.json()["jobId"]
        detail = await wait_for_job(http, job_id, lambda d: d["status"] == "completed")
        assert (detail["strength"], detail["mirror"]) == ("standard", True)
        [file] = detail["files"]
        outputs = file["outputs"]
        assert len(outputs) == 2
        for output in outputs:
            measured = output["measured"]
            assert set(measured) == {"pdqMedian", "pdqMatchedShare", "ssim", "nearestSiblingPdq"}
            assert 0 <= measured["pdqMedian"] <= 256
            assert 0 <= measured["pdqMatchedShare"] <= 1
            assert 0 < measured["ssim"] <= 1
            assert measured["nearestSiblingPdq"] is not None
            assert output["verdict"] in {"distinct", "matches-source", "matches-sibling"}
            assert 1 <= output["attempts"] <= 4
            assert output["effects"]["zoom"] > 1
        # Stills: the signed link alone opens them; not without it, not another job's.
        signed = file["stillUrl"]
        assert signed.startswith(f"/api/jobs/{job_id}/stills/source-{file['id']}?token=")
        bare = httpx.AsyncClient(base_url=service.url, timeout=30)
        async with bare:
            opened = await bare.get(signed)
            assert opened.status_code == 200
            assert opened.headers["content-type"] == "image/jpeg"
            assert "private" in opened.headers["cache-control"]
            unsigned = signed.split("?")[0]
            assert (await bare.get(unsigned)).status_code == 401
            thumbnail_token = detail["thumbnailUrl"].split("token=")[1]
            wrong = await bare.get(f"{unsigned}?token={thumbnail_token}")
            assert wrong.status_code in (401, 403)
        missing = await http.get(f"/api/jobs/{job_id}/stills/nothing-here")
        assert missing.status_code == 404
        assert "error" in missing.json()
        # Deleting the job removes the stills with it.
        assert (await http.delete(f"/api/jobs/{job_id}")).status_code == 200
        assert (await http.get(signed)).status_code in (404, 410)
