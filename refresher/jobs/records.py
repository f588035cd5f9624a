"""Jobs, their source files and their outputs: records and the queries that change them.

Every function takes a store connection (`refresher.store`) and runs in a worker thread
through `Database.read`/`Database.write`; those that change several rows rely on
`write`'s one transaction. Paths in rows are relative to the data directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, RowMapping, text

from refresher.jobs.status import RETRYABLE, JobStatus
from refresher.store.sql import in_list
from refresher.timestamps import iso


class JobNotFound(LookupError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id!r}")


class JobAlreadyFinished(RuntimeError):
    def __init__(self, job_id: str, status: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(f"job {job_id!r} is already {status}")


@dataclass(frozen=True)
class OutputRecord:
    id: str
    job_file_id: str
    variation_index: int
    path: str
    size: int
    crc32: int
    effects: dict[str, Any]
    created_at: str
    # What measuring it found (`refresher.media.measure.Measured.as_json`), None if not measured;
    # how many draws it took; its comparison still.
    measured: dict[str, Any] | None = None
    attempts: int = 1
    still_path: str | None = None


@dataclass(frozen=True)
class FileRecord:
    id: str
    position: int
    original_name: str
    upload_path: str | None
    file_size: int
    status: JobStatus
    progress: float
    duration_s: float | None
    completed_variations: int
    error: str | None
    outputs: tuple[OutputRecord, ...]
    still_path: str | None = None
    # How often a user asked for the file again after it failed.
    retries: int = 0


@dataclass(frozen=True)
class JobRecord:
    id: str
    status: JobStatus
    created_at: str
    updated_at: str
    finished_at: str | None
    expires_at: str
    total_videos: int
    variations_per_video: int
    total_variations: int
    seed: int
    thumbnail_path: str | None
    error: str | None
    cancelled_at: str | None
    deleted_reason: str | None
    # The size of the job's ZIP, kept when it finished with outputs; None for a job not
    # finished, without outputs, a tombstone, or finished before the size was kept.
    archive_bytes: int | None
    strength: str
    mirror: bool
    # Where the results were made: "upload" (encoded here) or "device" (sent made).
    source: str
    files: tuple[FileRecord, ...]

    @property
    def outputs(self) -> tuple[OutputRecord, ...]:
        return tuple(output for file in self.files for output in file.outputs)

    @property
    def overall_progress(self) -> float:
        return overall_progress(self.status, ((file.status, file.progress) for file in self.files))


# The columns of `jobs` a `JobRecord` holds (a later column is not read unless named here).
JOB_COLUMNS = tuple(name for name in JobRecord.__dataclass_fields__ if name != "files")


def overall_progress(job_status: str, files: Iterable[tuple[str, float]]) -> float:
    """Percent of a job's work done, from each file's (status, percent).

    A completed or failed file counts as done; any other counts its percent (a file
    cancelled half way stays at half). A completed job is 100, a job without files 0.
    """
    if job_status == JobStatus.COMPLETED:
        return 100.0
    shares = [
        100.0 if status in (JobStatus.COMPLETED, JobStatus.FAILED) else progress
        for status, progress in files
    ]
    return round(sum(shares) / len(shares), 1) if shares else 0.0


def list_jobs(conn: Connection) -> list[dict[str, Any]]:
    """Every job's row, newest first, with its source file names (`file_names`, in
    order), its variations made so far (`completed_variations`) and its
    `overall_progress`."""
    rows = conn.execute(text("SELECT * FROM jobs ORDER BY created_at DESC, id DESC")).mappings()
    files: dict[str, list[RowMapping]] = {}
    for file in conn.execute(
        text(
            """SELECT job_id, original_name, status, progress, completed_variations
               FROM job_files ORDER BY job_id, position"""
        )
    ).mappings():
        files.setdefault(file["job_id"], []).append(file)
    jobs = []
    for row in rows:
        job = dict(row)
        own = files.get(job["id"], [])
        job["file_names"] = [file["original_name"] for file in own]
        job["completed_variations"] = sum(file["completed_variations"] for file in own)
        job["overall_progress"] = overall_progress(
            job["status"], ((file["status"], file["progress"]) for file in own)
        )
        jobs.append(job)
    return jobs


def load_job(conn: Connection, job_id: str) -> JobRecord | None:
    row = (
        conn.execute(text("SELECT * FROM jobs WHERE id = :job_id"), {"job_id": job_id})
        .mappings()
        .fetchone()
    )
    if row is None:
        return None
    outputs: dict[str, list[OutputRecord]] = {}
    for out in conn.execute(
        text("SELECT * FROM output_files WHERE job_id = :job_id ORDER BY variation_index"),
        {"job_id": job_id},
    ).mappings():
        outputs.setdefault(out["job_file_id"], []).append(
            OutputRecord(
                id=out["id"],
                job_file_id=out["job_file_id"],
                variation_index=out["variation_index"],
                path=out["path"],
                size=out["size"],
                crc32=out["crc32"],
                effects=json.loads(out["effects_json"]),
                created_at=out["created_at"],
                measured=json.loads(out["measured_json"]) if out["measured_json"] else None,
                attempts=out["attempts"],
                still_path=out["still_path"],
            )
        )
    files = tuple(
        FileRecord(
            id=file["id"],
            position=file["position"],
            original_name=file["original_name"],
            upload_path=file["upload_path"],
            file_size=file["file_size"],
            status=JobStatus(file["status"]),
            progress=file["progress"],
            duration_s=file["duration_s"],
            completed_variations=file["completed_variations"],
            error=file["error"],
            outputs=tuple(outputs.get(file["id"], ())),
            still_path=file["still_path"],
            retries=file["retries"],
        )
        for file in conn.execute(
            text("SELECT * FROM job_files WHERE job_id = :job_id ORDER BY position"),
            {"job_id": job_id},
        ).mappings()
    )
    fields = {name: row[name] for name in JOB_COLUMNS}
    fields["status"] = JobStatus(fields["status"])
    fields["mirror"] = bool(fields["mirror"])
    return JobRecord(**fields, files=files)


def require_job(conn: Connection, job_id: str) -> JobRecord:
    job = load_job(conn, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def set_file_state(
    conn: Connection,
    file_id: str,
    *,
    status: JobStatus,
    progress: float | None = None,
    error: str | None = None,
    now: float,
) -> None:
    conn.execute(
        text(
            """UPDATE job_files SET status = :status, progress = coalesce(:progress, progress),
                                    error = :error, updated_at = :now
               WHERE id = :file_id"""
        ),
        {"status": status, "progress": progress, "error": error, "now": iso(now),
         "file_id": file_id},
    )  # fmt: skip


def set_file_progress(conn: Connection, file_id: str, progress: float, now: float) -> None:
    conn.execute(
        text("UPDATE job_files SET progress = :progress, updated_at = :now WHERE id = :file_id"),
        {"progress": progress, "now": iso(now), "file_id": file_id},
    )


def file_progress(conn: Connection, job_id: str) -> dict[str, tuple[str, float]]:
    """Each of the job's files' (status, percent), by file id."""
    return {
        file_id: (status, progress)
        for file_id, status, progress in conn.execute(
            text("SELECT id, status, progress FROM job_files WHERE job_id = :job_id"),
            {"job_id": job_id},
        )
    }


def cancel_requested(conn: Connection, job_id: str) -> bool:
    row = conn.execute(
        text("SELECT cancelled_at FROM jobs WHERE id = :job_id"), {"job_id": job_id}
    ).fetchone()
    return row is None or row[0] is not None


def sources(conn: Connection, job_id: str) -> list[tuple[str, bool]]:
    """The job's kept sources: each stored path, and whether it stays (its file failed in
    a job that ended with results or failures, so it can be retried)."""
    rows = conn.execute(
        text(
            """SELECT f.upload_path, f.status, j.status FROM job_files f
               JOIN jobs j ON j.id = f.job_id
               WHERE f.job_id = :job_id AND f.upload_path IS NOT NULL"""
        ),
        {"job_id": job_id},
    )
    return [
        (path, file_status == JobStatus.FAILED and job_status in RETRYABLE)
        for path, file_status, job_status in rows
    ]


def clear_uploads(conn: Connection, job_id: str, paths: Sequence[str] | None = None) -> None:
    """Forget the job's upload paths, or only `paths` (after the files themselves were
    removed)."""
    if paths is None:
        conn.execute(
            text("UPDATE job_files SET upload_path = NULL WHERE job_id = :job_id"),
            {"job_id": job_id},
        )
        return
    if not paths:
        return
    conn.execute(
        text(
            "UPDATE job_files SET upload_path = NULL "
            "WHERE job_id = :job_id AND upload_path IN :paths"
        ).bindparams(in_list("paths")),
        {"job_id": job_id, "paths": list(paths)},
    )


def set_thumbnail(conn: Connection, job_id: str, path: str) -> None:
    conn.execute(
        text("UPDATE jobs SET thumbnail_path = :path WHERE id = :job_id"),
        {"path": path, "job_id": job_id},
    )
