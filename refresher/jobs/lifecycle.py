"""Every change of a job's status, as the service makes it: the write, the event that
tells every open stream, and the metric, together, in one place.

| change | who asks | write (`refresher.jobs.transitions`) | event | metric |
|---|---|---|---|---|
| `queue` | an upload | `insert_job` | queued | uploaded bytes |
| `start_next` | the processor | `claim_next` | processing | |
| `requeue_interrupted` | the processor, on start | `requeue_interrupted` | | |
| `cancel` | a user | `request_cancel` (a queued job ends at once) | cancelled | jobs finished |
| `finish` | the processor | `finish_job`, then its uploads go | its status | jobs finished |
| `fail_stale` | the janitor | `fail_stale_queued` | failed | jobs finished |
| `retire` | the removal flow | `retire` | expired, evicted, deleted | removals |

A job's end (`finish`, and a queued job's `cancel`) removes its uploads, files before
rows. Writes that must land wait for room on a full storage (`write_when_room`); a
`holding` shield around the caller is lifted then, so a full disk never holds up a stop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import trio

from refresher import metrics
from refresher.db import Database, write_when_room
from refresher.jobs import records, transitions
from refresher.jobs.events import DELETED, Publish, nobody_listens, status_event
from refresher.jobs.records import JobRecord
from refresher.jobs.status import JobStatus
from refresher.jobs.transitions import NewFile, RemovalReason
from refresher.storage.paths import Paths, remove_tree

LOGGER = logging.getLogger(__name__)


class Lifecycle:
    """Changes jobs' statuses in `db`, telling `publish` (the event hub) of each."""

    def __init__(
        self,
        db: Database,
        paths: Paths,
        *,
        now: Callable[[], float],
        ttl_s: float,
        publish: Publish = nobody_listens,
    ) -> None:
        self.db = db
        self.paths = paths
        self.now = now
        self.ttl_s = ttl_s
        self.publish = publish

    async def queue(
        self,
        *,
        job_id: str,
        files: Sequence[NewFile],
        variations_per_video: int,
        seed: int,
        strength: str,
        mirror: bool,
    ) -> None:
        """Record an uploaded job as queued and announce it. Raise `StorageFull` when the
        store has no room for its rows."""
        moment = self.now()
        await self.db.write(
            lambda conn: transitions.insert_job(
                conn, job_id=job_id, files=list(files),
                variations_per_video=variations_per_video, seed=seed, now=moment,
                ttl_s=self.ttl_s, strength=strength, mirror=mirror,
            )
        )  # fmt: skip
        self.publish(status_event(job_id, JobStatus.QUEUED))
        metrics.UPLOADED_BYTES.inc(sum(file.file_size for file in files))

    async def requeue_interrupted(self) -> list[str]:
        """Put jobs a run left `processing` back in the queue (waiting for room); return
        their ids."""
        return await write_when_room(
            self.db,
            lambda conn: transitions.requeue_interrupted(conn, self.now()),
            what="requeueing interrupted jobs",
        )

    async def start_next(self) -> JobRecord | None:
        """Take the oldest queued job, now `processing`, announced; None if none waits."""
        job = await write_when_room(
            self.db,
            lambda conn: transitions.claim_next(conn, self.now()),
            what="claiming the next job",
        )
        if job is not None:
            self.publish(status_event(job.id, JobStatus.PROCESSING))
        return job

    async def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job and return its status now: a queued one ends (announced, its uploads
        removed), a processing one is flagged for the processor to stop. Raise
        `JobNotFound`, or `JobAlreadyFinished` for a job that has ended."""
        moment = self.now()
        status = await self.db.write(
            lambda conn: transitions.request_cancel(conn, job_id, now=moment, ttl_s=self.ttl_s)
        )
        if status == JobStatus.CANCELLED:  # it was still queued: nothing ran
            # Told at once, before anything that may be cut short or find the disk full:
            # the janitor removes the uploads of an ended job if this does not.
            self._ended(job_id, JobStatus.CANCELLED, None)
            await trio.to_thread.run_sync(remove_tree, self.paths.upload_dir(job_id))
            await self.db.write(lambda conn: records.clear_uploads(conn, job_id))
        return JobStatus(status)

    async def finish(
        self,
        job_id: str,
        *,
        status: JobStatus,
        error: str | None,
        holding: trio.CancelScope | None = None,
    ) -> None:
        """End a processed job with `status` (and a reason for its owner), remove its
        uploads, then announce and count it."""
        await write_when_room(
            self.db,
            lambda conn: transitions.finish_job(
                conn, job_id, status=status, error=error, now=self.now(), ttl_s=self.ttl_s
            ),
            what=f"job={job_id} {status}",
            holding=holding,
        )
        # Files before rows: the job's uploads go, then its rows stop naming them.
        await trio.to_thread.run_sync(remove_tree, self.paths.upload_dir(job_id))
        await write_when_room(
            self.db,
            lambda conn: records.clear_uploads(conn, job_id),
            what=f"job={job_id} uploads removed",
            holding=holding,
        )
        self._ended(job_id, status, error)

    async def fail_stale(self) -> dict[str, str]:
        """Fail queued jobs past their expiry (they never started); return id → reason."""
        moment = self.now()
        failed = await self.db.write(lambda conn: transitions.fail_stale_queued(conn, moment))
        for job_id, error in failed.items():
            LOGGER.debug("job=%s failed: queued past its expiry", job_id)
            self._ended(job_id, JobStatus.FAILED, error)
        return failed

    async def retire(self, messages: Mapping[str, str | None], reason: RemovalReason) -> list[str]:
        """Retire the rows of reserved jobs whose files are gone (tombstones, or gone for a
        DELETE), announce and count each; return the ids retired."""
        moment = self.now()
        retired = await self.db.write(
            lambda conn: transitions.retire(conn, messages, reason, now=moment)
        )
        final = DELETED if reason is RemovalReason.DELETED else transitions.tombstone(reason)
        metrics.REMOVALS.labels(reason.value).inc(len(retired))
        for job_id in retired:
            self.publish(status_event(job_id, final, messages[job_id]))
        return retired

    def _ended(self, job_id: str, status: JobStatus, error: str | None) -> None:
        LOGGER.info("job=%s %s", job_id, status)
        metrics.JOBS_FINISHED.labels(status).inc()
        self.publish(status_event(job_id, status, error))
