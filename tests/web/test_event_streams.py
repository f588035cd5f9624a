"""Every path that ends or removes a job tells its event streams, and they end."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from actors.janitor import Janitor
from refresher.jobs import claims
from refresher.jobs.events import JobEvent
from refresher.jobs.lifecycle import Lifecycle
from tests.support.clock import DAY_S, WallClock, wait_for
from tests.support.http import StartService, collect_events
from tests.support.jobs import make_finished_job, make_unfinished_job
from wiring.service import RunningService

STREAM_TIMEOUT_S = 10


@pytest.fixture(autouse=True)
def queue_stays_put(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the processor from claiming the queued jobs these tests follow: each must end
    by the path under test, not by being processed (the processor may look at the queue
    at any moment after the service starts)."""
    monkeypatch.setattr(claims, "claim_next", lambda conn, **_: None)


async def follow(
    nursery: trio.Nursery, client: httpx.AsyncClient, job_id: str, token: str
) -> tuple[list[tuple[str, Any]], trio.Event]:
    """Read the job's event stream in the background; the event is set when it ends."""
    events: list[tuple[str, Any]] = []
    ended = trio.Event()

    async def read() -> None:
        await collect_events(client, job_id, token, events)
        ended.set()

    nursery.start_soon(read)
    # The first event is the job's state: the stream is open from then on.

    async def opened() -> bool:
        return bool(events)

    await wait_for(opened, polls=STREAM_TIMEOUT_S * 100)
    return events, ended


async def ended_with(events: list[tuple[str, Any]], ended: trio.Event) -> str:
    with trio.fail_after(STREAM_TIMEOUT_S):
        await ended.wait()
    kind, data = events[-1]
    assert kind == "status"
    status: str = data["status"]
    return status


async def announcement(
    service: RunningService, job_id: str, act: Callable[[], Awaitable[object]]
) -> JobEvent:
    """The first event the hub tells of the job once `act()` has run. (A stream of a
    finished job ends at once with its state, so these listen to the hub.)"""
    async with service.state.events.subscribe(job_id) as heard:
        await act()
        with trio.fail_after(STREAM_TIMEOUT_S):
            return await heard.receive()


def janitor_of(service: RunningService, clock: WallClock) -> Janitor:
    state = service.state
    lifecycle = Lifecycle(
        state.db, state.paths, now=clock, ttl_s=state.config.job_ttl_s,
        publish=state.events.publish,
    )  # fmt: skip
    return Janitor(lifecycle, state.tracker, interval_s=300)


async def test_cancelling_a_queued_job_ends_its_stream(
    nursery: trio.Nursery, service: RunningService, authed: httpx.AsyncClient, token: str
) -> None:
    job_id = await make_unfinished_job(service.state.db, service.state.paths)
    events, ended = await follow(nursery, authed, job_id, token)
    assert (await authed.post(f"/api/jobs/{job_id}/cancel")).json()["status"] == "cancelled"
    assert await ended_with(events, ended) == "cancelled"


async def test_a_queued_job_failed_by_the_janitor_ends_its_stream(
    nursery: trio.Nursery,
    service: RunningService,
    authed: httpx.AsyncClient,
    token: str,
    wall_clock: WallClock,
) -> None:
    job_id = await make_unfinished_job(
        service.state.db, service.state.paths, now=wall_clock(), ttl_s=60
    )
    events, ended = await follow(nursery, authed, job_id, token)
    wall_clock.advance(61)
    # This pass, or the service's own janitor's if it runs first, fails the job.
    await janitor_of(service, wall_clock).sweep()
    assert await ended_with(events, ended) == "failed"
    assert "waited in the queue" in events[-1][1]["error"]


async def test_expiry_is_announced(service: RunningService, wall_clock: WallClock) -> None:
    job_id = await make_finished_job(service.state.db, service.state.paths, now=wall_clock())

    async def expire() -> None:
        wall_clock.advance(DAY_S)
        # This pass, or the service's own janitor's if it runs first, expires the job.
        await janitor_of(service, wall_clock).sweep()

    event = await announcement(service, job_id, expire)
    assert (event.kind, event.data["status"], event.ends_job) == ("status", "expired", True)
    assert event.data["error"] == "Results expired 24 hours after the job finished."


async def test_eviction_is_announced(start_service: StartService) -> None:
    service = await start_service(storage_quota_bytes=10_000)
    job_id = await make_finished_job(service.state.db, service.state.paths, size=6000)
    # 12 000 bytes stored of a 10 000-byte quota: the evictor must make room.
    event = await announcement(service, job_id, lambda: service.state.evictor.request_room(0))
    assert (event.data["status"], event.ends_job) == ("evicted", True)


async def test_deleting_a_queued_job_cancels_it_first_and_ends_its_stream(
    nursery: trio.Nursery, service: RunningService, authed: httpx.AsyncClient, token: str
) -> None:
    job_id = await make_unfinished_job(service.state.db, service.state.paths)
    events, ended = await follow(nursery, authed, job_id, token)
    assert (await authed.delete(f"/api/jobs/{job_id}")).status_code == 200
    assert await ended_with(events, ended) == "cancelled"


async def test_deleting_a_finished_job_is_announced_as_deleted(
    service: RunningService, authed: httpx.AsyncClient
) -> None:
    job_id = await make_finished_job(service.state.db, service.state.paths)
    event = await announcement(service, job_id, lambda: authed.delete(f"/api/jobs/{job_id}"))
    assert (event.data["status"], event.ends_job) == ("deleted", True)


async def test_event_streams_end_when_the_service_stops(
    nursery: trio.Nursery, service: RunningService, authed: httpx.AsyncClient, token: str
) -> None:
    job_id = await make_unfinished_job(service.state.db, service.state.paths)
    events, ended = await follow(nursery, authed, job_id, token)
    service.state.stopping.set()  # a graceful shutdown begins: nothing waits on the stream
    with trio.fail_after(STREAM_TIMEOUT_S):
        await ended.wait()
    assert [kind for kind, _data in events] == ["status"]  # the job's state, then the end
