from __future__ import annotations

import httpx
import trio

from wiring.service import RunningService

ACTORS = {"events", "download_tracker", "processor", "janitor", "evictor"}


async def test_health_lists_every_actor_running(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["version"] == "0.1.0"
    assert body["uptimeS"] >= 0
    assert body["storage"]["usedBytes"] == 0
    assert body["storage"]["quotaBytes"] == 3 * 1024**3
    assert body["storage"]["volumeFreeBytes"] > 0
    assert body["actors"] == {name: {"state": "running", "restarts": 0} for name in ACTORS}


async def test_health_shows_a_killed_actor_restarted(
    service: RunningService, client: httpx.AsyncClient
) -> None:
    supervisor = service.state.supervisor
    supervisor.kill("processor")
    await supervisor.wait_until("processor", lambda status: status.state == "restarting")
    degraded = await client.get("/api/health")
    assert degraded.status_code == 503
    assert degraded.json()["status"] == "degraded"
    assert degraded.json()["actors"]["processor"]["state"] == "restarting"
    with trio.fail_after(5):
        await supervisor.wait_until("processor", lambda status: status.state == "running")
    healthy = await client.get("/api/health")
    assert healthy.status_code == 200
    body = healthy.json()
    assert body["actors"]["processor"] == {"state": "running", "restarts": 1}


async def test_unknown_route_is_404_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"error": "There is nothing at GET /api/nothing-here."}


async def test_wrong_method_is_405_json(client: httpx.AsyncClient) -> None:
    response = await client.delete("/api/health")
    assert response.status_code == 405
    assert response.json() == {"error": "DELETE is not allowed on /api/health."}
    assert "GET" in response.headers["allow"]


async def test_page_is_served(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert "<title>Video Refresher</title>" in page.text
    assert 'id="view"' in page.text
    for name in ("app.js", "js/api.js", "js/upload.js"):
        script = await client.get(f"/static/{name}")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
    missing = await client.get("/static/../refresher/config.py")
    assert missing.status_code == 404


async def test_cors_headers_only_for_configured_origins(start_service) -> None:  # type: ignore[no-untyped-def]
    service = await start_service(cors_origins=("https://ads.example",))
    async with httpx.AsyncClient(base_url=service.url) as http:
        allowed = await http.get("/api/health", headers={"Origin": "https://ads.example"})
        other = await http.get("/api/health", headers={"Origin": "https://evil.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://ads.example"
    assert "access-control-allow-origin" not in other.headers
