"""What happens to a job after it ends: expiry, eviction, tombstones, and disk reconciliation.

Pure, synchronous functions shared by the janitor and the evictor, which hold the policy
of when to call them. Queries take a `sqlite3.Connection` (run them through
`Database.read`/`Database.write`); the disk functions block (run them through
`trio.to_thread`). Every decision is made from what the store and the disk say now, so a
caller killed between two calls loses nothing: the next pass finds the same facts.

Files go before rows: a job's files are removed first and only then does its row become
a tombstone (`expired` or `evicted`, no outputs, still listed with a reason), so a crash
in between leaves files-less rows that are still reserved for deletion, or orphan files,
never a row that a download trusts pointing at nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from refresher.db import FINISHED_STATUSES, TOMBSTONE_STATUSES, parse_utc_iso
from refresher.jobstore import iso
from refresher.media import PARTIAL_SUFFIX
from refresher.storage import Paths, remove_tree

LOGGER = logging.getLogger(__name__)

# Reasons given to `reserve_for_deletion`, one per kind of removal, so that an actor
# killed mid-removal finds the jobs it had reserved and finishes them. "deleted" is the
# reason of a user's DELETE.
RESERVED_EXPIRED = "expired"
RESERVED_LOST = "lost"
RESERVED_EVICTED = "evicted"
RESERVED_DELETED = "deleted"
# The janitor may finish any removal but an eviction, which the evictor owns.
JANITOR_RESERVATIONS = (RESERVED_EXPIRED, RESERVED_LOST, RESERVED_DELETED)

LOST_REASON = "The results were lost from the disk, so they can no longer be downloaded."
EVICTED_REASON = "Removed early to free space for new uploads."

_FINISHED = "(" + ", ".join(f"'{status}'" for status in FINISHED_STATUSES) + ")"
_TOMBSTONES = "(" + ", ".join(f"'{status}'" for status in TOMBSTONE_STATUSES) + ")"


def duration_words(seconds: float) -> str:
    """Say a duration the way a person would: "24 hours", "1 hour", "90 minutes"."""
    if seconds >= 3600:
        value, unit = seconds / 3600, "hour"
    elif seconds >= 60:
        value, unit = seconds / 60, "minute"
    else:
        value, unit = seconds, "second"
    text = f"{round(value, 1):g}"
    return f"{text} {unit}" if text == "1" else f"{text} {unit}s"


def _seconds_between(start: str | None, end: str) -> float | None:
    if start is None:
        return None
    return (parse_utc_iso(end) - parse_utc_iso(start)).total_seconds()


def _marks(count: int) -> str:
    return ", ".join("?" * count)


# ------------------------------------------------------------------------------ expiry


@dataclass(frozen=True)
class ExpiredJob:
    id: str
    reason: str


def expired_jobs(conn: sqlite3.Connection, now: float) -> list[ExpiredJob]:
    """Finished jobs whose results are past `expires_at`, oldest expiry first.

    Jobs the evictor has reserved are left to it; queued and processing jobs never
    expire by age.
    """
    rows = conn.execute(
        f"""SELECT id, finished_at, expires_at FROM jobs
            WHERE expires_at <= ? AND status IN {_FINISHED}
              AND NOT EXISTS (SELECT 1 FROM deletion_reservations r
                              WHERE r.job_id = jobs.id AND r.reason = ?)
            ORDER BY expires_at, id""",
        (iso(now), RESERVED_EVICTED),
    ).fetchall()
    jobs = []
    for job_id, finished_at, expires_at in rows:
        kept_s = _seconds_between(finished_at, expires_at)
        reason = (
            "Results expired."
            if kept_s is None or kept_s <= 0
            else f"Results expired {duration_words(kept_s)} after the job finished."
        )
        jobs.append(ExpiredJob(job_id, reason))
    return jobs


def fail_stale_queued(conn: sqlite3.Connection, now: float) -> list[str]:
    """Fail queued jobs past `expires_at` (they never started); return their ids.

    A failed job keeps its row as long as a finished one would (the TTL it was queued
    with, `expires_at - created_at`), so its owner sees why. Its uploads are left for
    the janitor's reconciliation, which removes uploads of every job that has ended.
    """
    stamp = iso(now)
    rows = conn.execute(
        "SELECT id, created_at, expires_at FROM jobs WHERE status = 'queued' AND expires_at <= ?",
        (stamp,),
    ).fetchall()
    failed = []
    for job_id, created_at, expires_at in rows:
        ttl_s = max(_seconds_between(created_at, expires_at) or 0.0, 0.0)
        error = (
            f"The job waited in the queue for more than {duration_words(ttl_s)} without "
            "starting; upload the videos again."
        )
        changed = conn.execute(
            """UPDATE jobs SET status = 'failed', error = ?, finished_at = ?, updated_at = ?,
                               expires_at = ?
               WHERE id = ? AND status = 'queued'""",
            (error, stamp, stamp, iso(now + ttl_s), job_id),
        ).rowcount
        if changed:
            conn.execute(
                """UPDATE job_files SET status = 'failed', error = ?, updated_at = ?
                   WHERE job_id = ? AND status IN ('queued', 'processing')""",
                (error, stamp, job_id),
            )
            failed.append(job_id)
    return failed


def tombstone(
    conn: sqlite3.Connection,
    reasons: Mapping[str, str],
    *,
    status: str,
    reserved_as: Collection[str],
    now: float,
) -> list[str]:
    """Turn finished jobs, whose files are gone, into tombstones; return the ids changed.

    `reasons` maps job id to the sentence shown to its owner. Only a job that is still
    finished and reserved for deletion under one of `reserved_as` changes: a job another
    remover owns, or one that is already a tombstone, is left as it is. The row and its
    source files stay (the list still shows the job); outputs and reservation go.
    """
    if status not in TOMBSTONE_STATUSES:
        raise ValueError(f"status must be one of {TOMBSTONE_STATUSES}, got {status!r}")
    stamp = iso(now)
    owners = _marks(len(reserved_as))
    changed = []
    for job_id, reason in reasons.items():
        updated = conn.execute(
            f"""UPDATE jobs SET status = ?, deleted_reason = ?, updated_at = ?,
                                thumbnail_path = NULL
                WHERE id = ? AND status IN {_FINISHED}
                  AND EXISTS (SELECT 1 FROM deletion_reservations r
                              WHERE r.job_id = jobs.id AND r.reason IN ({owners}))""",
            (status, reason, stamp, job_id, *reserved_as),
        ).rowcount
        if not updated:
            continue
        conn.execute("DELETE FROM output_files WHERE job_id = ?", (job_id,))
        conn.execute("UPDATE job_files SET upload_path = NULL WHERE job_id = ?", (job_id,))
        conn.execute("DELETE FROM deletion_reservations WHERE job_id = ?", (job_id,))
        changed.append(job_id)
    return changed


def purge_tombstones(conn: sqlite3.Connection, before: float) -> int:
    """Delete tombstones that became tombstones at or before `before`; return how many.

    A tombstone's `updated_at` is the moment it became one (nothing changes it after),
    so retention counts from when the results went away.
    """
    deleted: int = conn.execute(
        f"DELETE FROM jobs WHERE status IN {_TOMBSTONES} AND updated_at <= ?", (iso(before),)
    ).rowcount
    return deleted


def reserved_unfinished(conn: sqlite3.Connection, reasons: Collection[str]) -> list[str]:
    """Jobs still finished but reserved under one of `reasons`: removals a kill cut short."""
    return [
        row[0]
        for row in conn.execute(
            f"""SELECT r.job_id FROM deletion_reservations r JOIN jobs ON jobs.id = r.job_id
                WHERE r.reason IN ({_marks(len(reasons))}) AND jobs.status IN {_FINISHED}
                ORDER BY r.reserved_at, r.job_id""",
            tuple(reasons),
        )
    ]


def remove_job_files(paths: Paths, job_ids: Iterable[str]) -> list[str]:
    """Delete each job's directory and upload directory; return the ids fully removed.

    Blocking. A job whose files could not all be removed is logged and left out, so its
    row is not made a tombstone while files remain.
    """
    removed = []
    for job_id in job_ids:
        try:
            remove_tree(paths.job_dir(job_id))
            remove_tree(paths.upload_dir(job_id))
        except OSError as err:
            LOGGER.error("job=%s files could not be removed: %s", job_id, err)
            continue
        removed.append(job_id)
    return removed


# ------------------------------------------------------------------------ reconciliation


@dataclass(frozen=True)
class DiskListing:
    """Names of the entries directly under `jobs/` and `uploads/`."""

    jobs: frozenset[str]
    uploads: frozenset[str]


def list_disk(paths: Paths) -> DiskListing:
    """List the data directory's job and upload entries (blocking)."""

    def names(directory: Path) -> frozenset[str]:
        try:
            with os.scandir(directory) as entries:
                return frozenset(entry.name for entry in entries)
        except FileNotFoundError:
            return frozenset()

    return DiskListing(jobs=names(paths.jobs), uploads=names(paths.uploads))


@dataclass(frozen=True)
class StoreSnapshot:
    """What the store says about every job, for comparing with the disk."""

    statuses: dict[str, str]
    # Finished jobs not reserved for deletion: their files must all be on disk.
    settled: frozenset[str]
    # Output id and stored path of each settled job's outputs.
    outputs: dict[str, list[tuple[str, str]]]


def store_snapshot(conn: sqlite3.Connection) -> StoreSnapshot:
    # Plain tuples, not rows: tens of thousands of them, and this is a pass's hot query.
    cursor = conn.cursor()
    cursor.row_factory = None
    statuses: dict[str, str] = dict(cursor.execute("SELECT id, status FROM jobs").fetchall())
    reserved = {row[0] for row in cursor.execute("SELECT job_id FROM deletion_reservations")}
    settled = frozenset(
        job_id
        for job_id, status in statuses.items()
        if status in FINISHED_STATUSES and job_id not in reserved
    )
    outputs: dict[str, list[tuple[str, str]]] = {}
    # All outputs, filtered here: cheaper than joining jobs in SQL.
    for job_id, output_id, path in cursor.execute("SELECT job_id, id, path FROM output_files"):
        if job_id in settled:
            outputs.setdefault(job_id, []).append((output_id, path))
    return StoreSnapshot(statuses=statuses, settled=settled, outputs=outputs)


@dataclass(frozen=True)
class Findings:
    """How the disk differs from the store; `plan_reconciliation` makes it from both."""

    # Entries of no job that nothing has written to for the grace period, and job
    # directories of tombstones.
    orphans: list[Path]
    # Upload directories of jobs that have ended: the processor no longer needs them.
    ended_uploads: list[Path]
    # FFmpeg's temporary outputs left in directories of finished jobs.
    partials: list[Path]
    # Settled job id -> ids of its outputs whose file is gone (some, not all).
    missing_outputs: dict[str, list[str]]
    # Settled jobs with outputs, every one of which is gone.
    lost: list[str]


def _last_written(path: Path) -> float:
    """The newest mtime of `path` and the entries directly in it (blocking)."""
    newest = path.lstat().st_mtime
    if path.is_dir():
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                except FileNotFoundError:
                    continue
    return newest


def plan_reconciliation(
    paths: Paths,
    listing: DiskListing,
    snapshot: StoreSnapshot,
    *,
    disk_now: float,
    orphan_grace_s: float,
) -> Findings:
    """Compare the disk with the store (blocking: reads the settled jobs' directories).

    An entry under `jobs/` or `uploads/` with no row is an orphan only once nothing was
    written to it for `orphan_grace_s`: an upload directory gets its row only when the
    upload is complete, and a crash between making files and their row must not race
    with a pass. Idleness is measured by `disk_now`, the operating system's clock that
    stamps files (not the service's wall clock, which tests move). Take `listing` before
    `snapshot`, so an entry listed is judged against rows at least as new as it is.
    Queued and processing jobs are never looked into.
    """

    def idle(path: Path) -> bool:
        try:
            return disk_now - _last_written(path) >= orphan_grace_s
        except FileNotFoundError:
            return False

    orphans = []
    for name in sorted(listing.jobs):
        status = snapshot.statuses.get(name)
        if status in TOMBSTONE_STATUSES or (status is None and idle(paths.job_dir(name))):
            orphans.append(paths.job_dir(name))
    ended_uploads = []
    for name in sorted(listing.uploads):
        status = snapshot.statuses.get(name)
        if status is None and idle(paths.upload_dir(name)):
            orphans.append(paths.upload_dir(name))
        elif status is not None and status not in ("queued", "processing"):
            ended_uploads.append(paths.upload_dir(name))

    # Plain strings, not Paths, in this loop over every finished job: it is the hot part
    # of a pass, and pathlib's parsing costs more than the directory reads.
    jobs_root = os.fspath(paths.jobs)
    jobs_prefix = paths.relative(paths.jobs)
    partials: list[Path] = []
    missing_outputs: dict[str, list[str]] = {}
    lost = []
    for job_id in sorted(snapshot.settled):
        names: set[str] = set()
        # Read even when the listing had no such directory: it may have been made since.
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            names = set(os.listdir(f"{jobs_root}/{job_id}"))
        partials.extend(
            paths.job_dir(job_id) / name for name in sorted(names) if name.endswith(PARTIAL_SUFFIX)
        )
        outputs = snapshot.outputs.get(job_id, [])
        missing = []
        own_dir = f"{jobs_prefix}/{job_id}"
        for output_id, stored in outputs:
            parent, _, name = stored.rpartition("/")
            present = name in names if parent == own_dir else os.path.lexists(paths.root / stored)
            if not present:
                missing.append(output_id)
        if missing and len(missing) == len(outputs):
            lost.append(job_id)
        elif missing:
            missing_outputs[job_id] = missing
    return Findings(orphans, ended_uploads, partials, missing_outputs, lost)


def remove_paths(paths: Iterable[Path]) -> int:
    """Delete each file or directory tree; return how many went (blocking).

    One that cannot be removed is logged and skipped: the next pass tries again.
    """
    removed = 0
    for path in paths:
        try:
            if path.is_dir() and not path.is_symlink():
                remove_tree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as err:
            LOGGER.error("could not remove %s: %s", path, err)
            continue
        removed += 1
    return removed


def clear_ended_uploads(conn: sqlite3.Connection) -> int:
    """Forget upload paths of jobs that have ended (after their directories went)."""
    cleared: int = conn.execute(
        """UPDATE job_files SET upload_path = NULL
           WHERE upload_path IS NOT NULL AND job_id IN
               (SELECT id FROM jobs WHERE status NOT IN ('queued', 'processing'))"""
    ).rowcount
    return cleared


def forget_outputs(conn: sqlite3.Connection, missing: Mapping[str, Collection[str]]) -> int:
    """Delete the rows of outputs whose files are gone and recount each file's outputs."""
    forgotten = 0
    for job_id, output_ids in missing.items():
        forgotten += conn.execute(
            f"DELETE FROM output_files WHERE job_id = ? AND id IN ({_marks(len(output_ids))})",
            (job_id, *output_ids),
        ).rowcount
        conn.execute(
            """UPDATE job_files SET completed_variations =
                   (SELECT count(*) FROM output_files o WHERE o.job_file_id = job_files.id)
               WHERE job_id = ?""",
            (job_id,),
        )
    return forgotten


# ---------------------------------------------------------------------------- eviction


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


def statvfs_usage(path: Path) -> tuple[int, int]:
    """The volume holding `path`: (used bytes, bytes an unprivileged writer may fill).

    Used over usable is what `df` shows as Use%: blocks kept for root count as neither.
    """
    stats = os.statvfs(path)
    used = (stats.f_blocks - stats.f_bfree) * stats.f_frsize
    return used, used + stats.f_bavail * stats.f_frsize


@dataclass(frozen=True)
class Candidate:
    job_id: str
    nbytes: int


def eviction_candidates(conn: sqlite3.Connection) -> list[Candidate]:
    """Finished jobs that hold bytes, oldest finish first: the order of eviction.

    Jobs reserved for deletion are already on their way out, and jobs a download leases
    would be refused anyway, so neither is offered; the reservation still decides.
    """
    rows = conn.execute(
        f"""SELECT id,
                   coalesce((SELECT sum(size) FROM output_files o WHERE o.job_id = jobs.id), 0)
                 + coalesce((SELECT sum(file_size) FROM job_files f
                             WHERE f.job_id = jobs.id AND f.upload_path IS NOT NULL), 0)
                   AS nbytes
            FROM jobs
            WHERE status IN {_FINISHED}
              AND NOT EXISTS (SELECT 1 FROM deletion_reservations r WHERE r.job_id = jobs.id)
              AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.job_id = jobs.id)
            ORDER BY finished_at, id"""
    ).fetchall()
    return [Candidate(job_id, int(nbytes)) for job_id, nbytes in rows if nbytes > 0]
