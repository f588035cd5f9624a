"""The evictor: frees space when the quota or the volume runs short, oldest finished jobs first.

Usage is the fuller of two fractions: the bytes this service stores (outputs and uploads,
as the store records them) over its quota, and the used part of the volume holding the
data directory (`refresher.storage.usage`). Above `high`, the oldest finished jobs (by finish
time) are evicted until usage is under `low`; queued and processing jobs never are. Each
eviction takes the one removal flow (`refresher.storage.removal`): reserved with the download
tracker first (a job being downloaded is skipped for the next oldest), then the job's
files are removed, then its row becomes an `evicted` tombstone.

`request_room(nbytes)` answers whether `nbytes` more fit under `high`, evicting first
when that makes room. Requests go through the inbox, and each look holds the store's
cluster-wide "evictor" lock, so evictions never run two at a time, whichever processes
ask; the evictor also looks on start and every `interval_s` (skipping a look while
another process's evictor makes one). A run killed mid-eviction
leaves jobs reserved as "evicted": the next run finishes them before anything else.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from actors.runtime import Mailbox, NoReply
from refresher.jobs.lifecycle import Lifecycle
from refresher.jobs.transitions import EVICTED_MESSAGE, RemovalReason
from refresher.storage import removal
from refresher.storage.full import StorageFull
from refresher.storage.removal import Reserver
from refresher.storage.usage import Usage, eviction_candidates, stored_bytes

LOGGER = logging.getLogger(__name__)

# Requests for room wait for a free slot, so a small inbox loses nothing.
INBOX_SIZE = 16
INTERVAL_S = 60.0
# An answer takes a few queries, or a few seconds when many jobs must go first. Past
# this the evictor is taken to be stuck and the caller is told so.
ROOM_TIMEOUT_S = 60.0
# A request cut off by a kill of the evictor is sent again this many times in all.
ATTEMPTS = 3
# The store's lock that one look at a time holds, cluster-wide; a request waits this long
# for another process's look to end (then answers whether the room could be made).
LOCK = "evictor"
LOCK_PATIENCE_S = ROOM_TIMEOUT_S / 2


class EvictorUnavailable(RuntimeError):
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        super().__init__(f"evictor did not answer a request for room for {nbytes} bytes")


@dataclass(frozen=True)
class RoomRequest:
    """May `nbytes` more be stored? The answer goes to `reply` (closed unanswered if the
    evictor dies meanwhile, so the caller asks again). With `evict` False the evictor
    only says whether evicting could make the room, and evicts nothing."""

    nbytes: int
    reply: trio.MemorySendChannel[bool]
    evict: bool = True


class Evictor:
    name = "evictor"

    def __init__(
        self,
        lifecycle: Lifecycle,
        reserver: Reserver,
        *,
        quota_bytes: int,
        high: float,
        low: float,
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
        # Every job evicted goes through the lifecycle, which tells its event streams.
        self.lifecycle = lifecycle
        self.db = lifecycle.db
        self.paths = lifecycle.paths
        self.reserver = reserver
        self.quota_bytes = quota_bytes
        self.high = high
        self.low = low
        self.interval_s = interval_s
        # (used bytes, usable bytes) of the volume holding a path; blocking. Where the bytes
        # live in a bucket there is no volume to fill (the blob store says (0, 0)), and
        # the quota alone counts.
        self.volume_usage = volume_usage or (lambda _root: lifecycle.blobs.volume())
        self.inbox: Mailbox[RoomRequest] = Mailbox(INBOX_SIZE)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep usage under the high watermark and answer requests for room, until cancelled.

        Cancellation may cut an eviction anywhere; the next run finishes it first.
        """
        task_status.started()
        next_check = trio.current_time()
        while True:
            request: RoomRequest | None = None
            with trio.move_on_at(next_check):
                request = await self.inbox.receive.receive()
            if request is not None:
                await self._answer(request)
            else:  # time for the periodic look
                await self._room_or_full(None)
                next_check = trio.current_time() + self.interval_s

    async def request_room(self, nbytes: int, *, evict: bool = True) -> bool:
        """Return whether `nbytes` more can be stored at or under the high watermark.

        Evicts the oldest finished jobs first when that makes room; evicts nothing for
        the request, and returns False, when even evicting every job that may be
        evicted would not (or the download tracker cannot grant evictions now). With
        `evict` False, only say whether the room is there or could be made: what a
        request merely announces (an upload's declared length) is weighed, and only
        bytes that arrive make room. An answer, not a reservation: two callers may both
        be told yes for the same space, so writers still handle a full disk. Raise
        `EvictorUnavailable` if the evictor does not answer within `ROOM_TIMEOUT_S`.
        Cancelling the call abandons the question, not an eviction under way.
        """
        if nbytes < 0:
            raise ValueError("nbytes must be >= 0")
        with trio.move_on_after(ROOM_TIMEOUT_S), contextlib.suppress(NoReply):
            granted: bool = await self.inbox.ask(
                functools.partial(RoomRequest, nbytes, evict=evict), attempts=ATTEMPTS
            )
            return granted
        raise EvictorUnavailable(nbytes)

    async def usage(self) -> Usage:
        """Read stored bytes and the volume's reading now."""
        stored = await self.db.read(stored_bytes)
        used, total = await trio.to_thread.run_sync(self.volume_usage, self.paths.root)
        return Usage(stored, self.quota_bytes, used, total)

    async def _answer(self, request: RoomRequest) -> None:
        # Closed on the way out whatever happens: a caller never waits on a dead run.
        with request.reply:
            if request.evict:
                room = await self._room_or_full(request.nbytes)
            else:
                room = await self._could_fit(request.nbytes)
            try:
                request.reply.send_nowait(room)
            except trio.BrokenResourceError:
                LOGGER.debug("room for %d bytes: the caller stopped waiting", request.nbytes)

    async def _could_fit(self, nbytes: int) -> bool:
        """Whether `nbytes` fit now, or would once every job that may be evicted is."""
        usage = await self.usage()
        if usage.has_room(nbytes, self.high):
            return True
        candidates = await self.db.read(eviction_candidates)
        evictable = sum(candidate.nbytes for candidate in candidates)
        return usage.has_room(nbytes, self.high, freed=evictable)

    async def _room_or_full(self, nbytes: int | None) -> bool:
        """`_make_room` under the cluster-wide lock, where a store too full to record an
        eviction means no room: on a restart the same look would fail again at once, a
        crash loop. A request waits for the lock; the periodic look (`nbytes` None) skips
        while another process holds it."""
        try:
            patience = 0.0 if nbytes is None else LOCK_PATIENCE_S
            async with self.db.exclusive(LOCK, patience_s=patience) as held:
                if not held:
                    return nbytes is None or await self._could_fit(nbytes)
                return await self._make_room(nbytes)
        except StorageFull as err:
            LOGGER.warning("no room: the storage is too full to record evictions (%s)", err)
            return False

    async def _make_room(self, nbytes: int | None) -> bool:
        """Evict down to `low` if over `high`, and enough for `nbytes` if given; say if it fits."""
        await removal.resume(self.lifecycle, [RemovalReason.EVICTED])
        usage = await self.usage()
        over = usage.fraction() > self.high
        short = nbytes is not None and not usage.has_room(nbytes, self.high)
        if not over and not short:
            return True
        candidates = await self.db.read(eviction_candidates)
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

        nbytes_of = {candidate.job_id: candidate.nbytes for candidate in candidates}
        outcome = await removal.remove(
            self.lifecycle,
            self.reserver,
            RemovalReason.EVICTED,
            dict.fromkeys(nbytes_of, EVICTED_MESSAGE),
            enough=lambda granted: enough(sum(nbytes_of[job_id] for job_id in granted)),
        )
        for job_id in outcome.busy:
            LOGGER.info("job=%s is being downloaded; evicting a newer job", job_id)
        for job_id in outcome.retired:
            LOGGER.info("job=%s evicted", job_id)
        freed = sum(nbytes_of[job_id] for job_id in outcome.retired)
        if over:
            LOGGER.info(
                "evicted %d jobs (%d bytes): usage %.1f%% -> %.1f%% (low mark %.1f%%)",
                len(outcome.retired), freed, 100 * usage.fraction(), 100 * usage.fraction(freed),
                100 * self.low,
            )  # fmt: skip
        return nbytes is None or (feasible and usage.has_room(nbytes, self.high, freed))
