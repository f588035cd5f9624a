"""The SQL of every change of a job's status, each in one function on a connection.

Run them through `refresher.jobs.lifecycle`, which writes each with its event and its
metric; tests and tools that make jobs directly in the store call them too. Those that
change several rows rely on `Database.write`'s one transaction.

    queued ──claim_next──► processing ──finish_job──► completed | failed | cancelled
      │  ◄──requeue_interrupted──┘                              │
      ├──request_cancel──► cancelled                            retire
      └──fail_stale_queued──► failed                              ▼
                                                 expired | evicted (tombstones) | gone
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from refresher.jobs.outputstore import keep_archive_size
from refresher.jobs.records import (
    JobAlreadyFinished,
    JobRecord,
    load_job,
    require_job,
)
from refresher.jobs.status import ACTIVE, FINISHED, TERMINAL, TOMBSTONES, JobStatus, sql_list
from refresher.timestamps import duration_words, iso, iso_after, seconds_between

LOST_MESSAGE = "The results were lost from the disk, so they can no longer be downloaded."
EVICTED_MESSAGE = "Removed early to free space for new uploads."


class RemovalReason(StrEnum):
    """Why a job's results go; kept with its reservation and deciding how its row ends."""

    EXPIRED = "expired"  # past its time to live: an `expired` tombstone
    LOST = "lost"  # its files vanished from the disk: an `expired` tombstone saying so
    EVICTED = "evicted"  # room was needed: an `evicted` tombstone
    DELETED = "deleted"  # its owner deleted it: the row goes too


_TOMBSTONE = {
    RemovalReason.EXPIRED: JobStatus.EXPIRED,
    RemovalReason.LOST: JobStatus.EXPIRED,
    RemovalReason.EVICTED: JobStatus.EVICTED,
}


def tombstone(reason: RemovalReason) -> JobStatus:
    """The status a job's row keeps once removed for `reason` (a DELETE keeps none)."""
    if reason is RemovalReason.DELETED:
        raise ValueError("a deleted job keeps no row")
    return _TOMBSTONE[reason]


# Who makes reservations of each reason, and so may finish them.
_OWNER = {
    RemovalReason.EXPIRED: "janitor",
    RemovalReason.LOST: "janitor",
    RemovalReason.EVICTED: "evictor",
    RemovalReason.DELETED: "owner",
}


def expiry_message(finished_at: str | None, expires_at: str) -> str:
    """What an expired job's owner reads: how long its results were kept."""
    kept_s = seconds_between(finished_at, expires_at)
    if kept_s is None or kept_s <= 0:
        return "Results expired."
    return f"Results expired {duration_words(kept_s)} after the job finished."


@dataclass(frozen=True)
class NewFile:
    id: str
    original_name: str
    upload_path: str
    file_size: int
    duration_s: float


def insert_job(
    conn: sqlite3.Connection,
    *,
    job_id: str,
    files: list[NewFile],
    variations_per_video: int,
    seed: int,
    now: float,
    ttl_s: float,
    strength: str = "subtle",
    mirror: bool = False,
) -> None:
    """Record a queued job and its uploaded files (call inside one write transaction)."""
    created = iso(now)
    conn.execute(
        """INSERT INTO jobs (id, status, created_at, updated_at, expires_at, total_videos,
                             variations_per_video, total_variations, seed, strength, mirror)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (
            job_id,
            JobStatus.QUEUED,
            created,
            created,
            iso_after(now, ttl_s),
            len(files),
            variations_per_video,
            len(files) * variations_per_video,
            seed,
            strength,
            int(mirror),
        ),
    )
    conn.executemany(
        """INSERT INTO job_files (id, job_id, position, original_name, upload_path, file_size,
                                  status, duration_s, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [
            (file.id, job_id, position, file.original_name, file.upload_path, file.file_size,
             JobStatus.QUEUED, file.duration_s, created)
            for position, file in enumerate(files)
        ],
    )  # fmt: skip


def requeue_interrupted(conn: sqlite3.Connection, now: float) -> list[str]:
    """Put jobs left `processing` by a crash or shutdown back in the queue; return their ids."""
    queued, processing = JobStatus.QUEUED, JobStatus.PROCESSING
    ids = [row[0] for row in conn.execute("SELECT id FROM jobs WHERE status = ?", (processing,))]
    stamp = iso(now)
    for table in ("job_files", "jobs"):
        conn.execute(
            f"UPDATE {table} SET status = ?, updated_at = ? WHERE status = ?",
            (queued, stamp, processing),
        )
    return ids


def claim_next(conn: sqlite3.Connection, now: float) -> JobRecord | None:
    """Mark the oldest queued job `processing` and return it; None when the queue is empty."""
    row = conn.execute(
        "SELECT id FROM jobs WHERE status = ? ORDER BY created_at, id LIMIT 1",
        (JobStatus.QUEUED,),
    ).fetchone()
    if row is None:
        return None
    conn.execute(
        "UPDATE jobs SET status = ?, updated_at = ? WHERE id = ?",
        (JobStatus.PROCESSING, iso(now), row[0]),
    )
    return load_job(conn, row[0])


def finish_job(
    conn: sqlite3.Connection,
    job_id: str,
    *,
    status: JobStatus,
    error: str | None,
    now: float,
    ttl_s: float,
) -> None:
    """End a job: results expire `ttl_s` after now, and the size of its ZIP is kept.

    Files still queued or processing (a cancelled job) become `cancelled`.
    """
    if status not in FINISHED:
        raise ValueError(f"status must be one of {sql_list(FINISHED)}, got {status!r}")
    stamp = iso(now)
    conn.execute(
        f"""UPDATE job_files SET status = ?, updated_at = ?
            WHERE job_id = ? AND status IN {sql_list(ACTIVE)}""",
        (JobStatus.CANCELLED, stamp, job_id),
    )
    conn.execute(
        """UPDATE jobs SET status = ?, error = ?, finished_at = ?, updated_at = ?,
                           expires_at = ?, cancelled_at = CASE WHEN ? = ?
                               THEN coalesce(cancelled_at, ?) ELSE cancelled_at END
           WHERE id = ?""",
        (status, error, stamp, stamp, iso_after(now, ttl_s), status, JobStatus.CANCELLED,
         stamp, job_id),
    )  # fmt: skip
    keep_archive_size(conn, job_id)


def request_cancel(conn: sqlite3.Connection, job_id: str, *, now: float, ttl_s: float) -> str:
    """Cancel a job: a queued one ends now, a processing one is flagged for the processor.

    Return the job's status afterwards. Raise `JobNotFound`, or `JobAlreadyFinished` for
    a job that has already ended.
    """
    job = require_job(conn, job_id)
    if job.status in TERMINAL:
        raise JobAlreadyFinished(job_id, job.status)
    if job.status == JobStatus.QUEUED:
        conn.execute("UPDATE jobs SET cancelled_at = ? WHERE id = ?", (iso(now), job_id))
        finish_job(conn, job_id, status=JobStatus.CANCELLED, error=None, now=now, ttl_s=ttl_s)
        return JobStatus.CANCELLED
    if job.cancelled_at is None:
        conn.execute(
            "UPDATE jobs SET cancelled_at = ?, updated_at = ? WHERE id = ?",
            (iso(now), iso(now), job_id),
        )
    return job.status


def fail_stale_queued(conn: sqlite3.Connection, now: float) -> dict[str, str]:
    """Fail queued jobs past `expires_at` (they never started); return id → the error.

    A failed job keeps its row as long as a finished one would (the TTL it was queued
    with, `expires_at - created_at`), so its owner sees why. Its uploads are left for
    the janitor's reconciliation, which removes uploads of every job that has ended.
    """
    stamp = iso(now)
    rows = conn.execute(
        "SELECT id, created_at, expires_at FROM jobs WHERE status = ? AND expires_at <= ?",
        (JobStatus.QUEUED, stamp),
    ).fetchall()
    failed = {}
    for job_id, created_at, expires_at in rows:
        ttl_s = max(seconds_between(created_at, expires_at) or 0.0, 0.0)
        error = (
            f"The job waited in the queue for more than {duration_words(ttl_s)} without "
            "starting; upload the videos again."
        )
        changed = conn.execute(
            """UPDATE jobs SET status = ?, error = ?, finished_at = ?, updated_at = ?,
                               expires_at = ?
               WHERE id = ? AND status = ?""",
            (JobStatus.FAILED, error, stamp, stamp, iso(now + ttl_s), job_id, JobStatus.QUEUED),
        ).rowcount
        if changed:
            conn.execute(
                f"""UPDATE job_files SET status = ?, error = ?, updated_at = ?
                    WHERE job_id = ? AND status IN {sql_list(ACTIVE)}""",
                (JobStatus.FAILED, error, stamp, job_id),
            )
            failed[job_id] = error
    return failed


def retire(
    conn: sqlite3.Connection,
    messages: Mapping[str, str | None],
    reason: RemovalReason,
    *,
    now: float,
) -> list[str]:
    """Retire the rows of reserved jobs whose files are gone; return the ids retired.

    A tombstone keeps the row and its source names, with `messages[id]` as the reason
    shown; outputs and reservation go. Only a finished job reserved by the same remover
    changes: a job the janitor reserved is never made `evicted`, an evicting one never
    `expired`, and one a DELETE reserved is never left a tombstone. A DELETE takes any
    reserved job, or a tombstone, and its row goes; a job already gone counts as retired.
    """
    changed = []
    for job_id, message in messages.items():
        row = conn.execute(
            "SELECT reason FROM deletion_reservations WHERE job_id = ?", (job_id,)
        ).fetchone()
        if reason is RemovalReason.DELETED:
            conn.execute(
                f"DELETE FROM jobs WHERE id = ? AND (status IN {sql_list(TOMBSTONES)} OR ?)",
                (job_id, row is not None),
            )
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                changed.append(job_id)
            continue
        if row is None or _OWNER[RemovalReason(row[0])] != _OWNER[reason]:
            continue
        updated = conn.execute(
            f"""UPDATE jobs SET status = ?, deleted_reason = ?, updated_at = ?,
                                thumbnail_path = NULL, archive_bytes = NULL
                WHERE id = ? AND status IN {sql_list(FINISHED)}""",
            (_TOMBSTONE[reason], message, iso(now), job_id),
        ).rowcount
        if not updated:
            continue
        conn.execute("DELETE FROM output_files WHERE job_id = ?", (job_id,))
        conn.execute("UPDATE job_files SET upload_path = NULL WHERE job_id = ?", (job_id,))
        conn.execute("DELETE FROM deletion_reservations WHERE job_id = ?", (job_id,))
        changed.append(job_id)
    return changed
