"""The processor: turns queued jobs into variations with FFmpeg, one job at a time.

The database is the queue and the record: `JobQueued` only rings the bell, and every
finished variation is a row written in the same transaction that counts it. So the
processor can be killed anywhere: on its next start it kills encoders a dead run left
behind, puts interrupted jobs back in the queue, and resumes each from its last finished
variation.

Faults are results, not crashes. A full storage (in an output or in the database) fails
the file being encoded with a reason, after removing what its batch wrote
(`refresher.jobs.batches`); a progress write that finds no room is skipped; a state write
that must land waits for room (`refresher.storage.full`). An FFmpeg stopped by a signal the
service did not send runs again after a pause, in which a stop of the service, whose
signal it may have shared, arrives and leaves the job to resume: only a real encode
failure fails a file.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from actors.runtime import Mailbox
from refresher.db import write_if_room, write_when_room
from refresher.jobs import records
from refresher.jobs.batches import BatchMaker
from refresher.jobs.events import JobEvent
from refresher.jobs.lifecycle import Lifecycle
from refresher.jobs.status import FINISHED, JobStatus
from refresher.media import effects, encoding, thumbnails
from refresher.media.ffmpeg import (
    MediaError,
    encoder_mark,
    failure_detail,
    failure_sentence,
    kill_leftover_encoders,
    remove_files,
)
from refresher.media.probe import DEFAULT_LIMITS, MediaLimits, NotAVideo, Probe, probe
from refresher.media.variations import Draws
from refresher.storage.full import StorageFull

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
        lifecycle: Lifecycle,
        *,
        ffmpeg: str,
        threads: int | None = None,
        request_room: Callable[[int], Awaitable[bool]] | None = None,
        limits: MediaLimits = DEFAULT_LIMITS,
    ) -> None:
        # A job's start and end go through the lifecycle; progress is told directly.
        self.lifecycle = lifecycle
        self.db = lifecycle.db
        self.paths = lifecycle.paths
        self.now = lifecycle.now
        self.publish = lifecycle.publish
        self.limits = limits
        self.ffmpeg = ffmpeg
        self.batches = BatchMaker(
            self.db, self.paths, ffmpeg, now=self.now, threads=threads,
            request_room=request_room, limits=limits,
        )  # fmt: skip
        self.inbox: Mailbox[JobQueued | CancelJob] = Mailbox(INBOX_SIZE)
        self._wake = trio.Event()
        self._current: _RunningJob | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover from any earlier run, then process queued jobs until cancelled.

        Reports started once the encoders an earlier run left are killed; requeueing the
        jobs it left comes after, as it may have to wait for room. Cancellation stops
        FFmpeg and removes partial outputs; the job stays in the database as
        `processing` and is requeued by the next `run()`.
        """
        killed = await trio.to_thread.run_sync(kill_leftover_encoders, self.paths.root)
        if killed:
            LOGGER.warning("recovered: killed %d encoders", len(killed))
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
        # After started(): on a full storage this waits for room, and the service runs.
        requeued = await self.lifecycle.requeue_interrupted()
        if requeued:
            LOGGER.warning("recovered: requeued jobs %s", requeued)
        while True:
            # A fresh event before looking: a ring during the look is not lost.
            self._wake = trio.Event()
            job = await self.lifecycle.start_next()
            if job is None:
                await self._wake.wait()
                continue
            await self._process(job)

    def _publish(self, job_id: str, kind: str, **data: object) -> None:
        self.publish(JobEvent(job_id, kind, dict(data)))

    async def _process(self, job: records.JobRecord) -> None:
        LOGGER.info("job=%s processing: %d videos", job.id, job.total_videos)
        await self._make_thumbnail(job)
        variation_effects = effects.generate(job.seed, job.total_variations)
        running = _RunningJob(
            job.id,
            trio.CancelScope(),
            {file.id: (file.status, file.progress) for file in job.files},
        )
        self._current = running
        with running.scope:
            if await self.db.read(lambda conn: records.cancel_requested(conn, job.id)):
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

    async def _make_thumbnail(self, job: records.JobRecord) -> None:
        if job.thumbnail_path is not None:
            return
        first = job.files[0]
        if first.upload_path is None:
            return
        output = self.paths.job_dir(job.id) / THUMBNAIL_NAME
        made = await thumbnails.thumbnail_of(
            self.ffmpeg, self.paths.absolute(first.upload_path), output, limits=self.limits,
            env=encoder_mark(self.paths.root),
        )  # fmt: skip
        relative = self.paths.relative(output)
        if made and not await write_if_room(
            self.db,
            lambda conn: records.set_thumbnail(conn, job.id, relative),
            what=f"job={job.id} thumbnail",
        ):
            await trio.to_thread.run_sync(remove_files, [output])

    async def _process_file(
        self,
        job: records.JobRecord,
        file: records.FileRecord,
        file_effects: list[effects.Effects],
    ) -> None:
        done = {output.variation_index for output in file.outputs}
        await trio.to_thread.run_sync(self.batches.remove_leftovers, job.id, file.id, done)
        progress = _FileProgress(total=job.variations_per_video, done=len(done))
        await write_if_room(
            self.db,
            lambda conn: records.set_file_state(
                conn,
                file.id,
                status=JobStatus.PROCESSING,
                progress=progress.percent,
                now=self.now(),
            ),
            what=f"job={job.id} file={file.id} start",
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
        # Not shielded: a stop while this waits for room leaves the file to the next run.
        await write_when_room(
            self.db,
            lambda conn: records.set_file_state(
                conn, file.id, status=status, progress=percent, error=error, now=self.now()
            ),
            what=f"job={job.id} file={file.id} {status}",
        )
        self._track(file.id, status, percent)
        self._publish(
            job.id, "progress", fileId=file.id, progress=percent, status=status,
            completedVariations=progress.done, overallProgress=self._overall(),
        )  # fmt: skip

    async def _encode_pending(
        self,
        job: records.JobRecord,
        file: records.FileRecord,
        source: Path,
        pending: list[int],
        file_effects: list[effects.Effects],
        progress: _FileProgress,
    ) -> str | None:
        """Encode the file's `pending` variations; return why the file failed, or None."""
        try:
            probed = await trio.to_thread.run_sync(probe, source, self.limits)
        except NotAVideo as err:
            return f"The file {err.reason}."
        except OSError as err:
            LOGGER.warning("job=%s file=%s upload unreadable: %s", job.id, file.id, err)
            return f"The upload could not be read: {err.strerror or 'an input/output error'}."
        # Decoding once for several variations pays; how many fit in memory depends on the
        # frame size. A batch's outputs are recorded as soon as it ends, so a restart
        # resumes after the last finished batch.
        draws = Draws(
            strength=effects.Strength(job.strength),
            seed=job.seed,
            position=file.position,
            frame=effects.Frame(probed.width, probed.height, probed.fps, probed.has_audio),
            subtle=file_effects,
            mirror=job.mirror,
        )
        per_encode = encoding.variations_per_encode(probed.width, probed.height)
        error: str | None = None
        async with trio.open_nursery() as watchers:
            watchers.start_soon(self._report_progress, job.id, file.id, progress)
            try:
                for batch in encoding.split_batches(pending, per_encode):
                    await self._encode_batch(job, file, source, probed, batch, draws, progress)
            except (MediaError, StorageFull, OSError) as err:
                error = failure_sentence(err)
                LOGGER.warning("job=%s file=%s failed: %s", job.id, file.id, failure_detail(err))
            watchers.cancel_scope.cancel()
        return error

    async def _encode_batch(
        self,
        job: records.JobRecord,
        file: records.FileRecord,
        source: Path,
        probed: Probe,
        indices: list[int],
        draws: Draws,
        progress: _FileProgress,
    ) -> None:
        if await self.db.read(lambda conn: records.cancel_requested(conn, job.id)):
            # The doorbell for this cancel was lost (a full inbox, a restart): act on the
            # database's word.
            if self._current is not None:
                self._current.scope.cancel()
            await trio.lowlevel.checkpoint()
        key = indices[0]

        def on_progress(fraction: float) -> None:
            progress.running[key] = fraction * len(indices)
            progress.changed.set()

        await self.batches.make(
            job.id, file, source, probed, indices, draws, on_progress=on_progress
        )
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
                # Only a page reload shows it: on a full storage, the encode goes on without.
                await write_if_room(
                    self.db,
                    functools.partial(
                        records.set_file_progress, file_id=file_id, progress=percent,
                        now=self.now(),
                    ),
                    what=f"job={job_id} file={file_id} progress",
                )  # fmt: skip

    def _track(self, file_id: str, status: JobStatus, percent: float) -> None:
        if self._current is not None:
            self._current.files[file_id] = (status, percent)

    def _overall(self) -> float:
        if self._current is None:
            return 0.0
        return records.overall_progress(JobStatus.PROCESSING, self._current.files.values())

    async def _finish(self, job_id: str, *, cancelled: bool) -> None:
        # Shielded, so that a stop does not cut a job's end in two; the shield is lifted
        # if a write has to wait for room (the next run then finishes the job).
        with trio.CancelScope(shield=True) as finishing:
            job = await self.db.read(lambda conn: records.require_job(conn, job_id))
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
            await self.lifecycle.finish(job_id, status=status, error=error, holding=finishing)
