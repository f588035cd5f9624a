"""`GET /api/jobs/:id/events`: a job's status and progress as server-sent events.

Authorised by a bearer header or the job's signed `eventsUrl` (checked as it connects);
the stream ends once nothing more will happen to the job, or when what opened it
expires (`web.sse`).
"""

from __future__ import annotations

from quart import Blueprint, Response

from refresher import jobstore, tokens
from refresher.job_events import DELETED, JobEvent
from refresher.status import TERMINAL
from web.access import check_bearer
from web.sse import event_stream, sse
from web.state import AppState, state
from web.views import job_state, load_or_404

blueprint = Blueprint("events", __name__)


async def status_of(app_state: AppState, job_id: str) -> tuple[bytes, bool]:
    """The job's state as a `status` event (no link), and whether more will happen to it.
    A job deleted meanwhile gets an event saying just that."""
    job = await app_state.db.read(lambda conn: jobstore.load_job(conn, job_id))
    if job is None:
        return sse("status", {"jobId": job_id, "status": DELETED}), False
    return sse("status", job_state(job)), job.status not in TERMINAL


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
