"""How full the storage is, and which jobs eviction would take first.

Two readings count: the bytes this service stores (outputs and uploads, as the store
records them) against its quota, and the volume's own used and usable bytes
(`os.statvfs`, the one place the volume is read). Usage is the fuller of the two.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, text

from refresher.jobs.status import FINISHED, sql_list
from refresher.store.sql import dialect


@dataclass(frozen=True)
class Usage:
    """Bytes stored against the quota, and the volume's used and usable bytes."""

    stored_bytes: int
    quota_bytes: int
    volume_used_bytes: int
    volume_total_bytes: int

    def fraction(self, freed: int = 0) -> float:
        """The fuller of quota and volume, as a fraction, once `freed` bytes are gone."""
        stored = (self.stored_bytes - freed) / self.quota_bytes
        if self.volume_total_bytes <= 0:
            return stored
        return max(stored, (self.volume_used_bytes - freed) / self.volume_total_bytes)

    def has_room(self, nbytes: int, limit: float, freed: int = 0) -> bool:
        """Whether `nbytes` more keep quota and volume at or under `limit`."""
        if self.stored_bytes - freed + nbytes > limit * self.quota_bytes:
            return False
        return (
            self.volume_total_bytes <= 0
            or self.volume_used_bytes - freed + nbytes <= limit * self.volume_total_bytes
        )


def read_volume(path: Path) -> tuple[int, int]:
    """The volume holding `path`: (used bytes, bytes an unprivileged writer may fill).

    Used over usable is what `df` shows as Use%: blocks kept for root count as neither,
    and usable minus used is the free space a writer still has. Blocking.
    """
    stats = os.statvfs(path)
    used = (stats.f_blocks - stats.f_bfree) * stats.f_frsize
    return used, used + stats.f_bavail * stats.f_frsize


def stored_bytes(conn: Connection) -> int:
    """Bytes this service keeps: outputs, jobs' uploads not yet deleted (a failed file's
    source kept for a retry among them), and what resumable uploads received so far."""
    outputs = conn.execute(text("SELECT coalesce(sum(size), 0) FROM output_files")).scalar_one()
    uploads = conn.execute(
        text("SELECT coalesce(sum(file_size), 0) FROM job_files WHERE upload_path IS NOT NULL")
    ).scalar_one()
    resumable = conn.execute(
        text("SELECT coalesce(sum(received), 0) FROM uploads WHERE taken_by IS NULL")
    ).scalar_one()
    return int(outputs) + int(uploads) + int(resumable)


@dataclass(frozen=True)
class Candidate:
    job_id: str
    nbytes: int


def eviction_candidates(conn: Connection) -> list[Candidate]:
    """Finished jobs that hold bytes, oldest finish first: the order of eviction.

    Jobs reserved for deletion are already on their way out, and jobs a live lease holds
    would be refused anyway, so neither is offered; the reservation still decides.
    """
    rows = conn.execute(
        text(
            f"""SELECT id,
                   coalesce((SELECT sum(size) FROM output_files o WHERE o.job_id = jobs.id), 0)
                 + coalesce((SELECT sum(file_size) FROM job_files f
                             WHERE f.job_id = jobs.id AND f.upload_path IS NOT NULL), 0)
                   AS nbytes
            FROM jobs
            WHERE status IN {sql_list(FINISHED)}
              AND NOT EXISTS (SELECT 1 FROM deletion_reservations r WHERE r.job_id = jobs.id)
              AND NOT EXISTS (SELECT 1 FROM leases l
                              WHERE l.job_id = jobs.id AND l.expires_at > {dialect(conn).now_s})
            ORDER BY finished_at, id"""
        )
    ).fetchall()
    return [Candidate(job_id, int(nbytes)) for job_id, nbytes in rows if nbytes > 0]
