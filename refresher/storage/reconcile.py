"""Reconciliation: where the stored blobs and the store disagree, and putting it right.

The janitor lists the blobs (files, or a bucket's objects), reads a snapshot of the
store, and `plan_reconciliation` compares them: entries under `jobs/` or `uploads/` that
belong to no job (once idle), uploads of jobs that ended, FFmpeg's partial files left in
finished jobs' directories, and outputs whose blobs vanished. Removing strays and
forgetting vanished outputs are separate steps, blobs first, so a pass killed anywhere is
finished by the next one. A finished job that lost every output is removed through
`refresher.storage.removal`.

Queries take a store connection; the blob functions block (run them in a thread).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, text

from refresher.jobs.outputstore import keep_archive_size
from refresher.jobs.status import ACTIVE, FINISHED, RETRYABLE, TOMBSTONES, JobStatus, sql_list
from refresher.media.ffmpeg import PARTIAL_SUFFIX
from refresher.storage.blobs import BlobStore, LocalBlobs
from refresher.storage.paths import STILLS, Paths
from refresher.store.sql import in_list

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiskListing:
    """Names of the entries directly under `jobs/` and `uploads/`."""

    jobs: frozenset[str]
    uploads: frozenset[str]


def list_disk(blobs: BlobStore, paths: Paths) -> DiskListing:
    """List the job and upload entries of the stored blobs (blocking)."""
    return DiskListing(jobs=blobs.entries(paths.jobs), uploads=blobs.entries(paths.uploads))


@dataclass(frozen=True)
class StoreSnapshot:
    """What the store says about every job, for comparing with the disk."""

    statuses: dict[str, str]
    # Finished jobs not reserved for deletion: their files must all be on disk.
    settled: frozenset[str]
    # Output id and stored path of each settled job's outputs.
    outputs: dict[str, list[tuple[str, str]]]
    # Every stored path a settled job's rows name: outputs, stills, its thumbnail.
    named: dict[str, set[str]]
    # Ended jobs that keep failed files' sources for a retry: their upload folders stay.
    keeping_sources: frozenset[str] = frozenset()


def store_snapshot(conn: Connection) -> StoreSnapshot:
    statuses = job_statuses(conn)
    reserved = set(conn.execute(text("SELECT job_id FROM deletion_reservations")).scalars())
    settled = frozenset(
        job_id
        for job_id, status in statuses.items()
        if status in FINISHED and job_id not in reserved
    )
    outputs: dict[str, list[tuple[str, str]]] = {}
    named: dict[str, set[str]] = {}
    # All rows, filtered here: cheaper than joining jobs in SQL.
    for job_id, output_id, path, still in conn.execute(
        text("SELECT job_id, id, path, still_path FROM output_files")
    ):
        if job_id in settled:
            outputs.setdefault(job_id, []).append((output_id, path))
            named.setdefault(job_id, set()).update((path, still))
    for job_id, still in conn.execute(
        text("SELECT job_id, still_path FROM job_files WHERE still_path IS NOT NULL")
    ):
        if job_id in settled:
            named.setdefault(job_id, set()).add(still)
    for job_id, thumbnail in conn.execute(
        text("SELECT id, thumbnail_path FROM jobs WHERE thumbnail_path IS NOT NULL")
    ):
        if job_id in settled:
            named.setdefault(job_id, set()).add(thumbnail)
    keeping = frozenset(
        conn.execute(
            text(
                f"""SELECT DISTINCT f.job_id FROM job_files f JOIN jobs j ON j.id = f.job_id
                    WHERE f.upload_path IS NOT NULL AND f.status = :failed
                      AND j.status IN {sql_list(RETRYABLE)}"""
            ),
            {"failed": JobStatus.FAILED},
        ).scalars()
    )
    return StoreSnapshot(
        statuses=statuses, settled=settled, outputs=outputs, named=named, keeping_sources=keeping
    )


@dataclass(frozen=True)
class Findings:
    """How the disk differs from the store; `plan_reconciliation` makes it from both."""

    # Entries of no job that nothing has written to for the grace period, and job
    # directories of tombstones.
    orphans: list[Path]
    # Upload directories of jobs that have ended: the processor no longer needs them.
    ended_uploads: list[Path]
    # What no row names in directories of finished jobs: FFmpeg's temporary outputs, and
    # the kept files of work whose rows were never written (a worker killed between).
    partials: list[Path]
    # Settled job id -> ids of its outputs whose file is gone (some, not all).
    missing_outputs: dict[str, list[str]]
    # Settled jobs with outputs, every one of which is gone.
    lost: list[str]


def plan_reconciliation(
    blobs: BlobStore,
    paths: Paths,
    listing: DiskListing,
    snapshot: StoreSnapshot,
    *,
    disk_now: float,
    orphan_grace_s: float,
    process_started: float | None = None,
) -> Findings:
    """Compare the disk with the store (blocking: reads the settled jobs' directories).

    An entry under `jobs/` or `uploads/` with no row is an orphan only once nothing was
    written to it for `orphan_grace_s`: an upload directory gets its row only when the
    upload is complete, and a crash between making files and their row must not race
    with a pass. Idleness is measured by `disk_now`, the operating system's clock that
    stamps files (not the service's wall clock, which tests move). Take `listing` before
    `snapshot`, so an entry listed is judged against rows at least as new as it is.
    Queued and processing jobs are never looked into. With `process_started` (the same
    clock, when this process started), an entry with no row last written before then is
    an orphan at once: no upload of this process made it, so one that died did (a partial
    upload left by a crash need not wait out the grace).
    """

    def idle(path: Path) -> bool:
        try:
            written = blobs.last_written(path)
        except FileNotFoundError:
            return False
        if process_started is not None and written < process_started:
            return True
        return disk_now - written >= orphan_grace_s

    orphans = []
    for name in sorted(listing.jobs):
        status = snapshot.statuses.get(name)
        if status in TOMBSTONES or (status is None and idle(paths.job_dir(name))):
            orphans.append(paths.job_dir(name))
    ended_uploads = []
    for name in sorted(listing.uploads):
        status = snapshot.statuses.get(name)
        if status is None and idle(paths.upload_dir(name)):
            orphans.append(paths.upload_dir(name))
        elif status is not None and status not in ACTIVE and name not in snapshot.keeping_sources:
            ended_uploads.append(paths.upload_dir(name))

    # Plain strings, not Paths, in this loop over every finished job where it can: it is
    # the hot part of a pass, and pathlib's parsing costs more than the directory reads.
    jobs_prefix = paths.relative(paths.jobs)
    partials: list[Path] = []
    missing_outputs: dict[str, list[str]] = {}
    lost = []
    for job_id in sorted(snapshot.settled):
        # Read even when the listing had no such directory: it may have been made since.
        names = blobs.entries(paths.job_dir(job_id))
        own_dir = f"{jobs_prefix}/{job_id}"
        named = snapshot.named.get(job_id, set())
        folder = paths.job_dir(job_id)
        in_stills = blobs.entries(folder / STILLS) if STILLS in names else frozenset()
        unnamed = [
            folder / name
            for name in sorted(names)
            if name != STILLS and f"{own_dir}/{name}" not in named
        ]
        unnamed += [
            folder / STILLS / name
            for name in sorted(in_stills)
            if f"{own_dir}/{STILLS}/{name}" not in named
        ]
        # FFmpeg's partial files at once; anything else once idle: a row may be on its way.
        partials.extend(
            path for path in unnamed if path.name.endswith(PARTIAL_SUFFIX) or idle(path)
        )
        outputs = snapshot.outputs.get(job_id, [])
        missing = []
        for output_id, stored in outputs:
            parent, _, name = stored.rpartition("/")
            present = name in names if parent == own_dir else blobs.exists(paths.root / stored)
            if not present:
                missing.append(output_id)
        if missing and len(missing) == len(outputs):
            lost.append(job_id)
        elif missing:
            missing_outputs[job_id] = missing
    return Findings(orphans, ended_uploads, partials, missing_outputs, lost)


# How long a local copy with no row must sit unwritten before a worker that starts
# clears it from its scratch space (an upload arriving at a web process in the same
# data directory has no row yet).
SCRATCH_IDLE_S = 3600.0


def job_statuses(conn: Connection) -> dict[str, str]:
    return {job_id: status for job_id, status in conn.execute(text("SELECT id, status FROM jobs"))}


def scratch_leftovers(
    paths: Paths, statuses: Mapping[str, str], *, disk_now: float, idle_s: float
) -> list[Path]:
    """Local copies no running job needs, in a data directory that is scratch space (the
    bytes kept in a bucket): of jobs that ended at once, and of no job once nothing wrote
    to them for `idle_s` (an upload still arriving has no row yet). Blocking."""
    local = LocalBlobs(paths)
    found = []
    # A resumable upload's pieces are named by the upload, never a job: idle ones only.
    for folder in (paths.jobs, paths.uploads, paths.resumable):
        for name in sorted(local.entries(folder)):
            status = statuses.get(name)
            if status in ACTIVE:
                continue
            try:
                written = local.last_written(folder / name)
            except FileNotFoundError:
                continue
            if status is not None or disk_now - written >= idle_s:
                found.append(folder / name)
    return found


def clear_scratch(paths: Paths, statuses: Mapping[str, str], idle_s: float = SCRATCH_IDLE_S) -> int:
    """Remove `scratch_leftovers` from a scratch data directory; how many went (blocking)."""
    leftovers = scratch_leftovers(paths, statuses, disk_now=time.time(), idle_s=idle_s)
    return remove_paths(LocalBlobs(paths), leftovers)


def remove_paths(blobs: BlobStore, paths: Iterable[Path]) -> int:
    """Delete each blob or folder of blobs; return how many went (blocking).

    One that cannot be removed is logged and skipped: the next pass tries again.
    """
    removed = 0
    for path in paths:
        try:
            blobs.remove(path)
        except Exception as err:  # a bucket's errors are not OSErrors
            LOGGER.error("could not remove %s: %s", path, err)
            continue
        removed += 1
    return removed


def clear_ended_uploads(conn: Connection) -> int:
    """Forget upload paths of jobs that have ended (after their directories went)."""
    cleared: int = conn.execute(
        text(
            f"""UPDATE job_files SET upload_path = NULL
                WHERE upload_path IS NOT NULL AND job_id IN
                    (SELECT id FROM jobs WHERE status NOT IN {sql_list(ACTIVE)})
                  AND NOT (status = :failed AND job_id IN
                    (SELECT id FROM jobs WHERE status IN {sql_list(RETRYABLE)}))"""
        ),
        {"failed": JobStatus.FAILED},
    ).rowcount
    return cleared


def forget_outputs(conn: Connection, missing: Mapping[str, Collection[str]]) -> int:
    """Delete the rows of outputs whose files are gone, recount each file's outputs, and
    keep the size of the job's now smaller archive."""
    forgotten = 0
    for job_id, output_ids in missing.items():
        forgotten += conn.execute(
            text("DELETE FROM output_files WHERE job_id = :job_id AND id IN :ids").bindparams(
                in_list("ids")
            ),
            {"job_id": job_id, "ids": list(output_ids)},
        ).rowcount
        conn.execute(
            text(
                """UPDATE job_files SET completed_variations =
                       (SELECT count(*) FROM output_files o WHERE o.job_file_id = job_files.id)
                   WHERE job_id = :job_id"""
            ),
            {"job_id": job_id},
        )
        keep_archive_size(conn, job_id)
    return forgotten


def named_paths(conn: Connection) -> list[str]:
    """Every stored path a row names: uploads, outputs, stills, thumbnails."""
    rows = conn.execute(
        text(
            """SELECT path FROM output_files UNION SELECT still_path FROM output_files
               UNION SELECT still_path FROM job_files UNION SELECT upload_path FROM job_files
               UNION SELECT thumbnail_path FROM jobs"""
        )
    ).scalars()
    return sorted(path for path in rows if path is not None)


def adopt_local_files(blobs: BlobStore, paths: Paths, named: Iterable[str]) -> int:
    """Keep in `blobs` (a bucket) the files rows name that are still only in the data
    directory: what a service kept on its volume before STORAGE_URL was set. Without this
    its finished jobs would look lost to the first reconciliation. Rows name only whole
    files, so nothing half-written is sent; a file the bucket has already is left (a
    worker's fetched copy). Return how many were kept (blocking)."""
    adopted = 0
    for stored in named:
        path = paths.absolute(stored)
        if not path.is_file() or blobs.exists(path):
            continue
        blobs.keep(path)
        adopted += 1
    return adopted
