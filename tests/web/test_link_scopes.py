"""A link grants one purpose on one job for its own lifetime, and nothing reached through
it yields another (DESIGN §5, invariant 10): event streams carry no link and end when
what opened them expires; sessions end with the password; streams are counted."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio

from refresher import timestamps
from refresher.jobs import claims
from refresher.jobs.events import JobEvent
from tests.support.clock import WallClock, wait_for
from tests.support.http import TEST_PASSWORD, StartService
from tests.support.jobs import make_finished_job
from tests.support.process import logged_in, running_service, stop_gracefully
from tests.support.sse import Item, open_stream, receive_until
from tests.support.store import sql
from wiring.service import RunningService

LINK_EXPIRED = "This link has expired; reload the page for a fresh one."
INVALID_TOKEN = "That token is not valid; log in again."
STREAM_TIMEOUT_S = 10


@pytest.fixture
async def anonymous(service: RunningService) -> AsyncIterator[httpx.AsyncClient]:
    """A client without any header, like an EventSource."""
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        yield http


async def ended(items: trio.MemoryReceiveChannel[Item]) -> list[Item]:
    """What the stream still sends until the server ends it (fail if it does not)."""
    with trio.fail_after(STREAM_TIMEOUT_S):
        return [item async for item in items]


async def test_a_job_events_link_yields_no_other_link(
    nursery: trio.Nursery,
    service: RunningService,
    authed: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
) -> None:
    """The 10-minute link to a job's events opens its stream, and nothing in the stream
    is a link: not the download (a day), not players, not a fresh events link."""
    job_id = await make_finished_job(service.state.db, service.state.paths)
    detail = (await authed.get(f"/api/jobs/{job_id}")).json()
    assert detail["downloadUrl"]  # the session sees the links
    items = await open_stream(nursery, anonymous, detail["eventsUrl"])
    (kind, state), _ = await receive_until(items, lambda item: item[0] == "status")
    assert (kind, state["status"]) == ("status", "completed")
    assert "token=" not in json.dumps(state)
    assert not [key for key in state if key.endswith("Url")]


async def test_the_all_events_stream_ends_when_its_link_expires(
    nursery: trio.Nursery,
    service: RunningService,
    authed: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    wall_clock: WallClock,
) -> None:
    link = (await authed.post("/api/events/link")).json()
    items = await open_stream(nursery, anonymous, link["url"])
    await receive_until(items, lambda item: item[0] == "snapshot")
    wall_clock.advance(service.state.config.events_link_ttl_s + 60)
    # A job that appears after the link expired: the stream ends instead of telling.
    job_id = await make_finished_job(service.state.db, service.state.paths, now=wall_clock())
    assert (await authed.delete(f"/api/jobs/{job_id}")).status_code == 200
    assert await ended(items) == []
    refused = await anonymous.get(link["url"])
    assert refused.status_code == 401
    assert refused.json() == {"error": LINK_EXPIRED}


async def test_a_job_stream_ends_when_its_link_expires(
    nursery: trio.Nursery,
    service: RunningService,
    authed: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    wall_clock: WallClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(claims, "claim_next", lambda conn, **_: None)  # stays queued
    job_id = await make_finished_job(service.state.db, service.state.paths, now=wall_clock())
    await service.state.db.write(
        lambda conn: sql(conn, "UPDATE jobs SET status = 'queued' WHERE id = :id", id=job_id)
    )
    url = (await authed.get(f"/api/jobs/{job_id}")).json()["eventsUrl"]
    items = await open_stream(nursery, anonymous, url)
    await receive_until(items, lambda item: item[0] == "status")
    wall_clock.advance(service.state.config.events_link_ttl_s + 60)
    # Any event wakes the stream, which then sees its link has run out.
    service.state.events.publish(progress_of(job_id))
    assert await ended(items) == []


def progress_of(job_id: str) -> JobEvent:
    return JobEvent(job_id, "progress", {"progress": 1.0})


async def test_a_stream_opened_with_a_session_ends_when_the_session_does(
    nursery: trio.Nursery,
    service: RunningService,
    authed: httpx.AsyncClient,
    token: str,
    wall_clock: WallClock,
) -> None:
    items = await open_stream(
        nursery, authed, "/api/events", headers={"Authorization": f"Bearer {token}"}
    )
    await receive_until(items, lambda item: item[0] == "snapshot")
    wall_clock.advance(24 * 3600)
    job_id = await make_finished_job(service.state.db, service.state.paths, now=wall_clock())
    service.state.events.publish(progress_of(job_id))
    assert await ended(items) == []


async def test_the_events_link_lasts_as_configured(start_service: StartService) -> None:
    service = await start_service(events_link_ttl_s=5.0)
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        login = await http.post("/api/auth", json={"password": TEST_PASSWORD})
        http.headers["Authorization"] = f"Bearer {login.json()['token']}"
        link = (await http.post("/api/events/link")).json()
    now = service.state.now()
    # 5 s, rounded up to the next whole 5 s: between 5 and 10 s from now.
    expires = timestamps.parse(link["expiresAt"]).timestamp()
    assert now + 5 <= expires <= now + 10


# --- the number of streams ------------------------------------------------------------------


def streams_open(service: RunningService, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return service.state.streams.open_streams == count

    return check


async def test_streams_are_capped_per_link_and_in_all(start_service: StartService) -> None:
    service = await start_service(max_event_streams_per_link=2, max_event_streams=3)
    async with (
        httpx.AsyncClient(base_url=service.url, timeout=10) as http,
        httpx.AsyncClient(base_url=service.url, timeout=10) as anonymous,
        trio.open_nursery() as nursery,  # the readers end before their clients close
    ):
        login = await http.post("/api/auth", json={"password": TEST_PASSWORD})
        session = {"Authorization": f"Bearer {login.json()['token']}"}
        url = (await http.post("/api/events/link", headers=session)).json()["url"]
        for _ in range(2):
            items = await open_stream(nursery, anonymous, url)
            await receive_until(items, lambda item: item[0] == "snapshot")
        third = await anonymous.get(url)
        assert third.status_code == 429, third.text
        assert third.json()["error"].startswith("This session or link already has 2 event")
        assert third.headers["retry-after"]
        # Another token (the session itself) still may, until the service's cap.
        with trio.CancelScope() as scope:
            async with (
                httpx.AsyncClient(base_url=service.url, timeout=10) as tab,
                trio.open_nursery() as inner,
            ):
                items = await open_stream(inner, tab, "/api/events", headers=session)
                await receive_until(items, lambda item: item[0] == "snapshot")
                fourth = await http.get("/api/events", headers=session)
                assert fourth.status_code == 503, fourth.text
                assert service.state.streams.open_streams == 3
                scope.cancel()  # the client closes its stream: the slot comes back
        await wait_for(streams_open(service, 2))
        items = await open_stream(nursery, http, "/api/events", headers=session)
        await receive_until(items, lambda item: item[0] == "snapshot")
        nursery.cancel_scope.cancel()


# --- sessions end with the password ---------------------------------------------------------


async def test_changing_the_password_ends_every_session_and_link(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with running_service(data_dir) as first, logged_in(first) as http:
        token = http.headers["Authorization"]
        link = (await http.post("/api/events/link")).json()["url"]
        assert (await http.get("/api/jobs")).status_code == 200
        await stop_gracefully(first)
    # The team changes its password; the kept token secret stays as it was.
    (data_dir / "auth_password").write_text("a-new-team-password\n")
    async with running_service(data_dir) as second:
        assert second.password == "a-new-team-password"
        async with httpx.AsyncClient(base_url=second.url, timeout=10) as http:
            old = await http.get("/api/jobs", headers={"Authorization": token})
            assert old.status_code == 401
            assert old.json() == {"error": INVALID_TOKEN}
            assert (await http.get(link)).status_code == 401
            login = await http.post("/api/auth", json={"password": "a-new-team-password"})
            assert login.status_code == 200
        await stop_gracefully(second)
