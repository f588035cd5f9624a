"""Every change of a job's status, as the service makes it: the write, the event that
tells every open stream, and the metric, together, in one place.

| change | who asks | write | event; notice | metric |
|---|---|---|---|---|
| `queue` | an upload | `insert_job` | queued; work to claim | uploaded bytes |
| `record_device_job` | a device's results | `insert_device_job` | completed | finished, bytes |
| `claim_next` | a worker | `claim_next` | processing (a job's first claim) | |
| `end_file` | a worker | `end_file`, the last ends the job | the job's end | jobs finished |
| `release` | a stopping worker | `release`, may end a cancelled job | the job's end | ditto |
| `settle_cancelled` | worker, janitor | `settle`: cancelled, unheld jobs | cancelled | ditto |
| `drop_claims` | the sole worker, at start | `drop_all` | | |
| `retry` | a user | `retries.requeue_file`; an ended job queued again | queued; work to claim | |
| `cancel` | a user | `request_cancel`; unheld, it ends | cancelled; stop work | ditto |
| `fail_stale` | the janitor | `fail_stale_queued` | failed | ditto |
| `retire` | the removal flow | `retire` | expired, evicted, deleted | removals |

(Writes are `refresher.jobs.transitions`', `refresher.jobs.claims`' and
`refresher.jobs.retries`'.)

A job's end removes its uploads, files before rows, except the sources of its failed files
when it ended completed or failed: those stay, counted against the quota, so the files can
be retried (`retry`) until the job's results go. Events go to every open stream
(`publish`); notices to the workers go through the bus (`refresher.store.bus`): work to
claim, a job to stop. Writes that must land wait for room on a full storage
(`write_when_room`); a `holding` shield around the caller is lifted then, so a full disk
never holds up a stop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import trio
from sqlalchemy import Connection

from refresher import metrics
from refresher.jobs import claims, records, retries, transitions
from refresher.jobs.claims import Claim
from refresher.jobs.device import DeviceFile
from refresher.jobs.events import DELETED, Publish, nobody_listens, status_event
from refresher.jobs.status import JobStatus
from refresher.jobs.transitions import NewFile, RemovalReason
from refresher.storage.blobs import BlobStore, LocalBlobs
from refresher.storage.paths import Paths
from refresher.store import Database, write_when_room
from refresher.store.bus import JOB_CANCEL, JOB_QUEUED, Bus, LocalBus

LOGGER = logging.getLogger(__name__)


class Lifecycle:
    """Changes jobs' statuses in `db`, telling `publish` (the event hub) of each, and the
    workers (`bus`) of work to claim and jobs to stop."""

    def __init__(
        self,
        db: Database,
        paths: Paths,
        *,
        now: Callable[[], float],
        ttl_s: float,
        publish: Publish = nobody_listens,
        bus: Bus | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self.db = db
        self.paths = paths
        # Where the jobs' bytes are kept: the data directory itself, or a bucket.
        self.blobs: BlobStore = blobs if blobs is not None else LocalBlobs(paths)
        self.now = now
        self.ttl_s = ttl_s
        self.publish = publish
        # Notices to the workers, wherever they run.
        self.bus: Bus = bus if bus is not None else LocalBus()

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
        self.bus.publish(JOB_QUEUED, job_id)
        metrics.UPLOADED_BYTES.inc(sum(file.file_size for file in files))

    async def claim_next(
        self, *, worker: str, token: str, ttl_s: float, order: str = "fair"
    ) -> Claim | None:
        """Claim the next source file to work on for `ttl_s`, in `order` (see
        `refresher.jobs.claims`); a job it starts is announced. None when no file waits."""
        moment = self.now()
        claim = await write_when_room(
            self.db,
            lambda conn: claims.claim_next(
                conn, worker=worker, token=token, ttl_s=ttl_s, now=moment, order=order
            ),
            what="claiming the next file",
        )
        if claim is not None and claim.started_job:
            self.publish(status_event(claim.job.id, JobStatus.PROCESSING))
        return claim

    async def end_file(
        self,
        claim: Claim,
        *,
        status: JobStatus,
        progress: float,
        error: str | None,
        ttl_s: float,
        holding: trio.CancelScope | None = None,
    ) -> None:
        """End the claimed file; when it was the job's last, end the job (its uploads go, its
        end is announced and counted). Raise `ClaimLost` if another worker took it over."""
        moment = self.now()
        ended = await write_when_room(
            self.db,
            lambda conn: claims.end_file(
                conn, claim, status=status, progress=progress, error=error, now=moment,
                ttl_s=ttl_s,
            ),
            what=f"job={claim.job.id} file={claim.file.id} {status}",
            holding=holding,
        )  # fmt: skip
        await self._after(ended, holding)

    async def release(
        self, claim: Claim, *, ttl_s: float, holding: trio.CancelScope | None = None
    ) -> None:
        """Give the claim back, the file unfinished; a cancelled job whose last live claim it
        was ends (announced, counted, its uploads removed)."""
        moment = self.now()
        ended = await write_when_room(
            self.db,
            lambda conn: claims.release(conn, claim, now=moment, ttl_s=ttl_s),
            what=f"job={claim.job.id} file={claim.file.id} released",
            holding=holding,
        )
        await self._after(ended, holding)

    async def settle_cancelled(self) -> list[str]:
        """End the cancelled jobs no worker holds any more (theirs died); return their ids."""

        moment = self.now()

        def settle(conn: Connection) -> list[claims.Ended]:
            settled = []
            for job_id in claims.cancelled_unheld(conn):
                ended = claims.settle(conn, job_id, now=moment, ttl_s=self.ttl_s)
                if ended is not None:
                    settled.append(ended)
            return settled

        settled = await write_when_room(self.db, settle, what="ending cancelled jobs")
        for ended in settled:
            await self._after(ended, None)
        return [ended.job_id for ended in settled]

    async def drop_claims(self) -> list[str]:
        """Give back every claim of an earlier run, where this process alone works on the
        store (waiting for room); return the jobs they were in."""
        return await write_when_room(self.db, claims.drop_all, what="dropping earlier claims")

    async def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job and return its status now: one no worker holds ends (announced, its
        uploads removed), and the workers holding one are told to stop. Raise
        `JobNotFound`, or `JobAlreadyFinished` for a job that has ended."""
        moment = self.now()

        def cancel(conn: Connection) -> str:
            status = transitions.request_cancel(conn, job_id, now=moment, ttl_s=self.ttl_s)
            if status == JobStatus.PROCESSING and claims.settle(
                conn, job_id, now=moment, ttl_s=self.ttl_s
            ):
                return JobStatus.CANCELLED
            return status

        status = await self.db.write(cancel)
        if status == JobStatus.CANCELLED:  # nothing ran, or nothing runs any more
            await self._after(claims.Ended(job_id, JobStatus.CANCELLED, None), None)
        else:
            self.bus.publish(JOB_CANCEL, job_id)
        return JobStatus(status)

    async def _after(self, ended: claims.Ended | None, holding: trio.CancelScope | None) -> None:
        """What follows a job's end: told at once, before anything that may be cut short or
        find the disk full; then its uploads go, files before rows (the janitor removes the
        uploads of an ended job if this does not)."""
        if ended is None:
            return
        self._ended(ended.job_id, ended.status, ended.error)
        sources = await self.db.read(lambda conn: records.sources(conn, ended.job_id))
        dropped = [path for path, kept in sources if not kept]
        if len(dropped) == len(sources):
            await trio.to_thread.run_sync(self.blobs.remove, self.paths.upload_dir(ended.job_id))
        else:  # failed files keep theirs, for a retry, until the job's results go
            for path in dropped:
                await trio.to_thread.run_sync(self.blobs.remove, self.paths.absolute(path))
        await write_when_room(
            self.db,
            lambda conn: records.clear_uploads(conn, ended.job_id, dropped),
            what=f"job={ended.job_id} uploads removed",
            holding=holding,
        )

    async def retry(self, job_id: str, file_id: str) -> None:
        """Queue a failed file again from its kept source, announced (its job, if ended,
        is queued again). Raise `JobNotFound`, `FileNotFound` or `NotRetryable`."""
        moment = self.now()
        restarted = await self.db.write(
            lambda conn: retries.requeue_file(conn, job_id, file_id, now=moment, ttl_s=self.ttl_s)
        )
        LOGGER.info("job=%s file=%s queued again", job_id, file_id)
        if restarted:
            self.publish(status_event(job_id, JobStatus.QUEUED))
        self.bus.publish(JOB_QUEUED, job_id)

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

    async def record_device_job(
        self,
        *,
        job_id: str,
        files: Sequence[DeviceFile],
        variations_per_video: int,
        thumbnail_path: str | None,
    ) -> None:
        """Record a job a device made, its results already kept, as completed; announce
        and count its end. Raise `StorageFull` when the store has no room for its rows."""
        moment = self.now()
        await self.db.write(
            lambda conn: transitions.insert_device_job(
                conn, job_id=job_id, files=list(files), variations_per_video=variations_per_video,
                thumbnail_path=thumbnail_path, now=moment, ttl_s=self.ttl_s,
            )
        )  # fmt: skip
        metrics.UPLOADED_BYTES.inc(sum(out.size for file in files for out in file.outputs))
        self._ended(job_id, JobStatus.COMPLETED, None)
