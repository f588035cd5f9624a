"""Helpers for tests that drive the service over HTTP."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from refresher.jobs.status import TERMINAL
from tests.support.clock import wait_for
from wiring.service import RunningService

TEST_PASSWORD = "correct horse battery"
# How often a test asks the service how a job stands.
POLL_S = 0.05

# The `start_service` fixture: starts the whole service; keyword arguments alter the config.
StartService = Callable[..., Awaitable[RunningService]]


async def upload(
    client: httpx.AsyncClient,
    paths: list[Path],
    *,
    variations: str | None = "3",
    names: list[str] | None = None,
) -> httpx.Response:
    files = [
        ("videos", (name, path.read_bytes(), "video/mp4"))
        for path, name in zip(paths, names or [p.name for p in paths], strict=True)
    ]
    data = {} if variations is None else {"variations": variations}
    return await client.post("/api/jobs", files=files, data=data)


async def wait_for_job(
    client: httpx.AsyncClient,
    job_id: str,
    until: Callable[[dict[str, Any]], bool],
    *,
    timeout_s: float = 60,
) -> dict[str, Any]:
    """Poll the job's detail until `until(detail)` holds; fail after `timeout_s`."""

    async def detail_if_done() -> dict[str, Any] | None:
        response = await client.get(f"/api/jobs/{job_id}")
        response.raise_for_status()
        detail: dict[str, Any] = response.json()
        return detail if until(detail) else None

    with trio.fail_after(timeout_s):
        return await wait_for(detail_if_done, polls=int(timeout_s / POLL_S) + 1, step_s=POLL_S)


def finished(detail: dict[str, Any]) -> bool:
    return detail["status"] in TERMINAL


def some_variation_done(detail: dict[str, Any]) -> bool:
    return any(file["completedVariations"] >= 1 for file in detail["files"])


async def collect_events(
    client: httpx.AsyncClient, job_id: str, token: str, sink: list[tuple[str, Any]]
) -> None:
    """Read the job's event stream into `sink` as (event, data) until the server ends it.
    The login token goes in the header: one in a URL is refused."""
    url = f"/api/jobs/{job_id}/events"
    headers = {"Authorization": f"Bearer {token}"}
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = None
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind is not None:
                sink.append((kind, json.loads(line.removeprefix("data: "))))
