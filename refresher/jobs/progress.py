"""A source file's progress while a worker makes its variations: told to the job's event
streams at every whole percent, kept in the store every few percent (only a page reload
reads it there), and the job's overall progress with it.

The job's other files may be worked on by other workers: their progress comes back from
the store with each save, so the overall progress a worker tells stays near the truth.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from sqlalchemy import Connection

from refresher.jobs import claims, records
from refresher.jobs.claims import Claim
from refresher.jobs.events import JobEvent, Publish
from refresher.jobs.status import JobStatus
from refresher.storage.full import StorageFull
from refresher.store import Database

LOGGER = logging.getLogger(__name__)

# Progress events go to subscribers at every whole percent; the store, which only serves
# page reloads, gets it at most every few percent.
EVENT_PROGRESS_STEP = 1.0
DB_PROGRESS_STEP = 5.0


@dataclass
class FileProgress:
    """In-memory progress of one source file while its variations encode, and of its
    job's files (`files`: each one's status and percent, as last known)."""

    total: int
    done: int
    files: dict[str, tuple[JobStatus, float]]
    running: dict[int, float] = field(default_factory=dict)
    published: float = -1.0
    saved: float = 0.0
    changed: trio.Event = field(default_factory=trio.Event)

    @property
    def percent(self) -> float:
        return round(100.0 * (self.done + sum(self.running.values())) / self.total, 1)

    @property
    def overall(self) -> float:
        return records.overall_progress(JobStatus.PROCESSING, self.files.values())

    def batch_moved(self, key: int, variations: float) -> None:
        """The batch `key` has made this many variations' worth so far."""
        self.running[key] = variations
        self.changed.set()

    def batch_done(self, key: int, variations: int) -> None:
        self.running.pop(key, None)
        self.done += variations
        self.changed.set()

    def event(self, file_id: str, status: JobStatus, percent: float) -> dict[str, object]:
        """A progress event's data, the file at `status` and `percent`."""
        self.files[file_id] = (status, percent)
        return {
            "fileId": file_id, "progress": percent, "status": status,
            "completedVariations": self.done, "overallProgress": self.overall,
        }  # fmt: skip


async def report(
    progress: FileProgress,
    claim: Claim,
    *,
    db: Database,
    publish: Publish,
    now: Callable[[], float],
) -> None:
    """Tell the file's progress as it changes, until cancelled."""
    job_id, file_id = claim.job.id, claim.file.id
    while True:
        await progress.changed.wait()
        progress.changed = trio.Event()
        percent = progress.percent
        data = progress.event(file_id, JobStatus.PROCESSING, percent)
        if percent - progress.published >= EVENT_PROGRESS_STEP:
            progress.published = percent
            publish(JobEvent(job_id, "progress", data))
        if percent - progress.saved < DB_PROGRESS_STEP:
            continue
        progress.saved = percent

        def save(
            conn: Connection, at: float = percent, moment: float = now()
        ) -> dict[str, tuple[str, float]]:
            claims.save_progress(conn, file_id, claim.token, at, moment)
            return records.file_progress(conn, job_id)

        # On a full storage, the encode goes on without.
        try:
            others = await db.write(save)
        except StorageFull as err:
            LOGGER.warning("storage full: job=%s progress skipped: %s", job_id, err)
            continue
        for other, (status, at) in others.items():
            if other != file_id:
                progress.files[other] = (JobStatus(status), at)
