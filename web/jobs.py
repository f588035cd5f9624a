"""Job routes: list, detail, cancel, delete and thumbnail."""

from __future__ import annotations

import contextlib
import logging
import sqlite3

import trio
from quart import Blueprint, Response, jsonify, send_file

from actors.download_tracker import TrackerUnavailable
from actors.processor import CancelJob
from refresher import archive, jobstore, tokens
from refresher import db as queries
from refresher.db import FINISHED_STATUSES, parse_utc_iso
from refresher.storage import remove_tree
from web.auth import check_bearer, require_login
from web.errors import ApiError
from web.state import AppState, state

LOGGER = logging.getLogger(__name__)

# How long a cancel or delete waits for the processor to stop FFmpeg and settle the job
# before it answers with the status as it stands.
SETTLE_TIMEOUT_S = 15.0

blueprint = Blueprint("jobs", __name__)


def thumbnail_url(job_id: str, thumbnail_path: str | None) -> str | None:
    return f"/api/jobs/{job_id}/thumbnail" if thumbnail_path else None


def job_summary(row: sqlite3.Row) -> dict[str, object]:
    names = row["file_names"]
    return {
        "id": row["id"],
        "status": row["status"],
        "totalVideos": row["total_videos"],
        "totalVariations": row["total_variations"],
        "fileNames": names.split("\0") if names else [],
        "thumbnailUrl": thumbnail_url(row["id"], row["thumbnail_path"]),
        "createdAt": row["created_at"],
        "expiresAt": row["expires_at"],
        "source": "upload",
        "error": row["error"] or row["deleted_reason"],
    }


def download_link(app_state: AppState, job: jobstore.JobRecord) -> tuple[str, int] | None:
    """The signed, job-scoped link to the job's ZIP and the ZIP's size; None if none yet.

    The link works without a header, so a browser can hand it to its download manager;
    it lasts until the job's results expire.
    """
    if job.status not in FINISHED_STATUSES or not job.outputs:
        return None
    now = app_state.now()
    lifetime = parse_utc_iso(job.expires_at).timestamp() - now
    if lifetime <= 0:
        return None
    token = tokens.issue(
        app_state.credentials.token_secret, scope=f"job:{job.id}", now=now, ttl_s=lifetime
    )
    size = archive.build(job, app_state.paths).size
    return f"/api/jobs/{job.id}/download?token={token.value}", size


def job_detail(job: jobstore.JobRecord, app_state: AppState) -> dict[str, object]:
    """The job as `GET /api/jobs/:id` shows it: everything a page needs, no server paths."""
    link = download_link(app_state, job)
    return {
        "jobId": job.id,
        "status": job.status,
        "totalVideos": job.total_videos,
        "totalVariations": job.total_variations,
        "completedVariations": sum(file.completed_variations for file in job.files),
        "overallProgress": job.overall_progress,
        "thumbnailUrl": thumbnail_url(job.id, job.thumbnail_path),
        "files": [
            {
                "id": file.id,
                "name": file.original_name,
                "size": file.file_size,
                "status": file.status,
                "progress": 100.0 if file.status == "completed" else file.progress,
                "completedVariations": file.completed_variations,
                "error": file.error,
                "outputs": [
                    {"id": out.id, "variationIndex": out.variation_index, "fileSize": out.size}
                    for out in file.outputs
                ],
            }
            for file in job.files
        ],
        "createdAt": job.created_at,
        "expiresAt": job.expires_at,
        "finishedAt": job.finished_at,
        "cancelledAt": job.cancelled_at,
        "error": job.error or job.deleted_reason,
        "downloadUrl": link[0] if link else None,
        "downloadBytes": link[1] if link else None,
    }


async def load_or_404(app_state: AppState, job_id: str) -> jobstore.JobRecord:
    job = await app_state.db.read(lambda conn: jobstore.load_job(conn, job_id))
    if job is None:
        raise ApiError(404, "There is no such job; it may have been deleted.")
    return job


@blueprint.get("/api/jobs")
@require_login
async def list_jobs() -> Response:
    rows = await state().db.read(queries.list_jobs)
    return jsonify([job_summary(row) for row in rows])


@blueprint.get("/api/jobs/<job_id>")
@require_login
async def get_job(job_id: str) -> Response:
    app_state = state()
    return jsonify(job_detail(await load_or_404(app_state, job_id), app_state))


async def _cancel_and_settle(app_state: AppState, job_id: str) -> jobstore.JobRecord:
    """Cancel the job and wait (bounded) until the processor has settled it."""
    async with app_state.events.subscribe(job_id) as job_events:
        try:
            status = await app_state.db.write(
                lambda conn: jobstore.request_cancel(
                    conn, job_id, now=app_state.now(), ttl_s=app_state.config.job_ttl_s
                )
            )
        except jobstore.JobNotFound:
            raise ApiError(404, "There is no such job; it may have been deleted.") from None
        if status == "cancelled":  # it was still queued: nothing ran, remove its uploads
            await trio.to_thread.run_sync(remove_tree, app_state.paths.upload_dir(job_id))
            await app_state.db.write(lambda conn: jobstore.clear_uploads(conn, job_id))
        else:
            app_state.processor_inbox.post(CancelJob(job_id))
            with trio.move_on_after(SETTLE_TIMEOUT_S):
                async for event in job_events:
                    if event.kind == "status" and event.data.get("status") in (
                        jobstore.TERMINAL_STATUSES
                    ):
                        break
    return await load_or_404(app_state, job_id)


@blueprint.post("/api/jobs/<job_id>/cancel")
@require_login
async def cancel_job(job_id: str) -> Response:
    app_state = state()
    try:
        job = await _cancel_and_settle(app_state, job_id)
    except jobstore.JobAlreadyFinished as err:
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


@blueprint.delete("/api/jobs/<job_id>")
@require_login
async def delete_job(job_id: str) -> Response:
    app_state = state()
    job = await load_or_404(app_state, job_id)
    if job.status in ("queued", "processing"):
        with contextlib.suppress(jobstore.JobAlreadyFinished):  # it ended meanwhile: fine
            job = await _cancel_and_settle(app_state, job_id)
        if job.status == "processing":
            raise ApiError(409, "The job is still stopping; try again in a moment.")
    try:
        reserved = await app_state.tracker.reserve_for_deletion(job_id, reason="deleted")
    except TrackerUnavailable:
        raise ApiError(503, "Deleting is briefly unavailable; try again in a moment.") from None
    if not reserved:
        raise ApiError(409, "The job is being downloaded right now; try again when it ends.")
    # Files before rows: a crash in between leaves an orphan the janitor removes.
    await trio.to_thread.run_sync(remove_tree, app_state.paths.job_dir(job_id))
    await trio.to_thread.run_sync(remove_tree, app_state.paths.upload_dir(job_id))
    await app_state.db.write(lambda conn: jobstore.delete_job(conn, job_id))
    LOGGER.info("job=%s deleted", job_id)
    return jsonify({"jobId": job_id, "deleted": True})


@blueprint.get("/api/jobs/<job_id>/thumbnail")
async def thumbnail(job_id: str) -> Response:
    check_bearer(also_scope=f"job:{job_id}")
    job = await load_or_404(state(), job_id)
    if job.thumbnail_path is None:
        raise ApiError(404, "This job has no thumbnail.")
    path = state().paths.absolute(job.thumbnail_path)
    if not await trio.Path(path).exists():
        raise ApiError(404, "This job has no thumbnail.")
    response = await send_file(path, mimetype="image/webp")
    response.cache_control.private = True
    response.cache_control.max_age = 3600
    return response
