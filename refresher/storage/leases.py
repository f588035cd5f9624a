"""Download leases and deletion reservations, kept in the database.

A lease says "a download is reading this job's files"; a reservation says "this job is
about to be deleted". They exclude each other: a reservation is granted only while a job
has no lease, and a reserved job gets no new lease. Both live in SQLite, changed in one
transaction each, so a restart of the tracker that serves them loses nothing; leases
carry the id of the process (boot) that serves their download, so the leases of a process
that died can be dropped by the next one.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from refresher.jobs.status import FINISHED, TOMBSTONES
from refresher.storage.removal import RemovalReason


@dataclass(frozen=True)
class Lease:
    id: str
    job_id: str


class LeaseRefused(Exception):
    """No lease: `reason` is "gone" (unknown or deleted), "not_ready" or "reserved"."""

    def __init__(self, job_id: str, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"no lease on job {job_id!r}: {reason}")


def acquire(
    conn: sqlite3.Connection, *, lease_id: str, job_id: str, boot_id: str, now: str
) -> Lease:
    """Grant a lease on a finished job that is not reserved; raise `LeaseRefused` otherwise.

    Idempotent for one `lease_id`, so a request retried after a lost reply is harmless.
    """
    if conn.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone():
        return Lease(lease_id, job_id)
    row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None or row[0] in TOMBSTONES:
        raise LeaseRefused(job_id, "gone")
    if row[0] not in FINISHED:
        raise LeaseRefused(job_id, "not_ready")
    if conn.execute("SELECT 1 FROM deletion_reservations WHERE job_id = ?", (job_id,)).fetchone():
        raise LeaseRefused(job_id, "reserved")
    conn.execute(
        "INSERT INTO leases (id, job_id, boot_id, acquired_at) VALUES (?, ?, ?, ?)",
        (lease_id, job_id, boot_id, now),
    )
    return Lease(lease_id, job_id)


def release(conn: sqlite3.Connection, lease_id: str) -> None:
    conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))


def reserve_for_deletion(conn: sqlite3.Connection, job_id: str, *, reason: str, now: str) -> bool:
    """Reserve the job for deletion if no download holds it; return whether it is reserved.

    A job already reserved stays reserved, under its first reason, except that a user's
    DELETE takes the reservation over: the job is then deleted, not left a tombstone,
    whoever finishes the removal. An unknown job is not reserved.
    """
    if conn.execute("SELECT 1 FROM deletion_reservations WHERE job_id = ?", (job_id,)).fetchone():
        if reason == RemovalReason.DELETED:
            conn.execute(
                "UPDATE deletion_reservations SET reason = ? WHERE job_id = ?", (reason, job_id)
            )
        return True
    if conn.execute("SELECT 1 FROM leases WHERE job_id = ? LIMIT 1", (job_id,)).fetchone():
        return False
    if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
        return False
    conn.execute(
        "INSERT INTO deletion_reservations (job_id, reserved_at, reason) VALUES (?, ?, ?)",
        (job_id, now, reason),
    )
    return True


def drop_other_boots(conn: sqlite3.Connection, boot_id: str) -> int:
    """Remove leases of earlier processes: their downloads died with them."""
    return conn.execute("DELETE FROM leases WHERE boot_id != ?", (boot_id,)).rowcount
