"""Jobs as the API shows them: the views every job route shares, never a server path."""

from __future__ import annotations

import sqlite3

from refresher import archive, jobstore, timestamps, tokens
from refresher.status import FINISHED, JobStatus
from web.errors import ApiError
from web.state import AppState


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
    if job.status not in FINISHED or not job.outputs:
        return None
    now = app_state.now()
    lifetime = timestamps.parse(job.expires_at).timestamp() - now
    if lifetime <= 0:
        return None
    token = tokens.issue(
        app_state.credentials.token_secret, scope=tokens.job_scope(job.id), now=now, ttl_s=lifetime
    )
    # Kept when the job finished; a job finished before the size was kept lays it out.
    size = job.archive_bytes if job.archive_bytes is not None else archive.size_of(job)
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
                "progress": 100.0 if file.status == JobStatus.COMPLETED else file.progress,
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
