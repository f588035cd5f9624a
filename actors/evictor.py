"""The evictor: frees space when the quota or the volume runs short, oldest finished jobs first.

Usage is the fuller of two fractions: the bytes this service stores (outputs and uploads,
as the store records them) over its quota, and the used part of the volume holding the
data directory. Above `high`, the oldest finished jobs (by finish time) are evicted until
usage is under `low`; queued and processing jobs never are. Each eviction is reserved
with the download tracker first (a job being downloaded is skipped for the next oldest),
then the job's files are removed, then its row becomes an `evicted` tombstone.

`request_room(nbytes)` answers whether `nbytes` more fit under `high`, evicting first
when that makes room. Requests go through the inbox, so evictions never run two at a
time; the evictor also looks on start, every `interval_s`, and at each `UsageChanged`.
A run killed mid-eviction leaves jobs reserved as "evicted": the next run finishes them
before anything else.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from actors.download_tracker import DownloadTracker, TrackerUnavailable
from actors.runtime import Mailbox, NoReply
from refresher import lifecycle
from refresher.db import Database, stored_bytes
from refresher.storage import Paths

LOGGER = logging.getLogger(__name__)

# Doorbells coalesce (any one makes the evictor look) and requests for room wait for a
# free slot, so a small inbox loses nothing.
INBOX_SIZE = 16
INTERVAL_S = 60.0
# An answer takes a few queries, or a few seconds when many jobs must go first. Past
# this the evictor is taken to be stuck and the caller is told so.
ROOM_TIMEOUT_S = 60.0
# A request cut off by a kill of the evictor is sent again this many times in all.
ATTEMPTS = 3


class EvictorUnavailable(RuntimeError):
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        super().__init__(f"evictor did not answer a request for room for {nbytes} bytes")


@dataclass(frozen=True)
class UsageChanged:
    """Something wrote or removed files; look at usage again."""


@dataclass(frozen=True)
class RoomRequest:
    """May `nbytes` more be stored? The answer goes to `reply` (closed unanswered if the
    evictor dies meanwhile, so the caller asks again)."""

    nbytes: int
    reply: trio.MemorySendChannel[bool]


class Evictor:
    name = "evictor"

    def __init__(
        self,
        db: Database,
        paths: Paths,
        tracker: DownloadTracker,
        *,
        quota_bytes: int,
        high: float,
        low: float,
        now: Callable[[], float],
        interval_s: float = INTERVAL_S,
        volume_usage: Callable[[Path], tuple[int, int]] | None = None,
    ) -> None:
        if quota_bytes < 1:
            raise ValueError("quota_bytes must be >= 1")
        if not 0 < high <= 1:
            raise ValueError("high must be > 0 and <= 1")
        if not 0 < low < high:
            raise ValueError("low must be > 0 and below high")
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.db = db
        self.paths = paths
        self.tracker = tracker
        self.quota_bytes = quota_bytes
        self.high = high
        self.low = low
        self.now = now
        self.interval_s = interval_s
        # (used bytes, usable bytes) of the volume holding a path; blocking.
        self.volume_usage = volume_usage or lifecycle.statvfs_usage
        self.inbox: Mailbox[UsageChanged | RoomRequest] = Mailbox(INBOX_SIZE)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep usage under the high watermark and answer requests for room, until cancelled.

        Cancellation may cut an eviction anywhere; the next run finishes it first.
        """
        task_status.started()
        next_check = trio.current_time()
        while True:
            message: UsageChanged | RoomRequest | None = None
            with trio.move_on_at(next_check):
                message = await self.inbox.receive.receive()
            if isinstance(message, RoomRequest):
                await self._answer(message)
            else:  # a doorbell, or time for the periodic look
                await self._make_room(None)
                next_check = trio.current_time() + self.interval_s

    async def request_room(self, nbytes: int) -> bool:
        """Return whether `nbytes` more can be stored at or under the high watermark.

        Evicts the oldest finished jobs first when that makes room; evicts nothing for
        the request, and returns False, when even evicting every job that may be
        evicted would not (or the download tracker cannot grant evictions now). An
        answer, not a reservation: two callers may both be told yes for the same space,
        so writers still handle a full disk. Raise `EvictorUnavailable` if the evictor
        does not answer within `ROOM_TIMEOUT_S`. Cancelling the call abandons the
        question, not an eviction under way.
        """
        if nbytes < 0:
            raise ValueError("nbytes must be >= 0")
        with trio.move_on_after(ROOM_TIMEOUT_S), contextlib.suppress(NoReply):
            granted: bool = await self.inbox.ask(
                functools.partial(RoomRequest, nbytes), attempts=ATTEMPTS
            )
            return granted
        raise EvictorUnavailable(nbytes)

    async def usage(self) -> lifecycle.Usage:
        """Read stored bytes and the volume's reading now."""
        stored = await self.db.read(stored_bytes)
        used, total = await trio.to_thread.run_sync(self.volume_usage, self.paths.root)
        return lifecycle.Usage(stored, self.quota_bytes, used, total)

    async def _answer(self, request: RoomRequest) -> None:
        # Closed on the way out whatever happens: a caller never waits on a dead run.
        with request.reply:
            room = await self._make_room(request.nbytes)
            try:
                request.reply.send_nowait(room)
            except trio.BrokenResourceError:
                LOGGER.debug("room for %d bytes: the caller stopped waiting", request.nbytes)

    async def _make_room(self, nbytes: int | None) -> bool:
        """Evict down to `low` if over `high`, and enough for `nbytes` if given; say if it fits."""
        interrupted = await self.db.read(
            lambda conn: lifecycle.reserved_unfinished(conn, (lifecycle.RESERVED_EVICTED,))
        )
        if interrupted:
            LOGGER.warning("finishing %d evictions an earlier run left", len(interrupted))
            await self._evict(interrupted)
        usage = await self.usage()
        over = usage.fraction() > self.high
        short = nbytes is not None and not usage.has_room(nbytes, self.high)
        if not over and not short:
            return True
        candidates = await self.db.read(lifecycle.eviction_candidates)
        feasible = True
        if nbytes is not None and short:
            evictable = sum(candidate.nbytes for candidate in candidates)
            if not usage.has_room(nbytes, self.high, freed=evictable):
                LOGGER.info("no room for %d bytes even after evicting every finished job", nbytes)
                feasible = short = False

        def enough(freed: int) -> bool:
            if over and usage.fraction(freed) >= self.low:
                return False
            return nbytes is None or not short or usage.has_room(nbytes, self.high, freed)

        reserved: dict[str, int] = {}
        reserved_bytes = 0
        for candidate in candidates:
            if enough(reserved_bytes):
                break
            try:
                granted = await self.tracker.reserve_for_deletion(
                    candidate.job_id, reason=lifecycle.RESERVED_EVICTED
                )
            except TrackerUnavailable as err:
                LOGGER.warning("evicting nothing more for now: %s", err)
                break
            if granted:
                reserved[candidate.job_id] = candidate.nbytes
                reserved_bytes += candidate.nbytes
            else:
                LOGGER.info("job=%s is being downloaded; evicting a newer job", candidate.job_id)
        evicted = await self._evict(list(reserved))
        freed = sum(reserved[job_id] for job_id in evicted)
        if over:
            LOGGER.info(
                "evicted %d jobs (%d bytes): usage %.1f%% -> %.1f%% (low mark %.1f%%)",
                len(evicted), freed, 100 * usage.fraction(), 100 * usage.fraction(freed),
                100 * self.low,
            )  # fmt: skip
        return nbytes is None or (feasible and usage.has_room(nbytes, self.high, freed))

    async def _evict(self, job_ids: list[str]) -> list[str]:
        """Remove the files of reserved jobs, then make them tombstones; return those done."""
        if not job_ids:
            return []
        removed = await trio.to_thread.run_sync(lifecycle.remove_job_files, self.paths, job_ids)
        reasons = dict.fromkeys(removed, lifecycle.EVICTED_REASON)
        now = self.now()
        evicted = await self.db.write(
            lambda conn: lifecycle.tombstone(
                conn,
                reasons,
                status="evicted",
                reserved_as=(lifecycle.RESERVED_EVICTED,),
                now=now,
            )
        )
        for job_id in evicted:
            LOGGER.info("job=%s evicted", job_id)
        return evicted
