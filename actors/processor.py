"""The processor: a worker that turns queued jobs into variations with FFmpeg, one source
file at a time.

The store is the queue and the record: `JobQueued` only rings the bell, and every
finished variation is a row written in the same transaction that counts it. The
processor claims a file (`refresher.jobs.claims`), renews the claim while it works on it
and gives it back when done, so any number of processors in any number of processes
share the queue. So a processor can be killed anywhere: its FFmpeg dies with it, its
claim lapses, and another processor (or its own next start, which in a store it alone
uses drops earlier claims at once and kills encoders a dead run left behind) resumes the
file from its last finished variation. A cancel reaches the processor holding the job
(`CancelJob`, through the bus) and stops its FFmpeg at once; a lost notice is made up for
at the next batch or renewal, which read the job's cancel from the store.

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
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio
from sqlalchemy import Connection

from actors.runtime import Mailbox
from refresher.jobs import claims, records
from refresher.jobs.batches import BatchMaker
from refresher.jobs.claims import CLAIM_TTL_S, RENEWALS_PER_TTL, Claim, ClaimLost
from refresher.jobs.events import JobEvent
from refresher.jobs.lifecycle import Lifecycle
from refresher.jobs.progress import FileProgress
from refresher.jobs.progress import report as report_progress
from refresher.jobs.status import JobStatus
from refresher.media import effects, encoding
from refresher.media.ffmpeg import (
    MediaError,
    failure_detail,
    failure_sentence,
    kill_leftover_encoders,
    remove_files,
)
from refresher.media.probe import DEFAULT_LIMITS, MediaLimits, NotAVideo, Probe, probe
from refresher.media.variations import Draws
from refresher.storage import reconcile
from refresher.storage.full import StorageFull
from refresher.store import write_if_room

LOGGER = logging.getLogger(__name__)

# Doorbells and cancels; a full inbox already holds a ring that makes the processor look.
INBOX_SIZE = 64
# A claim's token, in the names of the files made under it: this many hex digits.
CLAIM_TAG_CHARS = 12
# A stopping processor waits this long at most to give its claim back; past it, the claim
# lapses on its own.
RELEASE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class JobQueued:
    job_id: str


@dataclass(frozen=True)
class CancelJob:
    """A user cancelled the job; its `cancelled_at` is already in the database."""

    job_id: str


@dataclass
class _Running:
    """The claim being worked on, and how to stop the work."""

    claim: Claim
    scope: trio.CancelScope
    # The claim lapsed and another processor took the file over: the work is void.
    lost: bool = False


class TurnOver(Exception):
    """A batch ended and another job waits: the claim goes back, the file unfinished, and
    the queue serves that job next (`refresher.jobs.claims`)."""


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
        claim_ttl_s: float = CLAIM_TTL_S,
        queue_order: str = "fair",
    ) -> None:
        if claim_ttl_s <= 0:
            raise ValueError("claim_ttl_s must be > 0")
        if queue_order not in claims.ORDERS:
            raise ValueError(f"queue_order must be one of {', '.join(claims.ORDERS)}")
        # "fair": jobs take turns batch by batch; "fifo": job after job.
        self.queue_order = queue_order
        # A file's start and end go through the lifecycle; progress is told directly.
        self.lifecycle = lifecycle
        self.db = lifecycle.db
        self.paths = lifecycle.paths
        self.blobs = lifecycle.blobs
        self.now = lifecycle.now
        self.publish = lifecycle.publish
        self.limits = limits
        self.ffmpeg = ffmpeg
        self.claim_ttl_s = claim_ttl_s
        # This processor's name in its claims.
        self.worker = uuid.uuid4().hex
        self.batches = BatchMaker(
            self.db, self.paths, ffmpeg, now=self.now, threads=threads,
            request_room=request_room, limits=limits, claim_ttl_s=claim_ttl_s,
            blobs=lifecycle.blobs,
        )  # fmt: skip
        self.inbox: Mailbox[JobQueued | CancelJob] = Mailbox(INBOX_SIZE)
        self._wake = trio.Event()
        self._current: _Running | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover from any earlier run, then process queued files until cancelled.

        Reports started once the encoders an earlier run left are killed (in a store this
        process alone uses); giving back the claims it left comes after, as it may have to
        wait for room. Cancellation stops FFmpeg, removes partial outputs and gives the
        claim back; the file stays `processing` for the next claim to resume.
        """
        if not self.db.shared:
            killed = await trio.to_thread.run_sync(kill_leftover_encoders, self.paths.root)
            if killed:
                LOGGER.warning("recovered: killed %d encoders", len(killed))
        self._current = None
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._work)
                async for message in self.inbox.receive:
                    if isinstance(message, CancelJob):
                        current = self._current
                        if current is not None and current.claim.job.id == message.job_id:
                            current.scope.cancel()
                    else:
                        self._wake.set()
        finally:  # its measuring process ends with it
            await self.batches.measurer.aclose()

    async def _work(self) -> None:
        # After started(): on a full storage this waits for room, and the service runs.
        if not self.db.shared:
            resumed = await self.lifecycle.drop_claims()
            if resumed:
                LOGGER.warning("recovered: resuming jobs %s", resumed)
        if self.blobs.remote:  # the local copies an earlier run left of jobs now ended
            statuses = await self.db.read(reconcile.job_statuses)
            cleared = await trio.to_thread.run_sync(reconcile.clear_scratch, self.paths, statuses)
            LOGGER.info("cleared %d leftovers of an earlier run from the scratch space", cleared)
        while True:
            # A fresh event before looking: a ring during the look is not lost.
            self._wake = trio.Event()
            await self.lifecycle.settle_cancelled()
            claim = await self.lifecycle.claim_next(
                worker=self.worker, token=uuid.uuid4().hex[:CLAIM_TAG_CHARS],
                ttl_s=self.claim_ttl_s, order=self.queue_order,
            )  # fmt: skip
            if claim is not None:
                await self._process(claim)
            elif self.db.shared:
                # Another processor's claim may lapse without a ring: look again in a while.
                with trio.move_on_after(self.claim_ttl_s / RENEWALS_PER_TTL):
                    await self._wake.wait()
            else:
                await self._wake.wait()

    async def _process(self, claim: Claim) -> None:
        job, file = claim.job, claim.file
        LOGGER.info("job=%s file=%s processing (claim %s)", job.id, file.id, claim.token)
        running = _Running(claim, trio.CancelScope())
        self._current = running
        ended: tuple[JobStatus, str | None, FileProgress] | None = None
        try:
            with running.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._keep_claim, running)
                    try:
                        ended = await self._process_file(running)
                    except ClaimLost:
                        running.lost = True
                    except TurnOver:
                        LOGGER.info("job=%s file=%s: another job's turn", job.id, file.id)
                    nursery.cancel_scope.cancel()
        except BaseException:
            # A stop (or a fault): the claim goes back, so another processor (or the next
            # run) takes the file over at once instead of when the claim lapses.
            with trio.move_on_after(RELEASE_TIMEOUT_S) as releasing:
                releasing.shield = True
                await self.lifecycle.release(claim, ttl_s=self.claim_ttl_s, holding=releasing)
            raise
        finally:
            self._current = None
        if running.lost:
            LOGGER.warning("job=%s file=%s taken over by another worker", job.id, file.id)
            return
        # Shielded, so that a stop does not cut a file's end in two; the shield is lifted
        # if a write has to wait for room (the claim then lapses, and the file resumes).
        with trio.CancelScope(shield=True) as finishing:
            if ended is None:  # cancelled, or its turn over: resumed at the next claim
                await self.lifecycle.release(claim, ttl_s=self.claim_ttl_s, holding=finishing)
                return
            status, error, progress = ended
            percent = 100.0 if status == JobStatus.COMPLETED else progress.percent
            # Told before the job's end (which ends the job's streams) that it may bring.
            self.publish(JobEvent(job.id, "progress", progress.event(file.id, status, percent)))
            try:
                await self.lifecycle.end_file(
                    claim, status=status, progress=percent, error=error,
                    ttl_s=self.claim_ttl_s, holding=finishing,
                )  # fmt: skip
            except ClaimLost:
                LOGGER.warning("job=%s file=%s taken over by another worker", job.id, file.id)

    async def _keep_claim(self, running: _Running) -> None:
        """Renew the claim every third of its time to live; stop the work if it was taken
        over, or if the job was cancelled (a cancel whose notice was lost)."""
        claim = running.claim

        def renew(conn: Connection) -> tuple[bool, bool]:
            ours = claims.renew(conn, claim.file.id, claim.token, self.claim_ttl_s)
            return ours, records.cancel_requested(conn, claim.job.id)

        while True:
            await trio.sleep(self.claim_ttl_s / RENEWALS_PER_TTL)
            try:
                ours, cancelled = await self.db.write(renew)
            except StorageFull:
                LOGGER.warning("job=%s claim not renewed: the storage is full", claim.job.id)
                continue
            if not ours:
                running.lost = True
            if cancelled or not ours:
                running.scope.cancel()
                return

    async def _process_file(self, running: _Running) -> tuple[JobStatus, str | None, FileProgress]:
        """Make the claimed file's variations still to make; return how the file ends:
        its status, why it failed (or None) and its progress."""
        claim = running.claim
        job, file = claim.job, claim.file
        if file.position == 0 and job.thumbnail_path is None:
            await self._make_thumbnail(job)
        if await self.db.read(lambda conn: records.cancel_requested(conn, job.id)):
            running.scope.cancel()
            await trio.lowlevel.checkpoint()
        done = {output.variation_index for output in file.outputs}
        await trio.to_thread.run_sync(self.batches.remove_leftovers, job.id, file)
        progress = FileProgress(
            total=job.variations_per_video,
            done=len(done),
            files={each.id: (each.status, each.progress) for each in job.files},
        )
        moment = self.now()
        await write_if_room(
            self.db,
            lambda conn: claims.save_progress(conn, file.id, claim.token, progress.percent, moment),
            what=f"job={job.id} file={file.id} start",
        )
        progress.event(file.id, JobStatus.PROCESSING, progress.percent)
        pending = [index for index in range(1, job.variations_per_video + 1) if index not in done]
        first = file.position * job.variations_per_video
        file_effects = effects.generate(job.seed, job.total_variations)[
            first : first + job.variations_per_video
        ]
        source = await self._fetch(file.upload_path)
        if source is None:
            error: str | None = "The upload is gone; upload the video again."
        else:
            try:
                error = await self._encode_pending(running, source, pending, file_effects, progress)
            finally:
                if self.blobs.remote:  # this process's copy of it: the bucket keeps the source
                    await trio.to_thread.run_sync(remove_files, [source])
        if error:
            LOGGER.warning("job=%s file=%s failed: %s", job.id, file.id, error)
            return JobStatus.FAILED, error, progress
        return JobStatus.COMPLETED, None, progress

    async def _fetch(self, stored: str | None) -> Path | None:
        """The local path of an upload, fetched from where it is kept; None if it is gone."""
        if stored is None:
            return None
        source = self.paths.absolute(stored)
        try:
            await trio.to_thread.run_sync(self.blobs.fetch, source)
        except FileNotFoundError:
            return None
        return source

    async def _make_thumbnail(self, job: records.JobRecord) -> None:
        source = await self._fetch(job.files[0].upload_path)
        if source is not None:
            await self.batches.make_thumbnail(job.id, source)

    async def _encode_pending(
        self,
        running: _Running,
        source: Path,
        pending: list[int],
        file_effects: list[effects.Effects],
        progress: FileProgress,
    ) -> str | None:
        """Encode the file's `pending` variations; return why the file failed, or None."""
        job, file = running.claim.job, running.claim.file
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
        turn_over = False
        async with trio.open_nursery() as watchers:
            watchers.start_soon(
                functools.partial(
                    report_progress, progress, running.claim, db=self.db, publish=self.publish,
                    now=self.now,
                )
            )  # fmt: skip
            try:
                batches = encoding.split_batches(pending, per_encode)
                for number, batch in enumerate(batches, start=1):
                    await self._encode_batch(running, source, probed, batch, draws, progress)
                    fair = self.queue_order == "fair"
                    if (
                        fair
                        and number < len(batches)
                        and await self.db.read(lambda conn: claims.others_waiting(conn, job.id))
                    ):
                        turn_over = True
                        break
            except (MediaError, StorageFull, OSError) as err:
                error = failure_sentence(err)
                LOGGER.warning("job=%s file=%s failed: %s", job.id, file.id, failure_detail(err))
            watchers.cancel_scope.cancel()
        if turn_over:
            raise TurnOver()
        return error

    async def _encode_batch(
        self,
        running: _Running,
        source: Path,
        probed: Probe,
        indices: list[int],
        draws: Draws,
        progress: FileProgress,
    ) -> None:
        if await self.db.read(lambda conn: records.cancel_requested(conn, running.claim.job.id)):
            # The notice of this cancel was lost (a full inbox, a restart, another
            # process): act on the store's word.
            running.scope.cancel()
            await trio.lowlevel.checkpoint()
        key = indices[0]

        def on_progress(fraction: float) -> None:
            progress.batch_moved(key, fraction * len(indices))

        await self.batches.make(
            running.claim, source, probed, indices, draws, on_progress=on_progress
        )
        progress.batch_done(key, len(indices))
