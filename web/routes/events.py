"""`GET /api/jobs/:id/events`: a job's status and progress as server-sent events.

Authorised by a bearer header or the job's signed `eventsUrl` (checked as it connects);
the stream ends once nothing more will happen to the job, or when what opened it
expires (`web.http.sse`).
"""

from __future__ import annotations

from quart import Blueprint, Response

from refresher.auth import tokens
from refresher.jobs.events import JobEvent
from web.http.access import check_bearer
from web.http.sse import event_stream, sse, status_of
from web.state import state
from web.views import load_or_404

blueprint = Blueprint("events", __name__)


@blueprint.get("/api/jobs/<job_id>/events")
async def job_events(job_id: str) -> Response:
    access = check_bearer(also_scope=tokens.job_scope(job_id, "events"))
    app_state = state()
    await load_or_404(app_state, job_id)

    async def render(event: JobEvent) -> tuple[bytes, bool]:
        if event.ends_job:
            return (await status_of(app_state, job_id))[0], True
        return sse(event.kind, event.data), False

    return event_stream(app_state, access, job_id, lambda: status_of(app_state, job_id), render)
