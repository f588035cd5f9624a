"""Job routes: list, detail, cancel, delete and thumbnail."""

from __future__ import annotations

import contextlib
import logging

import trio
from quart import Blueprint, Response, jsonify
from sqlalchemy import Connection

from refresher.auth import tokens
from refresher.jobs import estimates, records, retries
from refresher.jobs.estimates import Estimate
from refresher.jobs.status import ACTIVE, JobStatus
from refresher.jobs.transitions import RemovalReason
from refresher.storage import removal
from refresher.storage.full import StorageFull
from web.http.access import check_bearer, require_login
from web.http.errors import STORAGE_FULL, ApiError
from web.http.serving import send_private_image
from web.state import AppState, state
from web.views import job_detail, job_summary, load_or_404

LOGGER = logging.getLogger(__name__)

# How long a cancel or delete waits for the processor to stop FFmpeg and settle the job
# before it answers with the status as it stands.
SETTLE_TIMEOUT_S = 15.0

blueprint = Blueprint("jobs", __name__)


@blueprint.get("/api/jobs")
@require_login
async def list_jobs() -> Response:
    app_state = state()
    # Read together, so a job's status and its place agree.
    rows, ahead = await app_state.db.read(
        lambda conn: (records.list_jobs(conn), estimates.estimates(conn))
    )
    return jsonify([job_summary(row, app_state, ahead.get(row["id"])) for row in rows])


@blueprint.get("/api/jobs/<job_id>")
@require_login
async def get_job(job_id: str) -> Response:
    app_state = state()

    def read(conn: Connection) -> tuple[records.JobRecord | None, dict[str, Estimate]]:
        # Estimates only for a job queued or under way: this route is the page's poll.
        job = records.load_job(conn, job_id)
        return job, estimates.estimates(conn) if job and job.status in ACTIVE else {}

    job, ahead = await app_state.db.read(read)
    if job is None:
        raise ApiError(404, "There is no such job; it may have been deleted.")
    return jsonify(job_detail(job, app_state, ahead.get(job.id)))


async def _cancel_and_settle(app_state: AppState, job_id: str) -> records.JobRecord:
    """Cancel the job and wait (bounded) until the processor has settled it."""
    async with app_state.events.subscribe(job_id) as job_events:
        try:
            status = await app_state.lifecycle.cancel(job_id)
        except records.JobNotFound:
            raise ApiError(404, "There is no such job; it may have been deleted.") from None
        if status != JobStatus.CANCELLED:  # running: its workers stop it
            with trio.move_on_after(SETTLE_TIMEOUT_S):
                async for event in job_events:
                    if event.ends_job:
                        break
    return await load_or_404(app_state, job_id)


@blueprint.post("/api/jobs/<job_id>/cancel")
@require_login
async def cancel_job(job_id: str) -> Response:
    app_state = state()
    try:
        job = await _cancel_and_settle(app_state, job_id)
    except records.JobAlreadyFinished as err:
        raise ApiError(409, f"The job has already ended ({err.status}).") from None
    LOGGER.info("job=%s cancel requested; now %s", job_id, job.status)
    return jsonify(
        {
            "jobId": job.id,
            "status": job.status,
            "completedVariations": sum(file.completed_variations for file in job.files),
            "totalVariations": job.total_variations,
            "cancelledAt": job.cancelled_at,
        }
    )


@blueprint.post("/api/jobs/<job_id>/files/<file_id>/retry")
@require_login
async def retry_file(job_id: str, file_id: str) -> Response:
    """Queue a failed file again from its kept source: no upload needed."""
    app_state = state()
    try:
        await app_state.lifecycle.retry(job_id, file_id)
    except records.JobNotFound:
        raise ApiError(404, "There is no such job; it may have been deleted.") from None
    except retries.FileNotFound:
        raise ApiError(404, "The job has no such video.") from None
    except retries.NotRetryable as err:
        raise ApiError(409, err.reason) from None
    except StorageFull:
        raise ApiError(507, STORAGE_FULL) from None
    return jsonify({"jobId": job_id, "fileId": file_id, "status": JobStatus.QUEUED})


@blueprint.delete("/api/jobs/<job_id>")
@require_login
async def delete_job(job_id: str) -> Response:
    app_state = state()
    job = await load_or_404(app_state, job_id)
    if job.status in ACTIVE:
        with contextlib.suppress(records.JobAlreadyFinished):  # it ended meanwhile: fine
            job = await _cancel_and_settle(app_state, job_id)
        if job.status == JobStatus.PROCESSING:
            raise ApiError(409, "The job is still stopping; try again in a moment.")
    outcome = await removal.remove(
        app_state.lifecycle, app_state.tracker, RemovalReason.DELETED, {job_id: None}
    )
    if outcome.unavailable is not None:
        raise ApiError(503, "Deleting is briefly unavailable; try again in a moment.")
    if outcome.storage_full:
        raise ApiError(507, STORAGE_FULL)
    if outcome.busy:
        raise ApiError(409, "The job is being downloaded right now; try again when it ends.")
    if not outcome.retired:
        # Reserved, but its files could not all go yet: the janitor finishes the removal.
        raise ApiError(503, "The job could not be removed completely yet; it will be soon.")
    LOGGER.info("job=%s deleted", job_id)
    return jsonify({"jobId": job_id, "deleted": True})


@blueprint.get("/api/jobs/<job_id>/thumbnail")
async def thumbnail(job_id: str) -> Response:
    check_bearer(also_scope=tokens.job_scope(job_id, "thumbnail"))
    job = await load_or_404(state(), job_id)
    if job.thumbnail_path is None:
        raise ApiError(404, "This job has no thumbnail.")
    app_state = state()
    path = app_state.paths.absolute(job.thumbnail_path)
    return await send_private_image(
        app_state.lifecycle.blobs, path, "image/webp", missing="This job has no thumbnail."
    )
