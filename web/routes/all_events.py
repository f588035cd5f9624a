"""`GET /api/events`: every job's status and progress in one stream (the page's live view).

The page asks `POST /api/events/link` (with its bearer header) for a short-lived link,
since an EventSource cannot send headers; the stream lasts as long as that link
(`EVENTS_LINK_TTL_S`), then the page asks for another. The stream starts with a
`snapshot` (the job list as `GET /api/jobs` gives it, without its links), then sends a
`status` event with the job's state whenever a job changes state (a new upload too) and
the processor's `progress` events, each naming its job. No event carries a link: the
page fetches a job's links (thumbnail, download, players) with its session.
"""

from __future__ import annotations

from quart import Blueprint, Response, jsonify

from refresher.auth import tokens
from refresher.jobs import records
from refresher.jobs.events import JobEvent
from web import links
from web.http.access import check_bearer, require_login
from web.http.sse import event_stream, sse, status_of
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
    access = check_bearer(also_scope=tokens.EVENTS_SCOPE)
    app_state = state()

    async def opening() -> tuple[bytes, bool]:
        rows = await app_state.db.read(records.list_jobs)
        return sse("snapshot", [job_summary(row, None) for row in rows]), True

    async def render(event: JobEvent) -> tuple[bytes, bool]:
        if event.kind == "status":
            return (await status_of(app_state, event.job_id))[0], False
        return sse(event.kind, {**event.data, "jobId": event.job_id}), False

    return event_stream(app_state, access, None, opening, render)
