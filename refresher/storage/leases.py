"""Download leases and deletion reservations, kept in the store.

A lease says "a download is reading this job's files"; a reservation says "this job is
about to be deleted". They exclude each other: a reservation is granted only while a job
has no live lease, and a reserved job gets no new lease. Both are changed in one
transaction each, with the job's row locked where several processes share the store, so
a lease and a reservation can never both be granted.

A lease names its holder (the process that serves the download) and lives until
`expires_at`, by the database's clock, which its holder pushes on while the download
runs (`renew`). A holder that dies renews nothing: its leases lapse within their time
to live, and then count for nothing.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import Connection, text

from refresher.jobs.status import FINISHED, TOMBSTONES
from refresher.jobs.transitions import RemovalReason
from refresher.store.sql import dialect, in_list


@dataclass(frozen=True)
class Lease:
    id: str
    job_id: str


class LeaseRefused(Exception):
    """No lease: `reason` is "gone" (unknown, deleted, expired or evicted) or
    "reserved" (about to be deleted)."""

    def __init__(self, job_id: str, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"no lease on job {job_id!r}: {reason}")


def _lock_job(conn: Connection, job_id: str) -> str | None:
    """The job's status, its row locked until the transaction ends; None if unknown."""
    status: str | None = conn.execute(
        text(f"SELECT status FROM jobs WHERE id = :job_id{dialect(conn).for_update}"),
        {"job_id": job_id},
    ).scalar()
    return status


def acquire(
    conn: Connection, *, lease_id: str, job_id: str, holder: str, now: str, ttl_s: float
) -> Lease:
    """Grant a lease, for `ttl_s` by the database's clock, on a job whose results are
    there and not reserved; raise `LeaseRefused` otherwise. A running job's recorded
    variations are read too (they play as soon as they are recorded).

    Idempotent for one `lease_id`, so a request retried after a lost reply is harmless.
    """
    known = {"lease_id": lease_id}
    if conn.execute(text("SELECT 1 FROM leases WHERE id = :lease_id"), known).first():
        return Lease(lease_id, job_id)
    status = _lock_job(conn, job_id)
    if status is None or status in TOMBSTONES:
        raise LeaseRefused(job_id, "gone")
    reserved = conn.execute(
        text("SELECT 1 FROM deletion_reservations WHERE job_id = :job_id"), {"job_id": job_id}
    ).first()
    if reserved:
        raise LeaseRefused(job_id, "reserved")
    conn.execute(
        text(
            f"""INSERT INTO leases (id, job_id, holder, acquired_at, expires_at)
                VALUES (:lease_id, :job_id, :holder, :now, {dialect(conn).now_s} + :ttl_s)"""
        ),
        {"lease_id": lease_id, "job_id": job_id, "holder": holder, "now": now, "ttl_s": ttl_s},
    )
    return Lease(lease_id, job_id)


def renew(conn: Connection, lease_ids: Collection[str], *, ttl_s: float) -> int:
    """Push the leases' end `ttl_s` past the database's clock now; return how many."""
    if not lease_ids:
        return 0
    statement = text(
        f"UPDATE leases SET expires_at = {dialect(conn).now_s} + :ttl_s WHERE id IN :ids"
    ).bindparams(in_list("ids"))
    renewed: int = conn.execute(statement, {"ttl_s": ttl_s, "ids": list(lease_ids)}).rowcount
    return renewed


def release(conn: Connection, lease_id: str) -> None:
    conn.execute(text("DELETE FROM leases WHERE id = :lease_id"), {"lease_id": lease_id})


def live(conn: Connection, job_id: str) -> bool:
    """Whether a lease on the job is still live."""
    return (
        conn.execute(
            text(
                f"""SELECT 1 FROM leases
                    WHERE job_id = :job_id AND expires_at > {dialect(conn).now_s} LIMIT 1"""
            ),
            {"job_id": job_id},
        ).first()
        is not None
    )


def reserve_for_deletion(conn: Connection, job_id: str, *, reason: str, now: str) -> bool:
    """Reserve the job for deletion if no download holds it; return whether it is reserved.

    A job already reserved stays reserved, under its first reason, except that a user's
    DELETE takes the reservation over: the job is then deleted, not left a tombstone,
    whoever finishes the removal. An unknown job is not reserved, nor, but for a DELETE,
    one that is not finished (a tombstone's results went already).
    """
    job = {"job_id": job_id}
    status = _lock_job(conn, job_id)
    if status is None:
        return False
    if reason != RemovalReason.DELETED and status not in FINISHED:
        # Only finished jobs have results to expire or evict; a tombstone's are gone
        # already (another remover got there first), and a DELETE alone removes its row.
        return False
    if conn.execute(
        text("SELECT 1 FROM deletion_reservations WHERE job_id = :job_id"), job
    ).first():
        if reason == RemovalReason.DELETED:
            conn.execute(
                text("UPDATE deletion_reservations SET reason = :reason WHERE job_id = :job_id"),
                {"reason": reason, **job},
            )
        return True
    if live(conn, job_id):
        return False
    conn.execute(
        text(
            """INSERT INTO deletion_reservations (job_id, reserved_at, reason)
               VALUES (:job_id, :now, :reason)"""
        ),
        {"now": now, "reason": reason, **job},
    )
    return True


def drop_lapsed(conn: Connection) -> int:
    """Remove leases past their end (their holders died or forgot them); return how many."""
    dropped: int = conn.execute(
        text(f"DELETE FROM leases WHERE expires_at <= {dialect(conn).now_s}")
    ).rowcount
    return dropped


def drop_other_holders(conn: Connection, holder: str) -> int:
    """Remove leases of every other holder: for a store only one process uses, where
    they are an earlier run's, whose downloads died with it."""
    dropped: int = conn.execute(
        text("DELETE FROM leases WHERE holder != :holder"), {"holder": holder}
    ).rowcount
    return dropped
