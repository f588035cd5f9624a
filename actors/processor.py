"""The processor: turns queued jobs into variations with FFmpeg, one job at a time.

The database is the queue and the record: `JobQueued` only rings the bell, and every
finished variation is a row written in the same transaction that counts it. So the
processor can be killed anywhere: on its next start it kills encoders a dead run left
behind, puts interrupted jobs back in the queue, and resumes each from its last finished
variation.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from actors.runtime import Mailbox
from refresher import effects, encoding, jobstore, thumbnails
from refresher.db import Database
from refresher.ffmpeg import MediaError, encoder_mark, kill_leftover_encoders
from refresher.job_events import JobEvent
from refresher.probe import NotAVideo, Probe, probe
from refresher.status import FINISHED, JobStatus
from refresher.storage import Paths, remove_tree

LOGGER = logging.getLogger(__name__)

# Doorbells and cancels; a full inbox already holds a ring that makes the processor look.
INBOX_SIZE = 64
# Progress events go to subscribers at every whole percent; the database, which only
# serves page reloads, at most every few percent.
EVENT_PROGRESS_STEP = 1.0
DB_PROGRESS_STEP = 5.0
THUMBNAIL_NAME = "thumbnail.webp"


@dataclass(frozen=True)
class JobQueued:
    job_id: str


@dataclass(frozen=True)
class CancelJob:
    """A user cancelled the job; its `cancelled_at` is already in the database."""

    job_id: str


class NoRoom(MediaError):
    def __init__(self, nbytes: int) -> None:
        super().__init__(
            f"There was no room to store {nbytes / 1e6:.0f} MB of variations: the storage "
            "is full even after removing older results."
        )


@dataclass
class _FileProgress:
    """In-memory progress of one source file while its variations encode."""

    total: int
    done: int
    running: dict[int, float] = field(default_factory=dict)
    published: float = -1.0
    saved: float = 0.0
    changed: trio.Event = field(default_factory=trio.Event)

    @property
    def percent(self) -> float:
        return round(100.0 * (self.done + sum(self.running.values())) / self.total, 1)


@dataclass
class _RunningJob:
    job_id: str
    scope: trio.CancelScope
    # Each file's (status, percent) as it stands now, for the job's overall progress.
    files: dict[str, tuple[JobStatus, float]]


class Processor:
    name = "processor"

    def __init__(
        self,
        db: Database,
        paths: Paths,
        publish: Callable[[JobEvent], None],
        *,
        ffmpeg: str,
        ttl_s: float,
        now: Callable[[], float],
        threads: int | None = None,
        request_room: Callable[[int], Awaitable[bool]] | None = None,
    ) -> None:
        self.db = db
        self.paths = paths
        self.publish = publish
        self.ffmpeg = ffmpeg
        self.ttl_s = ttl_s
        self.now = now
        self.threads = threads
        self.request_room = request_room
        self.inbox: Mailbox[JobQueued | CancelJob] = Mailbox(INBOX_SIZE)
        self._wake = trio.Event()
        self._current: _RunningJob | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover from any earlier run, then process queued jobs until cancelled.

        Cancellation stops FFmpeg and removes partial outputs; the job stays in the
        database as `processing` and is requeued by the next `run()`.
        """
        killed = await trio.to_thread.run_sync(kill_leftover_encoders, self.paths.root)
        requeued = await self.db.write(lambda conn: jobstore.requeue_interrupted(conn, self.now()))
        if killed or requeued:
            LOGGER.warning("recovered: killed %d encoders, requeued jobs %s", len(killed), requeued)
        self._current = None
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._work)
            async for message in self.inbox.receive:
                if isinstance(message, CancelJob):
                    current = self._current
                    if current is not None and current.job_id == message.job_id:
                        current.scope.cancel()
                else:
                    self._wake.set()

    async def _work(self) -> None:
        while True:
            # A fresh event before looking: a ring during the look is not lost.
            self._wake = trio.Event()
            job = await self.db.write(lambda conn: jobstore.claim_next(conn, self.now()))
            if job is None:
                await self._wake.wait()
                continue
            await self._process(job)

    def _publish(self, job_id: str, kind: str, **data: object) -> None:
        self.publish(JobEvent(job_id, kind, dict(data)))

    async def _process(self, job: jobstore.JobRecord) -> None:
        LOGGER.info("job=%s processing: %d videos", job.id, job.total_videos)
        self._publish(job.id, "status", status=JobStatus.PROCESSING)
        job_dir = self.paths.job_dir(job.id)
        await trio.Path(job_dir).mkdir(parents=True, exist_ok=True)
        await self._make_thumbnail(job)
        variation_effects = effects.generate(job.seed, job.total_variations)
        running = _RunningJob(
            job.id,
            trio.CancelScope(),
            {file.id: (file.status, file.progress) for file in job.files},
        )
        self._current = running
        with running.scope:
            if await self.db.read(lambda conn: jobstore.cancel_requested(conn, job.id)):
                running.scope.cancel()
            for file in job.files:
                if file.status in FINISHED:
                    continue
                first = file.position * job.variations_per_video
                await self._process_file(
                    job, file, variation_effects[first : first + job.variations_per_video]
                )
        self._current = None
        await self._finish(job.id, cancelled=running.scope.cancelled_caught)

    async def _make_thumbnail(self, job: jobstore.JobRecord) -> None:
        if job.thumbnail_path is not None:
            return
        first = job.files[0]
        if first.upload_path is None:
            return
        output = self.paths.job_dir(job.id) / THUMBNAIL_NAME
        made = await thumbnails.make_thumbnail(
            self.ffmpeg,
            self.paths.absolute(first.upload_path),
            output,
            duration_s=first.duration_s or 0.0,
            env=encoder_mark(self.paths.root),
        )
        if made:
            relative = self.paths.relative(output)
            await self.db.write(lambda conn: jobstore.set_thumbnail(conn, job.id, relative))

    async def _process_file(
        self,
        job: jobstore.JobRecord,
        file: jobstore.FileRecord,
        file_effects: list[effects.Effects],
    ) -> None:
        done = {output.variation_index for output in file.outputs}
        await trio.to_thread.run_sync(self._remove_partials, job.id, file.id, done)
        progress = _FileProgress(total=job.variations_per_video, done=len(done))
        await self.db.write(
            lambda conn: jobstore.set_file_state(
                conn,
                file.id,
                status=JobStatus.PROCESSING,
                progress=progress.percent,
                now=self.now(),
            )
        )
        self._track(file.id, JobStatus.PROCESSING, progress.percent)
        pending = [index for index in range(1, job.variations_per_video + 1) if index not in done]
        if file.upload_path is None:
            error: str | None = "The upload is gone; upload the video again."
        else:
            source = self.paths.absolute(file.upload_path)
            error = await self._encode_pending(job, file, source, pending, file_effects, progress)
        if error:
            LOGGER.warning("job=%s file=%s failed: %s", job.id, file.id, error)
        status = JobStatus.FAILED if error else JobStatus.COMPLETED
        percent = 100.0 if status == JobStatus.COMPLETED else progress.percent
        await self.db.write(
            lambda conn: jobstore.set_file_state(
                conn, file.id, status=status, progress=percent, error=error, now=self.now()
            )
        )
        self._track(file.id, status, percent)
        self._publish(
            job.id, "progress", fileId=file.id, progress=percent, status=status,
            completedVariations=progress.done, overallProgress=self._overall(),
        )  # fmt: skip

    async def _encode_pending(
        self,
        job: jobstore.JobRecord,
        file: jobstore.FileRecord,
        source: Path,
        pending: list[int],
        file_effects: list[effects.Effects],
        progress: _FileProgress,
    ) -> str | None:
        """Encode the file's `pending` variations; return why the file failed, or None."""
        try:
            probed = await trio.to_thread.run_sync(probe, source)
        except NotAVideo as err:
            return f"The file {err.reason}."
        except OSError as err:
            return f"The upload could not be read: {err.strerror or err}."
        # Decoding once for several variations pays; how many fit in memory depends on the
        # frame size. A batch's outputs are recorded as soon as it ends, so a restart
        # resumes after the last finished batch.
        per_encode = encoding.variations_per_encode(probed.width, probed.height)
        batches, start = [], 0
        for size in encoding.batch_sizes(len(pending), per_encode):
            batches.append(pending[start : start + size])
            start += size
        error: str | None = None
        async with trio.open_nursery() as watchers:
            watchers.start_soon(self._report_progress, job.id, file.id, progress)
            try:
                for batch in batches:
                    await self._encode_batch(
                        job, file, source, probed, batch, file_effects, progress
                    )
            except (MediaError, OSError) as err:
                error = str(err)
            watchers.cancel_scope.cancel()
        return error

    async def _encode_batch(
        self,
        job: jobstore.JobRecord,
        file: jobstore.FileRecord,
        source: Path,
        probed: Probe,
        indices: list[int],
        file_effects: list[effects.Effects],
        progress: _FileProgress,
    ) -> None:
        if await self.db.read(lambda conn: jobstore.cancel_requested(conn, job.id)):
            # The doorbell for this cancel was lost (a full inbox, a restart): act on the
            # database's word.
            if self._current is not None:
                self._current.scope.cancel()
            await trio.lowlevel.checkpoint()
        # Outputs come out about the size of their source; ask for that much room first,
        # rather than write until the disk is full.
        needed = file.file_size * len(indices)
        if self.request_room is not None and not await self.request_room(needed):
            raise NoRoom(needed)
        key = indices[0]

        def on_progress(fraction: float) -> None:
            progress.running[key] = fraction * len(indices)
            progress.changed.set()

        variations = [
            encoding.Variation(
                self.paths.job_dir(job.id) / f"{file.id}_var{index}.mp4", file_effects[index - 1]
            )
            for index in indices
        ]
        encoded = await encoding.encode_variations(
            self.ffmpeg,
            source,
            variations,
            probed=probed,
            on_progress=on_progress,
            threads=self.threads,
            env=encoder_mark(self.paths.root),
        )

        def record(conn: sqlite3.Connection) -> None:
            for index, variation, output in zip(indices, variations, encoded, strict=True):
                jobstore.record_output(
                    conn, output_id=str(uuid.uuid4()), job_id=job.id, file_id=file.id,
                    variation_index=index, path=self.paths.relative(output.path),
                    size=output.size, crc32=output.crc32,
                    effects=variation.effects.as_dict(), now=self.now(),
                )  # fmt: skip

        with trio.CancelScope(shield=True):
            # Shielded: the files are complete, so their rows must be written too.
            await self.db.write(record)
        progress.running.pop(key, None)
        progress.done += len(indices)
        progress.changed.set()

    async def _report_progress(self, job_id: str, file_id: str, progress: _FileProgress) -> None:
        while True:
            await progress.changed.wait()
            progress.changed = trio.Event()
            percent = progress.percent
            self._track(file_id, JobStatus.PROCESSING, percent)
            if percent - progress.published >= EVENT_PROGRESS_STEP:
                progress.published = percent
                self._publish(
                    job_id, "progress", fileId=file_id, progress=percent,
                    status=JobStatus.PROCESSING,
                    completedVariations=progress.done, overallProgress=self._overall(),
                )  # fmt: skip
            if percent - progress.saved >= DB_PROGRESS_STEP:
                progress.saved = percent
                await self.db.write(
                    functools.partial(
                        jobstore.set_file_progress, file_id=file_id, progress=percent,
                        now=self.now(),
                    )
                )  # fmt: skip

    def _track(self, file_id: str, status: JobStatus, percent: float) -> None:
        if self._current is not None:
            self._current.files[file_id] = (status, percent)

    def _overall(self) -> float:
        if self._current is None:
            return 0.0
        return jobstore.overall_progress(JobStatus.PROCESSING, self._current.files.values())

    def _remove_partials(self, job_id: str, file_id: str, done: set[int]) -> None:
        """Remove this file's outputs without a row: leftovers of a run that died."""
        keep = {f"{file_id}_var{index}.mp4" for index in done}
        for path in self.paths.job_dir(job_id).glob(f"{file_id}_var*"):
            if path.name not in keep:
                path.unlink(missing_ok=True)

    async def _finish(self, job_id: str, *, cancelled: bool) -> None:
        with trio.CancelScope(shield=True):
            job = await self.db.read(lambda conn: jobstore.require_job(conn, job_id))
            failed = [file for file in job.files if file.status == JobStatus.FAILED]
            if cancelled:
                status, error = JobStatus.CANCELLED, None
            elif job.files and len(failed) == len(job.files):
                status = JobStatus.FAILED
                error = "Every video failed: " + "; ".join(
                    f"{file.original_name}: {file.error}" for file in failed
                )
            else:
                status, error = JobStatus.COMPLETED, None
            await self.db.write(
                lambda conn: jobstore.finish_job(
                    conn, job_id, status=status, error=error, now=self.now(), ttl_s=self.ttl_s
                )
            )
            # Files before rows: the uploads go first, then the rows stop naming them.
            await trio.to_thread.run_sync(remove_tree, self.paths.upload_dir(job_id))
            await self.db.write(lambda conn: jobstore.clear_uploads(conn, job_id))
        LOGGER.info("job=%s %s", job_id, status)
        self._publish(job_id, "status", status=status, error=error)
