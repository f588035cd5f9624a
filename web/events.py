"""`GET /api/jobs/:id/events`: a job's status and progress as server-sent events.

Authorised by a bearer header or the job's signed `eventsUrl` (checked as it connects);
the stream ends once nothing more will happen to the job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio
from quart import Blueprint, Response

from refresher import tokens
from web.access import check_bearer
from web.sse import KEEP_ALIVE, RETRY, job_status, next_event, sse, stream_response
from web.state import state
from web.views import load_or_404

blueprint = Blueprint("events", __name__)


@blueprint.get("/api/jobs/<job_id>/events")
async def job_events(job_id: str) -> Response:
    check_bearer(also_scope=tokens.job_scope(job_id, "events"))
    app_state = state()
    await load_or_404(app_state, job_id)

    async def stream() -> AsyncIterator[bytes]:
        async with app_state.events.subscribe(job_id) as events:
            # Read the state only after subscribing, so no event falls between the two.
            first, goes_on = await job_status(app_state, job_id)
            yield RETRY + first
            if not goes_on:
                return
            while True:
                try:
                    event = await next_event(events, app_state.stopping)
                except trio.EndOfChannel:
                    return  # dropped for falling behind, or the service stops: reconnect
                if event is None:
                    yield KEEP_ALIVE
                elif event.ends_job:
                    yield (await job_status(app_state, job_id))[0]
                    return
                else:
                    yield sse(event.kind, event.data)

    return stream_response(stream())
