"""The work queue: workers claim a job's source files one at a time, under a heartbeat.

A worker claims one source file (the variations still to make) with `claim_next`: a
file nobody holds, or whose holder stopped renewing, of the job served longest ago (one
never served first, then the oldest), so jobs take turns batch by batch: a worker gives
its claim back after a batch when another job waits (`others_waiting`), and a small job
submitted behind a big one starts within one batch instead of after the whole big one.
The claim carries a `token`, unique to it and part of the name of every file its work
writes (`refresher.storage.paths`), and lasts `ttl_s` by the store's clock
unless renewed (`renew`, every third of it). A worker that dies renews nothing, so its
claim lapses and another worker takes the file over, resuming after the last batch
recorded; a batch is recorded only under a claim that is still its writer's (`hold`),
so a worker that merely stalled can never record over the one that took over.

A file ends under its claim (`end_file`); the job ends with the write that ends its last
file, or, once cancelled, with the write that gives back its last live claim
(`release`), or when a look finds it cancelled with no live claim (`settle`). Every
write here locks the job's row first, so two workers ending the job's last two files at
once see each other, and locks are always taken job first, then file.

Each function takes a store connection inside one write transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from refresher.jobs import transitions
from refresher.jobs.records import FileRecord, JobRecord, load_job
from refresher.jobs.status import ACTIVE, FINISHED, JobStatus, sql_list
from refresher.store.sql import dialect
from refresher.timestamps import iso

# A claim not renewed for this long is another worker's to take (by the store's clock).
CLAIM_TTL_S = 30.0
# Renewals per time to live: a renewal that finds the store busy has two more goes.
RENEWALS_PER_TTL = 3
# Candidates `claim_next` looks at when others take them first, before giving up.
CLAIM_ATTEMPTS = 20


class ClaimLost(Exception):
    """The claim lapsed and another worker took the file over: this one's work is void."""

    def __init__(self, file_id: str) -> None:
        self.file_id = file_id
        super().__init__(f"the claim on file {file_id!r} was taken over")


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one source file of a job, as the store had them when taken."""

    token: str
    worker: str
    job: JobRecord
    file: FileRecord
    # Whether this claim started the job (it was queued until now).
    started_job: bool


@dataclass(frozen=True)
class Ended:
    """A job that a write here ended, with its reason for its owner (if any)."""

    job_id: str
    status: JobStatus
    error: str | None


def _claimable(conn: Connection, alias: str = "") -> str:
    """The condition of a file nobody holds: unclaimed, or its claim lapsed."""
    column = f"{alias}." if alias else ""
    return (
        f"{column}status IN {sql_list(ACTIVE)} AND ({column}claimed_until IS NULL "
        f"OR {column}claimed_until < {dialect(conn).now_s})"
    )


def _lock_job(conn: Connection, job_id: str) -> tuple[str, str | None] | None:
    """The job's (status, cancelled_at), its row locked until the transaction ends."""
    row = conn.execute(
        text(f"SELECT status, cancelled_at FROM jobs WHERE id = :job_id{dialect(conn).for_update}"),
        {"job_id": job_id},
    ).first()
    return None if row is None else (row[0], row[1])


# The order jobs are served in: turns (the job served longest ago, one never served
# first), or one after another (oldest first).
ORDERS = {
    "fair": "j.served_at IS NOT NULL, j.served_at, j.created_at, j.id, f.position",
    "fifo": "j.created_at, j.id, f.position",
}


def claim_next(
    conn: Connection, *, worker: str, token: str, ttl_s: float, now: float, order: str = "fair"
) -> Claim | None:
    """Claim the next file to work on for `ttl_s`, in `order` (`ORDERS`); None when no
    file waits."""
    for _ in range(CLAIM_ATTEMPTS):
        job_id = conn.execute(
            text(
                f"""SELECT f.job_id FROM job_files f JOIN jobs j ON j.id = f.job_id
                    WHERE j.status IN {sql_list(ACTIVE)} AND j.cancelled_at IS NULL
                      AND {_claimable(conn, "f")}
                    ORDER BY {ORDERS[order]}
                    LIMIT 1"""
            )
        ).scalar()
        if job_id is None:
            return None
        locked = _lock_job(conn, job_id)
        if locked is None or locked[0] not in ACTIVE or locked[1] is not None:
            continue  # it ended or was cancelled meanwhile
        # Another worker may hold the file just looked at by now: take the next one free.
        file_id = conn.execute(
            text(
                f"""SELECT id FROM job_files WHERE job_id = :job_id AND {_claimable(conn)}
                    ORDER BY position LIMIT 1{dialect(conn).skip_locked}"""
            ),
            {"job_id": job_id},
        ).scalar()
        if file_id is None:
            continue
        stamp = iso(now)
        conn.execute(
            text(
                f"""UPDATE job_files SET status = :processing, claimed_by = :worker,
                                         claim_token = :token, updated_at = :now,
                                         claimed_until = {dialect(conn).now_s} + :ttl_s
                    WHERE id = :file_id"""
            ),
            {"processing": JobStatus.PROCESSING, "worker": worker, "token": token,
             "now": stamp, "ttl_s": ttl_s, "file_id": file_id},
        )  # fmt: skip
        conn.execute(
            text(f"UPDATE jobs SET served_at = {dialect(conn).now_s} WHERE id = :job_id"),
            {"job_id": job_id},
        )
        started = conn.execute(
            text(
                """UPDATE jobs SET status = :processing, updated_at = :now
                   WHERE id = :job_id AND status = :queued"""
            ),
            {"processing": JobStatus.PROCESSING, "queued": JobStatus.QUEUED, "now": stamp,
             "job_id": job_id},
        ).rowcount  # fmt: skip
        job = load_job(conn, job_id)
        assert job is not None  # locked above
        (file,) = (file for file in job.files if file.id == file_id)
        return Claim(token, worker, job, file, started_job=bool(started))
    return None


def others_waiting(conn: Connection, job_id: str) -> bool:
    """Whether a file of another job waits to be claimed: then the worker on this one
    gives its claim back after its batch, and the queue serves the other job next."""
    waiting = conn.execute(
        text(
            f"""SELECT 1 FROM job_files f JOIN jobs j ON j.id = f.job_id
                WHERE j.id <> :job_id AND j.status IN {sql_list(ACTIVE)}
                  AND j.cancelled_at IS NULL AND {_claimable(conn, "f")}
                LIMIT 1"""
        ),
        {"job_id": job_id},
    ).first()
    return waiting is not None


def hold(conn: Connection, file_id: str, token: str, ttl_s: float) -> None:
    """Renew the claim for `ttl_s` and keep its row locked for the rest of the transaction;
    raise `ClaimLost` if it is not this claim's any more."""
    renewed = conn.execute(
        text(
            f"""UPDATE job_files SET claimed_until = {dialect(conn).now_s} + :ttl_s
                WHERE id = :file_id AND claim_token = :token"""
        ),
        {"ttl_s": ttl_s, "file_id": file_id, "token": token},
    ).rowcount
    if not renewed:
        raise ClaimLost(file_id)


def renew(conn: Connection, file_id: str, token: str, ttl_s: float) -> bool:
    """Push the claim's end on by `ttl_s`; return whether the claim is still this one's."""
    try:
        hold(conn, file_id, token, ttl_s)
    except ClaimLost:
        return False
    return True


def save_progress(conn: Connection, file_id: str, token: str, progress: float, now: float) -> None:
    """Record the file's progress, if the claim is still this one's."""
    conn.execute(
        text(
            """UPDATE job_files SET progress = :progress, updated_at = :now
               WHERE id = :file_id AND claim_token = :token"""
        ),
        {"progress": progress, "now": iso(now), "file_id": file_id, "token": token},
    )


def end_file(
    conn: Connection,
    claim: Claim,
    *,
    status: JobStatus,
    progress: float,
    error: str | None,
    now: float,
    ttl_s: float,
) -> Ended | None:
    """End the claimed file with `status` and give the claim back; return the job's end if
    this ended it. Raise `ClaimLost` if the claim is not this one's any more."""
    if status not in FINISHED:
        raise ValueError(f"a file ends {sql_list(FINISHED)}, not {status!r}")
    _lock_job(conn, claim.job.id)
    ended = conn.execute(
        text(
            """UPDATE job_files SET status = :status, progress = :progress, error = :error,
                                    updated_at = :now, claimed_by = NULL,
                                    claim_token = NULL, claimed_until = NULL
               WHERE id = :file_id AND claim_token = :token"""
        ),
        {"status": status, "progress": progress, "error": error, "now": iso(now),
         "file_id": claim.file.id, "token": claim.token},
    ).rowcount  # fmt: skip
    if not ended:
        raise ClaimLost(claim.file.id)
    return settle(conn, claim.job.id, now=now, ttl_s=ttl_s)


def release(conn: Connection, claim: Claim, *, now: float, ttl_s: float) -> Ended | None:
    """Give the claim back with the file unfinished (a stop, a cancel); return the job's
    end if that ended it (a cancelled job whose last live claim this was)."""
    _lock_job(conn, claim.job.id)
    conn.execute(
        text(
            """UPDATE job_files SET claimed_by = NULL, claim_token = NULL, claimed_until = NULL
               WHERE id = :file_id AND claim_token = :token"""
        ),
        {"file_id": claim.file.id, "token": claim.token},
    )
    return settle(conn, claim.job.id, now=now, ttl_s=ttl_s)


def settle(conn: Connection, job_id: str, *, now: float, ttl_s: float) -> Ended | None:
    """End the job if nothing is left to do in it: every file ended, or it was cancelled
    and no live claim remains (files not begun are cancelled). Return its end, if so."""
    locked = _lock_job(conn, job_id)
    if locked is None or locked[0] != JobStatus.PROCESSING:
        return None
    live = conn.execute(
        text(
            f"""SELECT count(*) FROM job_files WHERE job_id = :job_id
                AND claim_token IS NOT NULL AND claimed_until >= {dialect(conn).now_s}"""
        ),
        {"job_id": job_id},
    ).scalar_one()
    if live:
        return None
    status_of: dict[str, int] = {
        status: count
        for status, count in conn.execute(
            text("SELECT status, count(*) FROM job_files WHERE job_id = :job_id GROUP BY status"),
            {"job_id": job_id},
        )
    }
    error = None
    if locked[1] is not None:
        status = JobStatus.CANCELLED
    elif any(status_of.get(status) for status in ACTIVE):
        return None
    elif set(status_of) == {JobStatus.FAILED}:
        status = JobStatus.FAILED
        error = "Every video failed: " + "; ".join(
            f"{name}: {reason}"
            for name, reason in conn.execute(
                text(
                    """SELECT original_name, error FROM job_files WHERE job_id = :job_id
                       ORDER BY position"""
                ),
                {"job_id": job_id},
            )
        )
    else:
        status = JobStatus.COMPLETED
    transitions.finish_job(conn, job_id, status=status, error=error, now=now, ttl_s=ttl_s)
    # Claims of workers that died in it are void now.
    conn.execute(
        text(
            """UPDATE job_files SET claimed_by = NULL, claim_token = NULL, claimed_until = NULL
               WHERE job_id = :job_id AND claim_token IS NOT NULL"""
        ),
        {"job_id": job_id},
    )
    return Ended(job_id, status, error)


def cancelled_unheld(conn: Connection) -> list[str]:
    """Jobs being processed that were cancelled and that no worker holds any more: for
    `settle`, where the worker that held them died before it could."""
    return list(
        conn.execute(
            text(
                f"""SELECT id FROM jobs WHERE status = :processing AND cancelled_at IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM job_files f WHERE f.job_id = jobs.id
                        AND f.claim_token IS NOT NULL
                        AND f.claimed_until >= {dialect(conn).now_s})"""
            ),
            {"processing": JobStatus.PROCESSING},
        ).scalars()
    )


def drop_all(conn: Connection) -> list[str]:
    """Give back every claim, for a store one process owns: at its start, every claim is
    an earlier run's, whose work died with it. Return the jobs they were in."""
    jobs = list(
        conn.execute(
            text("SELECT DISTINCT job_id FROM job_files WHERE claim_token IS NOT NULL")
        ).scalars()
    )
    conn.execute(
        text(
            """UPDATE job_files SET claimed_by = NULL, claim_token = NULL, claimed_until = NULL
               WHERE claim_token IS NOT NULL"""
        )
    )
    return jobs
