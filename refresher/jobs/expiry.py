"""Which jobs have outlived their time: finished jobs past `expires_at`, and tombstones
past their retention.

Pure queries on a `sqlite3.Connection` (run them through `Database.read`/`write`); the
janitor holds the policy of when to call them and removes expired results through
`refresher.storage.removal`. Queued and processing jobs never expire by age: a queued job
past its expiry fails instead (`Lifecycle.fail_stale`), with a reason, and keeps its row
as long as a finished one.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from refresher.jobs.status import FINISHED, TOMBSTONES, sql_list
from refresher.jobs.transitions import RemovalReason, expiry_message
from refresher.timestamps import iso


@dataclass(frozen=True)
class ExpiredJob:
    id: str
    message: str


def expired_jobs(conn: Connection, now: float) -> list[ExpiredJob]:
    """Finished jobs whose results are past `expires_at`, oldest expiry first.

    Jobs the evictor or a DELETE has reserved are left to them; queued and processing
    jobs never expire by age.
    """
    rows = conn.execute(
        text(
            f"""SELECT id, finished_at, expires_at FROM jobs
                WHERE expires_at <= :now AND status IN {sql_list(FINISHED)}
                  AND NOT EXISTS (SELECT 1 FROM deletion_reservations r
                                  WHERE r.job_id = jobs.id AND r.reason IN (:evicted, :deleted))
                ORDER BY expires_at, id"""
        ),
        {"now": iso(now), "evicted": RemovalReason.EVICTED, "deleted": RemovalReason.DELETED},
    ).fetchall()
    return [
        ExpiredJob(job_id, expiry_message(finished_at, expires_at))
        for job_id, finished_at, expires_at in rows
    ]


def purge_tombstones(conn: Connection, before: float) -> int:
    """Delete tombstones that became tombstones at or before `before`; return how many.

    A tombstone's `updated_at` is the moment it became one (nothing changes it after),
    so retention counts from when the results went away.
    """
    deleted: int = conn.execute(
        text(f"DELETE FROM jobs WHERE status IN {sql_list(TOMBSTONES)} AND updated_at <= :before"),
        {"before": iso(before)},
    ).rowcount
    return deleted
