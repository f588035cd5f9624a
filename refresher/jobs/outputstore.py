"""Finished variations in the database: recording them, with what measuring them found.

A variation's PDQ hashes are kept with it, so that one made later (in another batch, or
after a restart) is compared with it without decoding it again, and so that its nearest
sibling can be brought up to date when a closer one arrives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from refresher.archive import job_archive
from refresher.jobs import records
from refresher.timestamps import iso


@dataclass(frozen=True)
class NewOutput:
    """A finished variation to record."""

    output_id: str
    variation_index: int
    path: str
    size: int
    crc32: int
    effects: dict[str, Any]
    measured: dict[str, Any] | None = None
    pdq_hashes: bytes | None = None
    attempts: int = 1
    still_path: str | None = None


def record_output(
    conn: Connection, *, job_id: str, file_id: str, output: NewOutput, now: float
) -> int:
    """Record a finished variation and count it on its file; return the file's count."""
    stamp = iso(now)
    measured = json.dumps(output.measured, sort_keys=True) if output.measured else None
    conn.execute(
        text(
            """INSERT INTO output_files (id, job_id, job_file_id, variation_index, path, size,
                                         crc32, effects_json, created_at, measured_json,
                                         pdq_hashes, attempts, still_path)
               VALUES (:id, :job_id, :file_id, :index, :path, :size, :crc32, :effects, :now,
                       :measured, :pdq_hashes, :attempts, :still_path)"""
        ),
        {"id": output.output_id, "job_id": job_id, "file_id": file_id,
         "index": output.variation_index, "path": output.path, "size": output.size,
         "crc32": output.crc32, "effects": json.dumps(output.effects, sort_keys=True),
         "now": stamp, "measured": measured, "pdq_hashes": output.pdq_hashes,
         "attempts": output.attempts, "still_path": output.still_path},
    )  # fmt: skip
    count: int = conn.execute(
        text("SELECT count(*) FROM output_files WHERE job_file_id = :file_id"),
        {"file_id": file_id},
    ).scalar_one()
    conn.execute(
        text(
            "UPDATE job_files SET completed_variations = :count, updated_at = :now "
            "WHERE id = :file_id"
        ),
        {"count": count, "now": stamp, "file_id": file_id},
    )
    return count


@dataclass(frozen=True)
class Sibling:
    """A recorded variation of a file, as its later siblings are compared with it."""

    output_id: str
    variation_index: int
    pdq_hashes: bytes
    measured: dict[str, Any]


def siblings(conn: Connection, file_id: str) -> list[Sibling]:
    """The file's recorded variations that were measured."""
    rows = conn.execute(
        text(
            """SELECT id, variation_index, pdq_hashes, measured_json FROM output_files
               WHERE job_file_id = :file_id AND pdq_hashes IS NOT NULL
                 AND measured_json IS NOT NULL
               ORDER BY variation_index"""
        ),
        {"file_id": file_id},
    )
    return [
        Sibling(output_id, index, bytes(hashes), json.loads(measured))
        for output_id, index, hashes, measured in rows
    ]


def update_measured(conn: Connection, measured: dict[str, dict[str, Any]]) -> None:
    """Replace the measures of the outputs named in `measured` (their nearest sibling
    moved when a closer one was recorded)."""
    if not measured:
        return
    conn.execute(
        text("UPDATE output_files SET measured_json = :measured WHERE id = :output_id"),
        [
            {"measured": json.dumps(value, sort_keys=True), "output_id": output_id}
            for output_id, value in measured.items()
        ],
    )


def set_file_still(conn: Connection, file_id: str, still_path: str) -> None:
    conn.execute(
        text("UPDATE job_files SET still_path = :still_path WHERE id = :file_id"),
        {"still_path": still_path, "file_id": file_id},
    )


def keep_archive_size(conn: Connection, job_id: str) -> None:
    """Record the size of the job's ZIP as its rows now lay it out (None: no outputs).

    A job gone meanwhile (deleted while a janitor pass ran) is left alone.
    """
    job = records.load_job(conn, job_id)
    if job is None:
        return
    size = job_archive.size_of(job) if job.outputs else None
    conn.execute(
        text("UPDATE jobs SET archive_bytes = :size WHERE id = :job_id"),
        {"size": size, "job_id": job_id},
    )
