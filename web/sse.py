"""Server-sent events as both event streams send them: framing, waiting, the response.

A stream sends `retry:` first (how soon EventSource reconnects after the stream ends), a
comment line after HEARTBEAT_S of silence, and ends when the hub drops it (it fell
behind) or the service begins to stop; the browser then reconnects and reads the current
state afresh, so nothing that matters is lost.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import trio
from quart import Response

from refresher import jobstore
from refresher.job_events import DELETED, JobEvent
from refresher.status import TERMINAL
from web.state import AppState
from web.views import job_detail

# A comment line this often keeps proxies (and Fly's) from closing an idle stream.
HEARTBEAT_S = 15.0
# Tells EventSource how soon to reconnect after the stream ends early.
RETRY_MS = 3000
RETRY = f"retry: {RETRY_MS}\n\n".encode()
KEEP_ALIVE = b": keep-alive\n\n"


def sse(kind: str, data: object) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def job_status(app_state: AppState, job_id: str) -> tuple[bytes, bool]:
    """The job's whole state as a `status` event, and whether more will happen to it. A
    job deleted meanwhile gets an event saying just that."""
    job = await app_state.db.read(lambda conn: jobstore.load_job(conn, job_id))
    if job is None:
        return sse("status", {"jobId": job_id, "status": DELETED}), False
    return sse("status", job_detail(job, app_state)), job.status not in TERMINAL


async def next_event(
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


def stream_response(body: AsyncIterator[bytes]) -> Response:
    """`body` as a `text/event-stream` answer that no cache or proxy holds back."""
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"  # it carries job JSON and signed links
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None
    return response
