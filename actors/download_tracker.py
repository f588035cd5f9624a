"""The download tracker: leases that keep a job's files alive while a download reads them.

Every change goes through this actor's inbox and is applied in one database transaction
(`refresher.storage.leases`), so leases survive a kill and restart of the tracker: the new
incarnation finds them where the old one left them. Each lease lasts `ttl_s` (the
service's DOWNLOAD_STALL_S) unless renewed, and the tracker renews the leases this
process holds every third of that, for as long as their downloads run: leases of a
process that died lapse within `ttl_s`, whichever process looks. Where one process owns
the store, the leases of an earlier run are dropped at once when the tracker starts.

Callers use the public coroutines (`acquire`, `release`, `reserve_for_deletion`); each
sends a message and waits for the reply. A request whose reply never comes (the tracker
was killed while handling it) is sent again; all requests are idempotent. If the tracker
stays unreachable, `acquire` and `reserve_for_deletion` raise `TrackerUnavailable`: the
caller refuses the download with 503 or skips the deletion until later, so in doubt
nothing is deleted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import outcome
import trio
from sqlalchemy import Connection

from actors.runtime import Mailbox, NoReply
from refresher.storage import leases
from refresher.storage.full import StorageFull, release_ballast
from refresher.storage.leases import Lease, LeaseRefused
from refresher.storage.removal import ReservationUnavailable
from refresher.store import Database
from refresher.timestamps import iso

LOGGER = logging.getLogger(__name__)

# Requests queue here while the tracker restarts; a full inbox makes callers wait.
INBOX_SIZE = 256
# A reply normally takes one small SQLite transaction; a request cut off by a kill of the
# tracker is sent again (at most ATTEMPTS times), and past this the tracker is presumed
# unreachable.
REPLY_TIMEOUT_S = 10.0
ATTEMPTS = 5
# A lease lives this long unless renewed (the service sets DOWNLOAD_STALL_S), and is
# renewed this many times over it: a renewal that finds the store busy has two more goes
# before the lease could lapse.
LEASE_TTL_S = 120.0
RENEWALS_PER_TTL = 3

__all__ = ["DownloadTracker", "Lease", "LeaseRefused", "TrackerUnavailable"]


class TrackerUnavailable(ReservationUnavailable):
    def __init__(self, operation: str) -> None:
        super().__init__(f"download tracker did not answer {operation} in time")


@dataclass(frozen=True)
class Acquire:
    lease_id: str
    job_id: str
    holder: str
    ttl_s: float


@dataclass(frozen=True)
class Release:
    lease_id: str


@dataclass(frozen=True)
class Reserve:
    job_id: str
    reason: str


Request = Acquire | Release | Reserve


@dataclass(frozen=True)
class _Envelope:
    request: Request
    reply: trio.MemorySendChannel[outcome.Outcome[Any]]


def _apply(conn: Connection, request: Request, now: str) -> object:
    match request:
        case Acquire(lease_id, job_id, holder, ttl_s):
            return leases.acquire(
                conn, lease_id=lease_id, job_id=job_id, holder=holder, now=now, ttl_s=ttl_s
            )
        case Release(lease_id):
            leases.release(conn, lease_id)
        case Reserve(job_id, reason):
            return leases.reserve_for_deletion(conn, job_id, reason=reason, now=now)
    return None


class DownloadTracker:
    name = "download_tracker"

    def __init__(
        self,
        db: Database,
        *,
        now: Callable[[], float],
        ballast: Path | None = None,
        ttl_s: float = LEASE_TTL_S,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.db = db
        self.now = now
        # Room held back on the volume (`refresher.storage.full`), given up when a release
        # finds the store full: a lease that stays would keep its job from removal.
        self.ballast = ballast
        self.ttl_s = ttl_s
        # One id per process: leases taken by this process carry it.
        self.holder = uuid.uuid4().hex
        # The leases this process holds now: renewed until released. Kept by the tracker
        # object, so a restart of the actor renews them on.
        self.held: set[str] = set()
        self.inbox: Mailbox[_Envelope] = Mailbox(INBOX_SIZE)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve lease requests, and renew the leases held, until cancelled; a request cut
        off by cancel is retried."""
        if not self.db.shared:
            dropped = await self.db.write(lambda conn: leases.drop_other_holders(conn, self.holder))
            if dropped:
                LOGGER.info("dropped %d leases of an earlier process", dropped)
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._renew)
            await self._serve()

    async def _renew(self) -> None:
        """Every third of the leases' time to live: renew those held, drop lapsed ones."""
        while True:
            await trio.sleep(self.ttl_s / RENEWALS_PER_TTL)

            def renew(conn: Connection, held: frozenset[str] = frozenset(self.held)) -> int:
                leases.drop_lapsed(conn)
                return leases.renew(conn, held, ttl_s=self.ttl_s)

            try:
                renewed = await self.db.write(renew)
            except StorageFull:
                LOGGER.warning("leases not renewed: the storage is full")
                continue
            LOGGER.debug("renewed %d leases", renewed)

    async def _serve(self) -> None:
        async for envelope in self.inbox.receive:
            # Closed however this ends, so a caller never waits on a killed run.
            with envelope.reply:
                stamp = iso(self.now())
                result = await outcome.acapture(
                    self.db.write, lambda conn, r=envelope.request, at=stamp: _apply(conn, r, at)
                )
                if isinstance(result, outcome.Error) and not isinstance(result.error, Exception):
                    # This run is being killed (Cancelled), maybe before the write ran: the
                    # envelope closes unanswered and the caller asks again. Sent as a reply,
                    # the kill would surface in the caller, and a release it cut short would
                    # leave its lease behind until the lease lapsed.
                    result.unwrap()
                try:
                    envelope.reply.send_nowait(result)
                except trio.BrokenResourceError:
                    LOGGER.debug("reply to %s not wanted any more", envelope.request)

    async def _ask(self, request: Request) -> Any:
        with trio.move_on_after(REPLY_TIMEOUT_S), contextlib.suppress(NoReply):
            result = await self.inbox.ask(functools.partial(_Envelope, request), attempts=ATTEMPTS)
            return result.unwrap()
        raise TrackerUnavailable(type(request).__name__)

    async def acquire(self, job_id: str) -> Lease:
        """Lease the job's files for one download; raise `LeaseRefused` if it may not be read.

        Cancel-safe: a caller cancelled (or timed out) while the tracker may already have
        written the lease gives it back before the cancellation goes on, so no lease is
        left that nobody holds. The give-back queues behind the request in the inbox,
        which the tracker serves in order.
        """
        request = Acquire(uuid.uuid4().hex, job_id, self.holder, self.ttl_s)
        self.held.add(request.lease_id)
        try:
            lease: Lease = await self._ask(request)
        except LeaseRefused:
            self.held.discard(request.lease_id)
            raise
        except BaseException:
            await self.release(Lease(request.lease_id, job_id))
            raise
        return lease

    async def release(self, lease: Lease) -> None:
        """Give the lease back (a lease already given back is fine). Shielded: it runs to
        the end even in a cancelled task."""
        # Not renewed any more whatever happens below: a lease the store keeps lapses.
        self.held.discard(lease.id)
        with trio.CancelScope(shield=True):
            for attempt in range(2):
                try:
                    await self._ask(Release(lease.id))
                    return
                except TrackerUnavailable:
                    break
                except StorageFull:
                    if attempt or self.ballast is None:
                        break
                    if not await trio.to_thread.run_sync(release_ballast, self.ballast):
                        break
            # The lease stays and keeps the job from deletion for its time to live at
            # most: the safe side, and it lapses then.
            LOGGER.error("lease=%s job=%s could not be released", lease.id, lease.job_id)

    async def reserve_for_deletion(self, job_id: str, *, reason: str) -> bool:
        """Reserve the job for deletion if no download holds it; return whether granted."""
        granted: bool = await self._ask(Reserve(job_id, reason))
        return granted
