"""Jobs as the API shows them: the views every job route shares, never a server path."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from refresher import timestamps
from refresher.archive import job_archive
from refresher.jobs import records
from refresher.jobs.estimates import Estimate
from refresher.jobs.status import FINISHED, TOMBSTONES, JobStatus
from refresher.media.measure import Measured
from web import links
from web.http.errors import ApiError
from web.state import AppState

# An absolute path. Errors are written as sentences with no path,
# but a row kept from an older version may hold FFmpeg's own words, paths and all.
_PATH = re.compile(r"(?<![\w.])/(?:[^\s/:'\"|]+/)*[^\s/:'\"|]+")


def shown_error(text: str | None) -> str | None:
    """An error as an answer may carry it: never a server path (it reads "…" instead)."""
    return _PATH.sub("…", text) if text else text


def thumbnail_url(app_state: AppState, job_id: str, thumbnail_path: str | None) -> str | None:
    """The signed link to the job's thumbnail (a bare `<img>` loads it); None if none."""
    return links.thumbnail_url(app_state, job_id) if thumbnail_path else None


def job_summary(
    row: Mapping[str, Any], app_state: AppState | None, estimate: Estimate | None = None
) -> dict[str, object]:
    """The job as `GET /api/jobs` lists it, with where it stands in the queue; with no
    `app_state`, without its signed link or its place (what an event carries)."""
    summary: dict[str, object] = {
        "id": row["id"],
        "status": row["status"],
        "totalVideos": row["total_videos"],
        "totalVariations": row["total_variations"],
        "completedVariations": row["completed_variations"],
        "overallProgress": row["overall_progress"],
        "fileNames": list(row["file_names"]),
        "createdAt": row["created_at"],
        "expiresAt": row["expires_at"],
        "source": row["source"],
        "error": shown_error(row["error"] or row["deleted_reason"]),
    }
    if app_state is not None:
        summary["thumbnailUrl"] = thumbnail_url(app_state, row["id"], row["thumbnail_path"])
        summary.update(queue_view(estimate))
    return summary


def download_link(app_state: AppState, job: records.JobRecord) -> tuple[str, int] | None:
    """The signed link to the job's ZIP (scoped to its download) and the ZIP's size; None
    if there is none yet.

    The link works without a header, so a browser can hand it to its download manager;
    it lasts until the job's results expire.
    """
    if job.status not in FINISHED or not job.outputs:
        return None
    url = links.download_url(app_state, job.id, int(timestamps.parse(job.expires_at).timestamp()))
    if url is None:
        return None
    # Kept when the job finished; a job finished before the size was kept lays it out.
    size = job.archive_bytes if job.archive_bytes is not None else job_archive.size_of(job)
    return url, size


def _output(
    app_state: AppState, job: records.JobRecord, output: records.OutputRecord, name: str
) -> dict[str, object]:
    """One variation: its effects (as the ZIP's manifest records them), its name in the
    ZIP, and signed links to play and to download it: from the moment it is recorded
    (whole, and kept where it stays) until its job's results are gone."""
    playable = job.status not in TOMBSTONES
    url = links.output_url(app_state, job.id, output.id) if playable else None
    measured = Measured.from_json(output.measured) if output.measured else None
    still = links.still_url(app_state, job.id, output.id) if output.still_path else None
    return {
        "id": output.id,
        "variationIndex": output.variation_index,
        "fileSize": output.size,
        "effects": output.effects,
        "name": name,
        "url": url,
        "downloadUrl": f"{url}&download=1" if url else None,
        "measured": measured.shown() if measured else None,
        "verdict": measured.verdict if measured else None,
        "attempts": output.attempts,
        "stillUrl": still,
    }


def _file_state(file: records.FileRecord) -> dict[str, object]:
    return {
        "id": file.id,
        "name": file.original_name,
        "size": file.file_size,
        "status": file.status,
        "progress": 100.0 if file.status == JobStatus.COMPLETED else file.progress,
        "completedVariations": file.completed_variations,
        "error": shown_error(file.error),
        "retries": file.retries,
        # A failed file whose source is still kept can be queued again without uploading.
        "retryable": file.status == JobStatus.FAILED and file.upload_path is not None,
    }


def job_state(job: records.JobRecord) -> dict[str, object]:
    """The job's status and progress with no signed link: what an event carries (a page
    fetches the links with its session)."""
    return {
        "jobId": job.id,
        "status": job.status,
        "totalVideos": job.total_videos,
        "totalVariations": job.total_variations,
        "strength": job.strength,
        "mirror": job.mirror,
        "source": job.source,
        "completedVariations": sum(file.completed_variations for file in job.files),
        "overallProgress": job.overall_progress,
        "files": [_file_state(file) for file in job.files],
        "createdAt": job.created_at,
        "expiresAt": job.expires_at,
        "finishedAt": job.finished_at,
        "cancelledAt": job.cancelled_at,
        "error": shown_error(job.error or job.deleted_reason),
    }


def queue_view(estimate: Estimate | None) -> dict[str, object]:
    """Where a job queued or under way stands: `queuePosition` (1 is next; None once it
    runs), `estimatedStartS` and `estimatedDoneS` (seconds from now; None when not known
    or ended)."""
    if estimate is None:
        return {"queuePosition": None, "estimatedStartS": None, "estimatedDoneS": None}
    return {
        "queuePosition": estimate.queue_position,
        "estimatedStartS": estimate.start_s,
        "estimatedDoneS": estimate.done_s,
    }


def job_detail(
    job: records.JobRecord, app_state: AppState, estimate: Estimate | None = None
) -> dict[str, object]:
    """The job as `GET /api/jobs/:id` shows it: everything a page needs, its signed links
    included, no server paths."""
    link = download_link(app_state, job)
    names = job_archive.output_names(job)
    return {
        **job_state(job),
        **queue_view(estimate),
        "thumbnailUrl": thumbnail_url(app_state, job.id, job.thumbnail_path),
        "eventsUrl": links.job_events_url(app_state, job.id),
        "files": [
            {
                **_file_state(file),
                "stillUrl": links.still_url(app_state, job.id, f"source-{file.id}")
                if file.still_path
                else None,
                "outputs": [_output(app_state, job, out, names[out.id]) for out in file.outputs],
            }
            for file in job.files
        ],
        "downloadUrl": link[0] if link else None,
        "downloadBytes": link[1] if link else None,
    }


async def load_or_404(app_state: AppState, job_id: str) -> records.JobRecord:
    job = await app_state.db.read(lambda conn: records.load_job(conn, job_id))
    if job is None:
        raise ApiError(404, "There is no such job; it may have been deleted.")
    return job
