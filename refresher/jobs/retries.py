"""Retrying a failed file without uploading it again: the one write that queues it anew.

A failed file keeps its source while its job (completed or failed) keeps its results
(`refresher.jobs.lifecycle`); `requeue_file` puts it back in the queue, its finished
variations kept, and queues its job again if it had ended.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from refresher.jobs.records import require_job
from refresher.jobs.status import RETRYABLE, TOMBSTONES, JobStatus
from refresher.store.sql import dialect
from refresher.timestamps import iso, iso_after


class NotRetryable(RuntimeError):
    """A file that cannot be queued again; `reason` says why, for its owner."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class FileNotFound(LookupError):
    def __init__(self, file_id: str) -> None:
        self.file_id = file_id
        super().__init__(f"no file {file_id!r} in the job")


def requeue_file(conn: Connection, job_id: str, file_id: str, *, now: float, ttl_s: float) -> bool:
    """Queue a failed file again from its kept source, its variations already made kept
    (the rest are drawn from the job's seed as they would have been); return whether the
    job, which had ended, is queued again (its results then expire `ttl_s` after it ends
    anew). Raise `JobNotFound`, `FileNotFound` or `NotRetryable`."""
    locked = conn.execute(
        text(f"SELECT status FROM jobs WHERE id = :job_id{dialect(conn).for_update}"),
        {"job_id": job_id},
    ).scalar()
    job = require_job(conn, job_id)
    file = next((each for each in job.files if each.id == file_id), None)
    if locked is None or file is None:
        raise FileNotFound(file_id)
    reserved = conn.execute(
        text("SELECT 1 FROM deletion_reservations WHERE job_id = :job_id"), {"job_id": job_id}
    ).first()
    if job.status in TOMBSTONES or reserved is not None:
        raise NotRetryable("The job's results are gone or being removed; upload the video again.")
    if job.cancelled_at is not None:
        raise NotRetryable("The job was cancelled; upload the video again in a new job.")
    if file.status != JobStatus.FAILED:
        raise NotRetryable(f"Only a failed video can be retried; “{file.original_name}” is "
                           f"{file.status}.")  # fmt: skip
    if file.upload_path is None:
        raise NotRetryable(
            f"The source of “{file.original_name}” is no longer kept; upload it again."
        )
    stamp = iso(now)
    conn.execute(
        text(
            """UPDATE job_files SET status = :queued, error = NULL, progress = 0,
                                    retries = retries + 1, updated_at = :now,
                                    claimed_by = NULL, claim_token = NULL, claimed_until = NULL
               WHERE id = :file_id"""
        ),
        {"queued": JobStatus.QUEUED, "now": stamp, "file_id": file_id},
    )
    if job.status not in RETRYABLE:
        return False  # still running: its worker takes the file in turn
    conn.execute(
        text(
            """UPDATE jobs SET status = :queued, error = NULL, finished_at = NULL,
                              updated_at = :now, expires_at = :expires_at, archive_bytes = NULL
               WHERE id = :job_id"""
        ),
        {"queued": JobStatus.QUEUED, "now": stamp, "expires_at": iso_after(now, ttl_s),
         "job_id": job_id},
    )  # fmt: skip
    return True
