"""`GET /api/events`: every job's status and progress in one stream (the page's live view).

The page asks `POST /api/events/link` (with its bearer header) for a short-lived link,
since an EventSource cannot send headers; the link is checked as the stream connects.
The stream starts with a `snapshot` (the job list as `GET /api/jobs` gives it), then
sends a `status` event with the job's whole detail whenever a job changes state (a new
upload too) and the processor's `progress` events, each naming its job. It does not end
when a job does: only when the hub drops it (it fell behind) or the service stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio
from quart import Blueprint, Response, jsonify

from refresher import jobstore, tokens
from web import links
from web.access import check_bearer, require_login
from web.sse import KEEP_ALIVE, RETRY, job_status, next_event, sse, stream_response
from web.state import state
from web.views import job_summary

blueprint = Blueprint("all_events", __name__)


@blueprint.post("/api/events/link")
@require_login
async def events_link() -> Response:
    link = links.all_events_link(state())
    return jsonify({"url": link.url, "expiresAt": link.expires_at_iso})


@blueprint.get("/api/events")
async def all_events() -> Response:
    check_bearer(also_scope=tokens.EVENTS_SCOPE)
    app_state = state()

    async def stream() -> AsyncIterator[bytes]:
        async with app_state.events.subscribe(None) as events:
            # Read the jobs only after subscribing, so no event falls between the two.
            rows = await app_state.db.read(jobstore.list_jobs)
            yield RETRY + sse("snapshot", [job_summary(row, app_state) for row in rows])
            while True:
                try:
                    event = await next_event(events, app_state.stopping)
                except trio.EndOfChannel:
                    return  # dropped for falling behind, or the service stops: reconnect
                if event is None:
                    yield KEEP_ALIVE
                elif event.kind == "status":
                    yield (await job_status(app_state, event.job_id))[0]
                else:
                    yield sse(event.kind, {**event.data, "jobId": event.job_id})

    return stream_response(stream())
