"""The janitor: expires finished jobs past their TTL and reconciles the disk with the store.

One pass, on start and every `interval_s`:

- purges tombstones older than the retention;
- fails queued jobs past `expires_at` (they never started);
- finishes removals a kill cut short (any but evictions, which the evictor finishes);
- turns finished jobs past `expires_at` into `expired` tombstones through
  `refresher.storage.removal` (a job being downloaded is skipped until a later pass);
- reconciles the disk with the store: entries with no job are removed (once nothing
  has written to them for `orphan_grace_s`), so are uploads of jobs that ended and
  FFmpeg's partial files in finished jobs' directories; outputs
  whose files vanished are forgotten, and a job that lost all of them becomes a
  tombstone saying so.

Queued and processing jobs are never touched, except that a queued job past expiry
fails, and a cancelled one no worker holds any more ends. One pass runs at a time
across every process sharing the store: a pass holds the store's "janitor" lock, and a
process whose turn finds it held waits for it a while, then skips the pass. Everything
is read from the store and the disk each pass, so a kill at any point is harmless: the
next pass finds the same facts and finishes the work. When the tracker does not answer,
the pass deletes nothing that needs a reservation.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, fields

import trio
from sqlalchemy import Connection

from refresher import metrics
from refresher.jobs import expiry
from refresher.jobs.lifecycle import Lifecycle
from refresher.jobs.transitions import LOST_MESSAGE, RemovalReason
from refresher.storage import reconcile, removal
from refresher.storage.blobs import StorageUnavailable
from refresher.storage.full import StorageFull, keep_ballast
from refresher.storage.removal import Reserver
from refresher.uploads import received
from refresher.uploads import records as upload_records

LOGGER = logging.getLogger(__name__)

# Tombstones stay listed this long after their results went, so an owner who comes back
# after a long weekend still sees what happened to a job.
TOMBSTONE_RETENTION_S = 7 * 24 * 3600.0
# An entry under jobs/ or uploads/ with no row is removed once nothing has written to it
# for this long. An upload directory gets its row only when the upload is complete, and
# a live upload streams, writing far more often than that; one idle this long died with
# its process.
ORPHAN_GRACE_S = 3600.0
# The store's lock a pass holds, so that one runs at a time across processes; a pass
# waits this long for another's to end (it then finds little left to do).
LOCK = "janitor"
LOCK_PATIENCE_S = 30.0
# The removals the janitor finishes after a kill: all but evictions, the evictor's own.
RESUMED = (RemovalReason.EXPIRED, RemovalReason.LOST, RemovalReason.DELETED)


@dataclass
class SweepReport:
    """What one pass did; `skipped_deletions` says why it deleted nothing, if it did not."""

    expired: int = 0
    failed_queued: int = 0
    cancelled: int = 0
    purged: int = 0
    lost: int = 0
    forgotten_outputs: int = 0
    orphans: int = 0
    ended_uploads: int = 0
    partials: int = 0
    # Uploads into a bucket begun and never finished (a process died mid-upload).
    abandoned_uploads: int = 0
    # Local copies removed from a data directory that is scratch space (bytes in a bucket).
    scratch: int = 0
    # Resumable uploads removed: left unfinished past their expiry, or taken by a job
    # that never came; and their bytes with no row at all.
    expired_uploads: int = 0
    resumable_orphans: int = 0
    busy: int = 0
    skipped_deletions: str | None = None

    def summary(self) -> str:
        counts = " ".join(
            f"{field.name}={getattr(self, field.name)}"
            for field in fields(self)
            if field.name != "skipped_deletions"
        )
        if self.skipped_deletions:
            return f"{counts}; deletions skipped: {self.skipped_deletions}"
        return counts


class Janitor:
    name = "janitor"

    def __init__(
        self,
        lifecycle: Lifecycle,
        reserver: Reserver,
        *,
        interval_s: float,
        tombstone_retention_s: float = TOMBSTONE_RETENTION_S,
        orphan_grace_s: float = ORPHAN_GRACE_S,
        process_started: float | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        if tombstone_retention_s < 0:
            raise ValueError("tombstone_retention_s must be >= 0")
        if orphan_grace_s < 0:
            raise ValueError("orphan_grace_s must be >= 0")
        # Every job the janitor ends or removes goes through the lifecycle, which tells its
        # event streams.
        self.lifecycle = lifecycle
        self.db = lifecycle.db
        self.paths = lifecycle.paths
        self.now = lifecycle.now
        self.reserver = reserver
        self.interval_s = interval_s
        self.tombstone_retention_s = tombstone_retention_s
        self.orphan_grace_s = orphan_grace_s
        # When this process started, by the clock that stamps files (`time.time`): files
        # with no row written before it are a dead process's (see plan_reconciliation).
        self.process_started = process_started

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Make a pass on start and every `interval_s` until cancelled.

        Cancellation may cut a pass anywhere; the next pass (after a restart) reads
        everything afresh and finishes what was cut short.
        """
        task_status.started()
        while True:
            try:
                await self.sweep()
                # Room held back for removals on a full volume, taken back once there is.
                await trio.to_thread.run_sync(keep_ballast, self.paths.ballast)
            except StorageFull as err:
                # A pass on a full storage would fail again at once after a restart: a
                # crash loop. The next pass, an interval later, tries again.
                LOGGER.warning("janitor pass stopped: %s", err)
            await trio.sleep(self.interval_s)

    async def sweep(self) -> SweepReport:
        """Make one pass over the jobs and the disk; log and return what it did.

        Cancelling it may leave the pass half done, which is safe: the next pass
        finishes it.
        """
        async with self.db.exclusive(LOCK, patience_s=LOCK_PATIENCE_S) as held:
            if not held:
                LOGGER.info("janitor pass skipped: another process is making one")
                return SweepReport(skipped_deletions="another process is making a pass")
            return await self._sweep()

    async def _sweep(self) -> SweepReport:
        began = time.perf_counter()
        report = SweepReport()
        now = self.now()
        before = now - self.tombstone_retention_s
        report.purged = await self.db.write(lambda conn: expiry.purge_tombstones(conn, before))
        report.failed_queued = len(await self.lifecycle.fail_stale())
        report.cancelled = len(await self.lifecycle.settle_cancelled())
        await self._expire(report, now)
        try:
            await self._expire_resumable(report, now)
            await self._reconcile(report)
        except StorageUnavailable as err:  # the next pass tries again
            LOGGER.warning("reconciliation skipped: %s", err)
        LOGGER.info("janitor pass in %.3f s: %s", time.perf_counter() - began, report.summary())
        return report

    async def _expire(self, report: SweepReport, now: float) -> None:
        resumed = await removal.resume(self.lifecycle, RESUMED)
        report.expired += len(resumed.get(RemovalReason.EXPIRED, []))
        report.lost += len(resumed.get(RemovalReason.LOST, []))
        for job_id in resumed.get(RemovalReason.DELETED, []):
            LOGGER.info("job=%s deleted: a DELETE cut short was finished", job_id)
        expired = await self.db.read(lambda conn: expiry.expired_jobs(conn, now))
        messages = {job.id: job.message for job in expired}
        report.expired += len(await self._remove(messages, RemovalReason.EXPIRED, report))

    async def _expire_resumable(self, report: SweepReport, now: float) -> None:
        """Remove resumable uploads past their expiry (bytes, then rows), and bytes under
        `resumable/` whose upload has no row, once idle for `orphan_grace_s`."""
        blobs, paths = self.lifecycle.blobs, self.paths
        listing = await trio.to_thread.run_sync(blobs.entries, paths.resumable)
        known = await self.db.read(upload_records.upload_ids)
        expired = await self.db.read(lambda conn: upload_records.expired(conn, now))
        disk_now = blobs.now()

        def idle(name: str) -> bool:
            try:
                written = blobs.last_written(paths.resumable / name)
            except FileNotFoundError:
                return False
            return disk_now - written >= self.orphan_grace_s

        def remove() -> tuple[list[str], int]:
            gone = []
            for upload in expired:
                try:
                    received.remove_upload(blobs, paths, upload.id)
                except Exception as err:  # a bucket's errors are not OSErrors; next pass
                    LOGGER.error("upload=%s could not be removed: %s", upload.id, err)
                    continue
                gone.append(upload.id)
            strays = [paths.resumable / name for name in sorted(listing - known) if idle(name)]
            return gone, reconcile.remove_paths(blobs, strays)

        gone, report.resumable_orphans = await trio.to_thread.run_sync(remove)
        if gone:
            await self.db.write(lambda conn: upload_records.forget(conn, gone))
            for upload in expired:
                LOGGER.info("upload=%s expired (%d of %d bytes)", upload.id, upload.received,
                            upload.length)  # fmt: skip
        report.expired_uploads = len(gone)
        metrics.RESUMABLE_EXPIRED.inc(len(gone))

    async def _reconcile(self, report: SweepReport) -> None:
        # The listing before the snapshot: see `reconcile.plan_reconciliation`.
        blobs = self.lifecycle.blobs
        listing = await trio.to_thread.run_sync(reconcile.list_disk, blobs, self.paths)
        snapshot = await self.db.read(reconcile.store_snapshot)
        findings = await trio.to_thread.run_sync(
            functools.partial(
                reconcile.plan_reconciliation,
                blobs,
                self.paths,
                listing,
                snapshot,
                disk_now=blobs.now(),
                orphan_grace_s=self.orphan_grace_s,
                process_started=self.process_started,
            )
        )

        def remove_strays() -> tuple[int, int, int, int]:
            return (
                reconcile.remove_paths(blobs, findings.orphans),
                reconcile.remove_paths(blobs, findings.ended_uploads),
                reconcile.remove_paths(blobs, findings.partials),
                blobs.abort_abandoned(self.orphan_grace_s),
            )

        (
            report.orphans,
            report.ended_uploads,
            report.partials,
            report.abandoned_uploads,
        ) = await trio.to_thread.run_sync(remove_strays)
        if blobs.remote:
            report.scratch = await trio.to_thread.run_sync(
                reconcile.clear_scratch, self.paths, snapshot.statuses, self.orphan_grace_s
            )
        for path in findings.orphans:
            LOGGER.debug("removed %s: it belongs to no job", self.paths.relative(path))

        # Files before rows: the uploads are gone, now the rows stop naming them.
        def forget(conn: Connection) -> int:
            reconcile.clear_ended_uploads(conn)
            return reconcile.forget_outputs(conn, findings.missing_outputs)

        report.forgotten_outputs = await self.db.write(forget)
        for job_id, output_ids in findings.missing_outputs.items():
            LOGGER.warning("job=%s %d output files vanished from disk", job_id, len(output_ids))
        messages = dict.fromkeys(findings.lost, LOST_MESSAGE)
        report.lost += len(await self._remove(messages, RemovalReason.LOST, report))

    async def _remove(
        self, messages: dict[str, str], reason: RemovalReason, report: SweepReport
    ) -> list[str]:
        """Remove the jobs' results (see `refresher.storage.removal`); return the ids retired."""
        if report.skipped_deletions or not messages:
            return []
        outcome = await removal.remove(self.lifecycle, self.reserver, reason, messages)
        if outcome.unavailable is not None:
            # In doubt nothing is deleted; the next pass finds these jobs again.
            report.skipped_deletions = str(outcome.unavailable)
        report.busy += len(outcome.busy)
        for job_id in outcome.busy:
            LOGGER.debug("job=%s is being downloaded; removing it on a later pass", job_id)
        for job_id in outcome.retired:
            LOGGER.debug("job=%s expired: %s", job_id, messages[job_id])
        return outcome.retired
