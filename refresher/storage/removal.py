"""Removing a job's results: the one flow the janitor, the evictor and DELETE all take.

    reserve with the download tracker → remove the files → retire the row (`Lifecycle`)

A reservation is granted only while no download holds a lease on the job, and from then
on no new lease is given, so no file is removed under a running download. Files go
before rows: a crash in between leaves a row still reserved (which `resume` finishes) or
orphan files (which reconciliation removes), never a row that a download trusts
pointing at nothing. Retiring a row makes it a tombstone (`expired`, `evicted`: still
listed, with a message for its owner) or, for a user's DELETE, removes it.

Each reservation records its `RemovalReason`, so a remover killed anywhere in the flow
is finished later with the same reason: the evictor resumes evictions, the janitor
every other kind. A reservation belongs to whoever made it (the janitor, the evictor, or
the job's owner through DELETE): no remover makes another's job its kind of tombstone,
and a DELETE takes over any reservation, since the owner's wish comes first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import trio
from sqlalchemy import Connection, text

from refresher.jobs.lifecycle import Lifecycle
from refresher.jobs.status import ACTIVE
from refresher.jobs.transitions import (
    EVICTED_MESSAGE,
    LOST_MESSAGE,
    RemovalReason,
    expiry_message,
)
from refresher.storage.blobs import BlobStore
from refresher.storage.full import StorageFull, release_ballast
from refresher.storage.paths import Paths
from refresher.store.sql import in_list
from refresher.timestamps import iso

LOGGER = logging.getLogger(__name__)

# A DELETE's reservation younger than this may still be at work in its request: it is
# resumed only once older. Its files and row take well under a second to go.
DELETE_RESUME_AFTER_S = 60.0


class ReservationUnavailable(RuntimeError):
    """Whoever grants reservations did not answer; in doubt, nothing is removed."""


class Reserver(Protocol):
    """Grants deletion reservations (the download tracker)."""

    async def reserve_for_deletion(self, job_id: str, *, reason: str) -> bool:
        """Reserve the job unless a download holds it (or it is unknown): return whether it
        is reserved now, also when it already was. Raise `ReservationUnavailable` when
        no answer can be had."""
        ...


@dataclass
class Removal:
    """What `remove` did: rows retired, jobs a download held, and whether it stopped early."""

    retired: list[str] = field(default_factory=list)
    # Not reserved: a download holds them (or, rarely, they were gone already).
    busy: list[str] = field(default_factory=list)
    # Set when the reserver stopped answering: the jobs after that were not tried.
    unavailable: ReservationUnavailable | None = None
    # Set when the store had no room to reserve even after the ballast was given up.
    storage_full: bool = False


async def remove(
    lifecycle: Lifecycle,
    reserver: Reserver,
    reason: RemovalReason,
    messages: Mapping[str, str | None],
    *,
    enough: Callable[[Collection[str]], bool] | None = None,
) -> Removal:
    """Reserve, in order, each job of `messages` (id → message for its owner), then remove
    the files of those granted and retire their rows (`Lifecycle.retire`, which tells
    each one's final status).

    A job a download holds is left (`busy`). Reserving stops once `enough(granted ids)`
    holds, or when the reserver stops answering. Cancellation may cut the flow anywhere;
    `resume` finishes what it reserved.
    """
    outcome = Removal()
    granted: dict[str, str | None] = {}
    for job_id, message in messages.items():
        if enough is not None and enough(granted.keys()):
            break
        try:
            reserved = await _reserve(reserver, lifecycle.paths, job_id, reason)
        except ReservationUnavailable as err:
            outcome.unavailable = err
            LOGGER.warning("removing nothing more for now (%s): %s", reason, err)
            break
        except StorageFull:
            outcome.storage_full = True
            LOGGER.warning("removing nothing more for now (%s): the storage is full", reason)
            break
        if reserved:
            granted[job_id] = message
        else:
            outcome.busy.append(job_id)
    outcome.retired = await _carry_out(lifecycle, granted, reason)
    return outcome


async def _reserve(reserver: Reserver, paths: Paths, job_id: str, reason: RemovalReason) -> bool:
    """Reserve through `reserver`; on a storage too full for even that, give up the ballast
    (`refresher.storage.full`) and try once more: a removal is what frees the storage."""
    try:
        return await reserver.reserve_for_deletion(job_id, reason=reason)
    except StorageFull:
        if not await trio.to_thread.run_sync(release_ballast, paths.ballast):
            raise
    return await reserver.reserve_for_deletion(job_id, reason=reason)


async def resume(
    lifecycle: Lifecycle, reasons: Collection[RemovalReason]
) -> dict[RemovalReason, list[str]]:
    """Finish removals a kill or crash cut short: jobs reserved under one of `reasons`
    whose row was not retired yet. Return the ids retired, by reason.

    Call it from the one remover of each reason (the janitor, the evictor), before it
    starts removals of its own, so the reservations it finds are not at work. A DELETE's
    runs in its request, so it is taken only once `DELETE_RESUME_AFTER_S` old.
    """
    moment = lifecycle.now()
    interrupted = await lifecycle.db.read(lambda conn: _interrupted(conn, reasons, moment))
    retired: dict[RemovalReason, list[str]] = {}
    for reason, messages in interrupted.items():
        LOGGER.warning("finishing %d removals (%s) an earlier run left", len(messages), reason)
        retired[reason] = await _carry_out(lifecycle, messages, reason)
    return retired


async def _carry_out(
    lifecycle: Lifecycle, granted: Mapping[str, str | None], reason: RemovalReason
) -> list[str]:
    if not granted:
        return []
    removed = await trio.to_thread.run_sync(
        remove_job_files, lifecycle.blobs, lifecycle.paths, list(granted)
    )
    return await lifecycle.retire({job_id: granted[job_id] for job_id in removed}, reason)


def remove_job_files(blobs: BlobStore, paths: Paths, job_ids: Iterable[str]) -> list[str]:
    """Delete each job's blobs (its directory and upload directory); return the ids fully
    removed.

    Blocking. A job whose files could not all be removed is logged and left out, so its
    row is not retired while files remain.
    """
    removed = []
    for job_id in job_ids:
        try:
            blobs.remove(paths.job_dir(job_id))
            blobs.remove(paths.upload_dir(job_id))
        except Exception as err:  # a bucket's errors are not OSErrors; the row must stay
            LOGGER.error("job=%s files could not be removed: %s", job_id, err)
            continue
        removed.append(job_id)
    return removed


def _interrupted(
    conn: Connection, reasons: Collection[RemovalReason], now: float
) -> dict[RemovalReason, dict[str, str | None]]:
    """Reserved jobs whose rows were not retired, by reason, with their owners' messages."""
    rows = conn.execute(
        text(
            """SELECT r.job_id, r.reason, r.reserved_at, jobs.status, jobs.finished_at,
                      jobs.expires_at
               FROM deletion_reservations r JOIN jobs ON jobs.id = r.job_id
               WHERE r.reason IN :reasons
               ORDER BY r.reserved_at, r.job_id"""
        ).bindparams(in_list("reasons")),
        {"reasons": [str(reason) for reason in reasons]},
    ).fetchall()
    settled = iso(now - DELETE_RESUME_AFTER_S)
    found: dict[RemovalReason, dict[str, str | None]] = {}
    for job_id, reserved_as, reserved_at, status, finished_at, expires_at in rows:
        reason = RemovalReason(reserved_as)
        if reason is RemovalReason.DELETED:
            if reserved_at > settled:
                continue
        elif status in ACTIVE:
            continue  # never reserved now; a tombstone's reservation is let go by `retire`
        message = {
            RemovalReason.EXPIRED: expiry_message(finished_at, expires_at),
            RemovalReason.LOST: LOST_MESSAGE,
            RemovalReason.EVICTED: EVICTED_MESSAGE,
            RemovalReason.DELETED: None,
        }[reason]
        found.setdefault(reason, {})[job_id] = message
    return found
