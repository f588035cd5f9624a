"""`GET /api/jobs/:id/events`: a job's status and progress as server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import trio
from quart import Blueprint, Response

from refresher import tokens
from refresher.status import TERMINAL
from web.access import check_bearer
from web.state import state
from web.views import job_detail, load_or_404

# A comment line this often keeps proxies (and Fly's) from closing an idle stream.
HEARTBEAT_S = 15.0
# Tells EventSource how soon to reconnect after the stream ends early.
RETRY_MS = 3000

blueprint = Blueprint("events", __name__)


def sse(kind: str, data: object) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@blueprint.get("/api/jobs/<job_id>/events")
async def job_events(job_id: str) -> Response:
    check_bearer(also_scope=tokens.job_scope(job_id))
    app_state = state()
    await load_or_404(app_state, job_id)

    async def stream() -> AsyncIterator[bytes]:
        async with app_state.events.subscribe(job_id) as events:
            # Read the state only after subscribing, so no event falls between the two.
            job = await load_or_404(app_state, job_id)
            yield f"retry: {RETRY_MS}\n\n".encode() + sse("status", job_detail(job, app_state))
            if job.status in TERMINAL:
                return
            while True:
                event = None
                with trio.move_on_after(HEARTBEAT_S):
                    try:
                        event = await events.receive()
                    except trio.EndOfChannel:
                        return  # dropped for falling behind: the client reconnects
                if event is None:
                    yield b": keep-alive\n\n"
                    continue
                if event.kind == "status" and event.data.get("status") in TERMINAL:
                    job = await load_or_404(app_state, job_id)
                    yield sse("status", job_detail(job, app_state))
                    return
                yield sse(event.kind, event.data)

    response = Response(stream(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None
    return response
