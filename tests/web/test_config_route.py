"""`GET /api/config`: the limits the page checks before an upload, as configured."""

from __future__ import annotations

from typing import Any

import httpx

from refresher.config import Config
from refresher.media.effects import DESCRIPTIONS
from tests.support.http import StartService, upload

CHANGED = {
    "max_files": 3,
    "max_upload_bytes": 7_000_000,
    "max_variations": 2,  # below the default of 5: the default becomes 2
    "max_duration_s": 90.0,
    "max_long_side_px": 1920,
    "max_short_side_px": 1080,
    "max_fps": 60.0,
    "job_ttl_hours": 2.0,
}


def limits_of(config: Config) -> dict[str, Any]:
    return {
        "maxFiles": config.max_files,
        "maxUploadBytes": config.max_upload_bytes,
        "maxVariations": config.max_variations,
        "defaultVariations": config.default_variations,
        "acceptedTypes": ["video/mp4", "video/quicktime"],
        "acceptedExtensions": [".mp4", ".mov"],
        "maxDurationS": config.max_duration_s,
        "maxLongSidePx": config.max_long_side_px,
        "maxShortSidePx": config.max_short_side_px,
        "maxFps": config.max_fps,
        "resultsLifetimeS": config.job_ttl_s,
        "sessionLifetimeS": 24 * 3600,
        "strengths": [
            {"value": value, "label": value.capitalize(), "description": DESCRIPTIONS[value]}
            for value in ("subtle", "standard", "strong")
        ],
        "defaultStrength": config.default_strength,
        "mirrorAvailable": True,
    }


async def test_the_defaults_need_no_login(client: httpx.AsyncClient, config: Config) -> None:
    response = await client.get("/api/config")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == limits_of(config)
    assert response.json()["defaultVariations"] == 5
    assert response.json()["resultsLifetimeS"] == 24 * 3600


async def test_configured_limits_are_reported_with_or_without_a_bearer(
    start_service: StartService, clips: Any
) -> None:
    service = await start_service(**CHANGED)
    expected = limits_of(service.state.config)
    assert (expected["maxFiles"], expected["defaultVariations"]) == (3, 2)
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        assert (await http.get("/api/config")).json() == expected
        password = service.state.config.auth_password
        token = (await http.post("/api/auth", json={"password": password})).json()["token"]
        http.headers["Authorization"] = f"Bearer {token}"
        assert (await http.get("/api/config")).json() == expected
        # The default the page shows is the one an upload without the field gets.
        created = await upload(http, [clips.mp4], variations=None)
        assert created.status_code == 202, created.text
        assert created.json()["variationsPerVideo"] == expected["defaultVariations"]
