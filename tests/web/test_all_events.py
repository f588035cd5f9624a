"""`GET /api/events`: one stream of every job, from a snapshot on, until the service stops."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from refresher import timestamps
from refresher.config import Config
from refresher.jobs import claims
from tests.support.clock import WallClock
from tests.support.http import upload
from tests.support.jobs import make_finished_job
from tests.support.sse import Item, open_stream, receive_until
from web.http import sse
from wiring.service import RunningService

STREAM_TIMEOUT_S = 10


@pytest.fixture
def idle_jump_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only after 50 ms of real idleness: SQLite runs in threads,
    during which trio sees every task blocked, and a clock that jumped at once would
    skip past them."""
    return trio.testing.MockClock(autojump_threshold=0.05)


# One video of 1 s in 2 variations: a few seconds of FFmpeg on a small machine.
PROCESSING_TIMEOUT_S = 120


def about(job_id: str, kind: str) -> Any:
    def wanted(item: Item) -> bool:
        return item[0] == kind and item[1].get("jobId") == job_id

    return wanted


QUEUE_KEYS = ("queuePosition", "estimatedStartS", "estimatedDoneS")


def linkless(shown: Any) -> Any:
    """What the API shows, without what an event never carries: signed links (keys ending
    in `Url`), each file's outputs (the page loads those with its session) and a job's
    place in the queue (estimates that age by the second)."""
    if isinstance(shown, list):
        return [linkless(item) for item in shown]
    if isinstance(shown, dict):
        return {
            key: linkless(value)
            for key, value in shown.items()
            if not key.endswith("Url") and key not in ("outputs", "downloadBytes", *QUEUE_KEYS)
        }
    return shown


def no_link(data: Any) -> bool:
    return "token=" not in json.dumps(data)


async def events_url(authed: httpx.AsyncClient) -> str:
    response = await authed.post("/api/events/link")
    assert response.status_code == 200, response.text
    url: str = response.json()["url"]
    return url


async def test_the_stream_follows_a_job_from_upload_to_deletion(
    nursery: trio.Nursery, service: RunningService, authed: httpx.AsyncClient, clips: Any
) -> None:
    earlier = await make_finished_job(service.state.db, service.state.paths)
    url = await events_url(authed)
    async with httpx.AsyncClient(base_url=service.url) as page:  # no header: the link alone
        items = await open_stream(nursery, page, url)
        with trio.fail_after(STREAM_TIMEOUT_S):
            assert await items.receive() == ("retry", sse.RETRY_MS)
            kind, snapshot = await items.receive()
        assert kind == "snapshot"
        assert snapshot == linkless((await authed.get("/api/jobs")).json())
        assert [job["id"] for job in snapshot] == [earlier]

        created = await upload(authed, [clips.mp4], variations="2")
        assert created.status_code == 202, created.text
        job_id = created.json()["jobId"]
        # Announced queued; the detail is read as the event is sent, by when the
        # processor may have claimed the job.
        (_kind, appeared), _ = await receive_until(items, about(job_id, "status"))
        assert appeared["status"] in ("queued", "processing")
        assert [file["name"] for file in appeared["files"]] == [clips.mp4.name]
        assert "downloadUrl" not in appeared

        (_kind, completed), passed = await receive_until(
            items,
            lambda item: about(job_id, "status")(item) and item[1]["status"] == "completed",
            timeout_s=PROCESSING_TIMEOUT_S,
        )
        progress = [data for kind, data in passed if kind == "progress"]
        assert progress, passed
        assert {data["jobId"] for data in progress} == {job_id}
        assert max(data["progress"] for data in progress) == 100
        # The state, no link: the page asks for the links with its session.
        detail = (await authed.get(f"/api/jobs/{job_id}")).json()
        assert completed == linkless(detail)
        assert detail["downloadUrl"].startswith(f"/api/jobs/{job_id}/download?token=")
        assert len([out for file in detail["files"] for out in file["outputs"]]) == 2
        assert all(no_link(data) for _kind, data in [*passed, (_kind, completed)])

        # The job has ended; the stream goes on, and tells of the next change.
        assert (await authed.delete(f"/api/jobs/{job_id}")).status_code == 200
        (_kind, deleted), _ = await receive_until(items, about(job_id, "status"))
        assert deleted == {"jobId": job_id, "status": "deleted"}
        assert (await authed.delete(f"/api/jobs/{earlier}")).status_code == 200
        (_kind, deleted), _ = await receive_until(items, about(earlier, "status"))
        assert deleted == {"jobId": earlier, "status": "deleted"}


async def test_a_quiet_stream_sends_heartbeats_and_stays_open(
    nursery: trio.Nursery,
    service: RunningService,
    authed: httpx.AsyncClient,
    idle_jump_clock: trio.testing.MockClock,
) -> None:
    async with httpx.AsyncClient(base_url=service.url) as page:
        items = await open_stream(nursery, page, await events_url(authed))
        item, passed = await receive_until(items, lambda item: item[0] == "comment")
        assert [kind for kind, _data in passed] == ["retry", "snapshot"]
        assert item == ("comment", "keep-alive")
        started = trio.current_time()
        # Three more in a row, HEARTBEAT_S apart in (virtual) time: nothing ended it.
        for _beat in range(3):
            assert await receive_until(items, lambda item: item[0] == "comment")
        assert trio.current_time() - started >= 3 * sse.HEARTBEAT_S


async def test_a_bearer_header_opens_the_stream_too(
    nursery: trio.Nursery, service: RunningService, authed: httpx.AsyncClient, token: str
) -> None:
    items = await open_stream(
        nursery, authed, "/api/events", headers={"Authorization": f"Bearer {token}"}
    )
    (kind, snapshot), _ = await receive_until(items, lambda item: item[0] != "retry")
    assert (kind, snapshot) == ("snapshot", [])


async def test_the_stream_ends_when_the_service_stops(
    nursery: trio.Nursery, service: RunningService, authed: httpx.AsyncClient
) -> None:
    items = await open_stream(nursery, authed, "/api/events")
    await receive_until(items, lambda item: item[0] == "snapshot")
    service.state.stopping.set()  # a graceful shutdown begins: nothing waits on the stream
    with trio.fail_after(STREAM_TIMEOUT_S):
        assert [item async for item in items] == []


async def test_the_link_needs_a_bearer_header_and_lasts_ten_minutes(
    service: RunningService, client: httpx.AsyncClient, token: str, wall_clock: WallClock
) -> None:
    refused = await client.post("/api/events/link")
    assert refused.status_code == 401
    assert refused.json() == {"error": "Log in first: this needs a bearer token."}
    in_query = await client.post("/api/events/link", params={"token": token})
    assert in_query.status_code == 401
    wall_clock.advance(30)
    answer = await client.post("/api/events/link", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    link = answer.json()
    assert link["url"].startswith("/api/events?token=")
    # Minted at a whole minute + 30 s for 10 minutes: it expires at the next whole minute.
    assert link["expiresAt"] == timestamps.iso(wall_clock() - 30 + Config().events_link_ttl_s + 60)
    assert link["expiresAt"].endswith("Z")


async def test_a_new_upload_appears_queued_on_an_open_stream(
    nursery: trio.Nursery,
    service: RunningService,
    authed: httpx.AsyncClient,
    clips: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The processor never claims it: what the stream hears is the upload's own announcement.
    monkeypatch.setattr(claims, "claim_next", lambda conn, **_: None)
    items = await open_stream(nursery, authed, "/api/events")
    await receive_until(items, lambda item: item[0] == "snapshot")
    job_id = (await upload(authed, [clips.mp4], variations="2")).json()["jobId"]
    (_kind, appeared), passed = await receive_until(items, about(job_id, "status"))
    assert passed == []
    assert appeared == linkless((await authed.get(f"/api/jobs/{job_id}")).json())
    assert appeared["status"] == "queued"
