"""The SQL of every change of a job's status, each in one function on a connection.

Run them through `refresher.jobs.lifecycle`, which writes each with its event and its
metric; tests and tools that make jobs directly in the store call them too. Those that
change several rows rely on `Database.write`'s one transaction.

    queued ──claims.claim_next──► processing ──finish_job──► completed | failed | cancelled
      │                            (claims.settle)                      │
      ├──request_cancel──► cancelled                                  retire
      └──fail_stale_queued──► failed                                    ▼
                                                       expired | evicted (tombstones) | gone

A job is processed a source file at a time, each under a worker's claim
(`refresher.jobs.claims`), which ends the job when its last file ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import Connection, text

from refresher.jobs.device import NO_RESULTS, DeviceFile
from refresher.jobs.outputstore import keep_archive_size, record_output
from refresher.jobs.records import JobAlreadyFinished, require_job
from refresher.jobs.status import (
    ACTIVE,
    FINISHED,
    TERMINAL,
    TOMBSTONES,
    JobStatus,
    sql_list,
)
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
    conn: Connection,
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
        text(
            """INSERT INTO jobs (id, status, created_at, updated_at, expires_at, total_videos,
                                 variations_per_video, total_variations, seed, strength, mirror)
               VALUES (:id, :status, :now, :now, :expires_at, :videos, :per_video, :total,
                       :seed, :strength, :mirror)"""
        ),
        {"id": job_id, "status": JobStatus.QUEUED, "now": created,
         "expires_at": iso_after(now, ttl_s), "videos": len(files),
         "per_video": variations_per_video, "total": len(files) * variations_per_video,
         "seed": seed, "strength": strength, "mirror": int(mirror)},
    )  # fmt: skip
    conn.execute(
        text(
            """INSERT INTO job_files (id, job_id, position, original_name, upload_path,
                                      file_size, status, duration_s, updated_at)
               VALUES (:id, :job_id, :position, :name, :upload_path, :size, :status,
                       :duration_s, :now)"""
        ),
        [
            {"id": file.id, "job_id": job_id, "position": position,
             "name": file.original_name, "upload_path": file.upload_path,
             "size": file.file_size, "status": JobStatus.QUEUED,
             "duration_s": file.duration_s, "now": created}
            for position, file in enumerate(files)
        ],
    )  # fmt: skip


def finish_job(
    conn: Connection,
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
        text(
            f"""UPDATE job_files SET status = :cancelled, updated_at = :now
                WHERE job_id = :job_id AND status IN {sql_list(ACTIVE)}"""
        ),
        {"cancelled": JobStatus.CANCELLED, "now": stamp, "job_id": job_id},
    )
    cancelled_at = (
        "coalesce(cancelled_at, :now)" if status == JobStatus.CANCELLED else ("cancelled_at")
    )
    conn.execute(
        text(
            f"""UPDATE jobs SET status = :status, error = :error, finished_at = :now,
                                updated_at = :now, expires_at = :expires_at,
                                cancelled_at = {cancelled_at}
                WHERE id = :job_id"""
        ),
        {"status": status, "error": error, "now": stamp,
         "expires_at": iso_after(now, ttl_s), "job_id": job_id},
    )  # fmt: skip
    keep_archive_size(conn, job_id)


def request_cancel(conn: Connection, job_id: str, *, now: float, ttl_s: float) -> str:
    """Cancel a job: a queued one ends now, a processing one is flagged for the processor.

    Return the job's status afterwards. Raise `JobNotFound`, or `JobAlreadyFinished` for
    a job that has already ended.
    """
    job = require_job(conn, job_id)
    if job.status in TERMINAL:
        raise JobAlreadyFinished(job_id, job.status)
    stamped = {"now": iso(now), "job_id": job_id}
    if job.status == JobStatus.QUEUED:
        conn.execute(text("UPDATE jobs SET cancelled_at = :now WHERE id = :job_id"), stamped)
        finish_job(conn, job_id, status=JobStatus.CANCELLED, error=None, now=now, ttl_s=ttl_s)
        return JobStatus.CANCELLED
    if job.cancelled_at is None:
        conn.execute(
            text("UPDATE jobs SET cancelled_at = :now, updated_at = :now WHERE id = :job_id"),
            stamped,
        )
    return job.status


def fail_stale_queued(conn: Connection, now: float) -> dict[str, str]:
    """Fail queued jobs past `expires_at` (they never started); return id → the error.

    A failed job keeps its row as long as a finished one would (the TTL it was queued
    with, `expires_at - created_at`), so its owner sees why. Its uploads are left for
    the janitor's reconciliation, which removes uploads of every job that has ended: the
    rows stop naming them at once (a job that never started keeps no source to retry).
    """
    stamp = iso(now)
    rows = conn.execute(
        text(
            "SELECT id, created_at, expires_at FROM jobs "
            "WHERE status = :queued AND expires_at <= :now"
        ),
        {"queued": JobStatus.QUEUED, "now": stamp},
    ).fetchall()
    failed = {}
    for job_id, created_at, expires_at in rows:
        ttl_s = max(seconds_between(created_at, expires_at) or 0.0, 0.0)
        error = (
            f"The job waited in the queue for more than {duration_words(ttl_s)} without "
            "starting; upload the videos again."
        )
        values = {"failed": JobStatus.FAILED, "queued": JobStatus.QUEUED, "error": error,
                  "now": stamp, "expires_at": iso(now + ttl_s), "job_id": job_id}  # fmt: skip
        changed = conn.execute(
            text(
                """UPDATE jobs SET status = :failed, error = :error, finished_at = :now,
                                   updated_at = :now, expires_at = :expires_at
                   WHERE id = :job_id AND status = :queued"""
            ),
            values,
        ).rowcount
        if changed:
            conn.execute(
                text(
                    f"""UPDATE job_files SET status = :failed, error = :error, updated_at = :now,
                                             upload_path = NULL
                        WHERE job_id = :job_id AND status IN {sql_list(ACTIVE)}"""
                ),
                values,
            )
            failed[job_id] = error
    return failed


def retire(
    conn: Connection,
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
        job = {"job_id": job_id}
        held_for = conn.execute(
            text("SELECT reason FROM deletion_reservations WHERE job_id = :job_id"), job
        ).scalar()
        if reason is RemovalReason.DELETED:
            only = "" if held_for is not None else f" AND status IN {sql_list(TOMBSTONES)}"
            conn.execute(text(f"DELETE FROM jobs WHERE id = :job_id{only}"), job)
            if conn.execute(text("SELECT 1 FROM jobs WHERE id = :job_id"), job).first() is None:
                changed.append(job_id)
            continue
        if held_for is None or _OWNER[RemovalReason(held_for)] != _OWNER[reason]:
            continue
        updated = conn.execute(
            text(
                f"""UPDATE jobs SET status = :status, deleted_reason = :message,
                                    updated_at = :now, thumbnail_path = NULL,
                                    archive_bytes = NULL
                    WHERE id = :job_id AND status IN {sql_list(FINISHED)}"""
            ),
            {"status": _TOMBSTONE[reason], "message": message, "now": iso(now), **job},
        ).rowcount
        if not updated:
            # Not finished: another remover made it a tombstone first. The reservation
            # has nothing left to remove.
            conn.execute(text("DELETE FROM deletion_reservations WHERE job_id = :job_id"), job)
            continue
        for statement in (
            "DELETE FROM output_files WHERE job_id = :job_id",
            "UPDATE job_files SET upload_path = NULL WHERE job_id = :job_id",
            "DELETE FROM deletion_reservations WHERE job_id = :job_id",
        ):
            conn.execute(text(statement), job)
        changed.append(job_id)
    return changed


def insert_device_job(
    conn: Connection,
    *,
    job_id: str,
    files: list[DeviceFile],
    variations_per_video: int,
    thumbnail_path: str | None,
    now: float,
    ttl_s: float,
) -> None:
    """Record a job a device made (`jobs.source = 'device'`) as completed, with its
    results as outputs, expiring `ttl_s` from now, the size of its ZIP kept.

    A device sends no source video, so each file has no upload path and a `file_size` of
    0 (its results' bytes are counted on their own rows); a file with no result at all
    has failed (`NO_RESULTS`). Call inside one write transaction.
    """
    stamp = iso(now)
    total = sum(len(file.outputs) for file in files)
    conn.execute(
        text(
            """INSERT INTO jobs (id, status, created_at, updated_at, finished_at, expires_at,
                                 total_videos, variations_per_video, total_variations, seed,
                                 thumbnail_path, source)
               VALUES (:id, :status, :now, :now, :now, :expires_at, :videos, :per_video,
                       :total, 0, :thumbnail_path, 'device')"""
        ),
        {"id": job_id, "status": JobStatus.COMPLETED, "now": stamp,
         "expires_at": iso_after(now, ttl_s), "videos": len(files),
         "per_video": variations_per_video, "total": total,
         "thumbnail_path": thumbnail_path},
    )  # fmt: skip
    conn.execute(
        text(
            """INSERT INTO job_files (id, job_id, position, original_name, file_size, status,
                                      progress, duration_s, error, updated_at)
               VALUES (:id, :job_id, :position, :name, 0, :status, :progress, :duration_s,
                       :error, :now)"""
        ),
        [
            {"id": file.id, "job_id": job_id, "position": position, "name": file.name,
             "status": JobStatus.COMPLETED if file.outputs else JobStatus.FAILED,
             "progress": 100.0 if file.outputs else 0.0, "duration_s": file.duration_s,
             "error": None if file.outputs else NO_RESULTS, "now": stamp}
            for position, file in enumerate(files)
        ],
    )  # fmt: skip
    for file in files:
        for output in file.outputs:
            record_output(conn, job_id=job_id, file_id=file.id, output=output, now=now)
    keep_archive_size(conn, job_id)
