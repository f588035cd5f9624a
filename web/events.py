"""`GET /api/jobs/:id/events`: a job's status and progress as server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import trio
from quart import Blueprint, Response

from refresher import jobstore, tokens
from refresher.job_events import DELETED, JobEvent
from refresher.status import TERMINAL
from web.access import check_bearer
from web.state import AppState, state
from web.views import job_detail, load_or_404

# A comment line this often keeps proxies (and Fly's) from closing an idle stream.
HEARTBEAT_S = 15.0
# Tells EventSource how soon to reconnect after the stream ends early.
RETRY_MS = 3000

blueprint = Blueprint("events", __name__)


def sse(kind: str, data: object) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _status(app_state: AppState, job_id: str) -> tuple[bytes, bool]:
    """The job's whole state as a `status` event, and whether more will happen to it. A
    job deleted meanwhile gets an event saying just that."""
    job = await app_state.db.read(lambda conn: jobstore.load_job(conn, job_id))
    if job is None:
        return sse("status", {"jobId": job_id, "status": DELETED}), False
    return sse("status", job_detail(job, app_state)), job.status not in TERMINAL


async def _next_event(
    events: trio.MemoryReceiveChannel[JobEvent], stopping: trio.Event
) -> JobEvent | None:
    """The next event, or None after HEARTBEAT_S without one. Raise `trio.EndOfChannel`
    when the subscription ended (a subscriber that fell behind) or the service stops."""
    event: JobEvent | None = None
    ended = False
    async with trio.open_nursery() as nursery:

        async def receive() -> None:
            nonlocal event, ended
            with trio.move_on_after(HEARTBEAT_S):
                try:
                    event = await events.receive()
                except trio.EndOfChannel:
                    ended = True
            nursery.cancel_scope.cancel()

        async def stop() -> None:
            await stopping.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(receive)
        nursery.start_soon(stop)
    if ended or stopping.is_set():
        raise trio.EndOfChannel
    return event


@blueprint.get("/api/jobs/<job_id>/events")
async def job_events(job_id: str) -> Response:
    check_bearer(also_scope=tokens.job_scope(job_id))
    app_state = state()
    await load_or_404(app_state, job_id)

    async def stream() -> AsyncIterator[bytes]:
        async with app_state.events.subscribe(job_id) as events:
            # Read the state only after subscribing, so no event falls between the two.
            first, goes_on = await _status(app_state, job_id)
            yield f"retry: {RETRY_MS}\n\n".encode() + first
            if not goes_on:
                return
            while True:
                try:
                    event = await _next_event(events, app_state.stopping)
                except trio.EndOfChannel:
                    return  # dropped for falling behind, or the service stops: reconnect
                if event is None:
                    yield b": keep-alive\n\n"
                elif event.ends_job:
                    yield (await _status(app_state, job_id))[0]
                    return
                else:
                    yield sse(event.kind, event.data)

    response = Response(stream(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"  # it carries job JSON and signed links
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None
    return response
