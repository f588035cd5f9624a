"""The janitor: expires finished jobs past their TTL and reconciles the disk with the store.

One pass, on start and every `interval_s`:

- purges tombstones older than the retention;
- fails queued jobs past `expires_at` (they never started);
- turns finished jobs past `expires_at` into `expired` tombstones: each is reserved with
  the download tracker first (a job being downloaded is skipped until a later pass),
  then its files are removed, then its row changes;
- reconciles the disk with the store: entries with no job are removed (once nothing
  has written to them for `orphan_grace_s`), so are uploads of jobs that ended and
  FFmpeg's partial files in finished jobs' directories; outputs
  whose files vanished are forgotten, and a job that lost all of them becomes a
  tombstone saying so.

Queued and processing jobs are never touched, except that a queued job past expiry
fails. Everything is read from the store and the disk each pass, so a kill at any point
is harmless: the next pass finds the same facts and finishes the work. When the tracker
does not answer, the pass deletes nothing that needs a reservation.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

import trio

from actors.download_tracker import DownloadTracker, TrackerUnavailable
from refresher import lifecycle
from refresher.db import Database
from refresher.storage import Paths

LOGGER = logging.getLogger(__name__)

# Tombstones stay listed this long after their results went, so an owner who comes back
# after a long weekend still sees what happened to a job.
TOMBSTONE_RETENTION_S = 7 * 24 * 3600.0
# An entry under jobs/ or uploads/ with no row is removed once nothing has written to it
# for this long. An upload directory gets its row only when the upload is complete, and
# a live upload streams, writing far more often than that; one idle this long died with
# its process.
ORPHAN_GRACE_S = 3600.0


@dataclass
class SweepReport:
    """What one pass did; `skipped_deletions` says why it deleted nothing, if it did not."""

    expired: int = 0
    failed_queued: int = 0
    purged: int = 0
    lost: int = 0
    forgotten_outputs: int = 0
    orphans: int = 0
    ended_uploads: int = 0
    partials: int = 0
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
        db: Database,
        paths: Paths,
        tracker: DownloadTracker,
        *,
        interval_s: float,
        now: Callable[[], float],
        tombstone_retention_s: float = TOMBSTONE_RETENTION_S,
        orphan_grace_s: float = ORPHAN_GRACE_S,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        if tombstone_retention_s < 0:
            raise ValueError("tombstone_retention_s must be >= 0")
        if orphan_grace_s < 0:
            raise ValueError("orphan_grace_s must be >= 0")
        self.db = db
        self.paths = paths
        self.tracker = tracker
        self.interval_s = interval_s
        self.now = now
        self.tombstone_retention_s = tombstone_retention_s
        self.orphan_grace_s = orphan_grace_s

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Make a pass on start and every `interval_s` until cancelled.

        Cancellation may cut a pass anywhere; the next pass (after a restart) reads
        everything afresh and finishes what was cut short.
        """
        task_status.started()
        while True:
            await self.sweep()
            await trio.sleep(self.interval_s)

    async def sweep(self) -> SweepReport:
        """Make one pass over the jobs and the disk; log and return what it did.

        Cancelling it may leave the pass half done, which is safe: the next pass
        finishes it.
        """
        began = time.perf_counter()
        report = SweepReport()
        now = self.now()
        before = now - self.tombstone_retention_s
        report.purged = await self.db.write(lambda conn: lifecycle.purge_tombstones(conn, before))
        failed = await self.db.write(lambda conn: lifecycle.fail_stale_queued(conn, now))
        report.failed_queued = len(failed)
        for job_id in failed:
            LOGGER.debug("job=%s failed: queued past its expiry", job_id)
        await self._expire(report, now)
        await self._reconcile(report)
        LOGGER.info("janitor pass in %.3f s: %s", time.perf_counter() - began, report.summary())
        return report

    async def _expire(self, report: SweepReport, now: float) -> None:
        # A "lost" removal a kill cut short is finished here; an expired one is found
        # again by its expiry.
        def find(conn: sqlite3.Connection) -> dict[str, str]:
            reasons = dict.fromkeys(
                lifecycle.reserved_unfinished(conn, (lifecycle.RESERVED_LOST,)),
                lifecycle.LOST_REASON,
            )
            reasons.update((job.id, job.reason) for job in lifecycle.expired_jobs(conn, now))
            return reasons

        reasons = await self.db.read(find)
        for job_id in await self._remove(reasons, lifecycle.RESERVED_EXPIRED, report):
            if reasons[job_id] == lifecycle.LOST_REASON:
                report.lost += 1
            else:
                report.expired += 1

    async def _reconcile(self, report: SweepReport) -> None:
        # The listing before the snapshot: see `lifecycle.plan_reconciliation`.
        listing = await trio.to_thread.run_sync(lifecycle.list_disk, self.paths)
        snapshot = await self.db.read(lifecycle.store_snapshot)
        findings = await trio.to_thread.run_sync(
            functools.partial(
                lifecycle.plan_reconciliation,
                self.paths,
                listing,
                snapshot,
                disk_now=time.time(),
                orphan_grace_s=self.orphan_grace_s,
            )
        )

        def remove_strays() -> tuple[int, int, int]:
            return (
                lifecycle.remove_paths(findings.orphans),
                lifecycle.remove_paths(findings.ended_uploads),
                lifecycle.remove_paths(findings.partials),
            )

        report.orphans, report.ended_uploads, report.partials = await trio.to_thread.run_sync(
            remove_strays
        )
        for path in findings.orphans:
            LOGGER.debug("removed %s: it belongs to no job", self.paths.relative(path))

        # Files before rows: the uploads are gone, now the rows stop naming them.
        def forget(conn: sqlite3.Connection) -> int:
            lifecycle.clear_ended_uploads(conn)
            return lifecycle.forget_outputs(conn, findings.missing_outputs)

        report.forgotten_outputs = await self.db.write(forget)
        for job_id, output_ids in findings.missing_outputs.items():
            LOGGER.warning("job=%s %d output files vanished from disk", job_id, len(output_ids))
        reasons = dict.fromkeys(findings.lost, lifecycle.LOST_REASON)
        report.lost += len(await self._remove(reasons, lifecycle.RESERVED_LOST, report))

    async def _remove(
        self, reasons: dict[str, str], reservation: str, report: SweepReport
    ) -> list[str]:
        """Reserve, remove the files of, then tombstone each job; return the ids tombstoned."""
        granted: dict[str, str] = {}
        for job_id, reason in reasons.items():
            if report.skipped_deletions:
                break
            try:
                reserved = await self.tracker.reserve_for_deletion(job_id, reason=reservation)
            except TrackerUnavailable as err:
                # In doubt nothing is deleted; the next pass finds these jobs again.
                report.skipped_deletions = str(err)
                LOGGER.warning("janitor deletes nothing more this pass: %s", err)
                break
            if reserved:
                granted[job_id] = reason
            else:
                report.busy += 1
                LOGGER.debug("job=%s is being downloaded; removing it on a later pass", job_id)
        if not granted:
            return []
        removed = await trio.to_thread.run_sync(lifecycle.remove_job_files, self.paths, granted)
        tombstones = {job_id: granted[job_id] for job_id in removed}
        now = self.now()
        changed = await self.db.write(
            lambda conn: lifecycle.tombstone(
                conn,
                tombstones,
                status="expired",
                reserved_as=lifecycle.JANITOR_RESERVATIONS,
                now=now,
            )
        )
        for job_id in changed:
            LOGGER.debug("job=%s expired: %s", job_id, granted[job_id])
        return changed
