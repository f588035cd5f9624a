"""Removing a job's results: the one flow the janitor, the evictor and DELETE all take.

    reserve with the download tracker → remove the files → retire the row

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
import sqlite3
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import trio

from refresher import metrics
from refresher.db import Database, placeholders
from refresher.jobs.events import DELETED, JobEvent, status_event
from refresher.jobs.status import FINISHED, TOMBSTONES, JobStatus, sql_list
from refresher.storage.full import StorageFull, release_ballast
from refresher.storage.paths import Paths, remove_tree
from refresher.timestamps import duration_words, iso, seconds_between

LOGGER = logging.getLogger(__name__)

LOST_MESSAGE = "The results were lost from the disk, so they can no longer be downloaded."
EVICTED_MESSAGE = "Removed early to free space for new uploads."
# A DELETE's reservation younger than this may still be at work in its request: it is
# resumed only once older. Its files and row take well under a second to go.
DELETE_RESUME_AFTER_S = 60.0


class RemovalReason(StrEnum):
    """Why a job's results go; kept with its reservation and deciding how its row ends."""

    EXPIRED = "expired"  # past its time to live: an `expired` tombstone
    LOST = "lost"  # its files vanished from the disk: an `expired` tombstone saying so
    EVICTED = "evicted"  # room was needed: an `evicted` tombstone
    DELETED = "deleted"  # its owner deleted it: the row goes too


_TOMBSTONE = {
    RemovalReason.EXPIRED: JobStatus.EXPIRED,
    RemovalReason.LOST: JobStatus.EXPIRED,
    RemovalReason.EVICTED: JobStatus.EVICTED,
}
# Who makes reservations of each reason, and so may finish them.
_OWNER = {
    RemovalReason.EXPIRED: "janitor",
    RemovalReason.LOST: "janitor",
    RemovalReason.EVICTED: "evictor",
    RemovalReason.DELETED: "owner",
}


Publish = Callable[[JobEvent], None]


def nobody_listens(event: JobEvent) -> None:
    """The default `publish`: nobody follows the jobs (tools, benchmarks)."""


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


def expiry_message(finished_at: str | None, expires_at: str) -> str:
    """What an expired job's owner reads: how long its results were kept."""
    kept_s = seconds_between(finished_at, expires_at)
    if kept_s is None or kept_s <= 0:
        return "Results expired."
    return f"Results expired {duration_words(kept_s)} after the job finished."


async def remove(
    db: Database,
    paths: Paths,
    reserver: Reserver,
    reason: RemovalReason,
    messages: Mapping[str, str | None],
    *,
    now: Callable[[], float],
    enough: Callable[[Collection[str]], bool] | None = None,
    publish: Publish = nobody_listens,
) -> Removal:
    """Reserve, in order, each job of `messages` (id → message for its owner), then remove
    the files of those granted, retire their rows and `publish` each one's final status.

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
            reserved = await _reserve(reserver, paths, job_id, reason)
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
    outcome.retired = await _carry_out(db, paths, granted, reason, now, publish)
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
    db: Database,
    paths: Paths,
    reasons: Collection[RemovalReason],
    *,
    now: Callable[[], float],
    publish: Publish = nobody_listens,
) -> dict[RemovalReason, list[str]]:
    """Finish removals a kill or crash cut short: jobs reserved under one of `reasons`
    whose row was not retired yet. Return the ids retired, by reason.

    Call it from the one remover of each reason (the janitor, the evictor), before it
    starts removals of its own, so the reservations it finds are not at work. A DELETE's
    runs in its request, so it is taken only once `DELETE_RESUME_AFTER_S` old.
    """
    moment = now()
    interrupted = await db.read(lambda conn: _interrupted(conn, reasons, moment))
    retired: dict[RemovalReason, list[str]] = {}
    for reason, messages in interrupted.items():
        LOGGER.warning("finishing %d removals (%s) an earlier run left", len(messages), reason)
        retired[reason] = await _carry_out(db, paths, messages, reason, now, publish)
    return retired


async def _carry_out(
    db: Database,
    paths: Paths,
    granted: Mapping[str, str | None],
    reason: RemovalReason,
    now: Callable[[], float],
    publish: Publish,
) -> list[str]:
    if not granted:
        return []
    removed = await trio.to_thread.run_sync(remove_job_files, paths, list(granted))
    messages = {job_id: granted[job_id] for job_id in removed}
    moment = now()
    retired = await db.write(lambda conn: retire(conn, messages, reason, now=moment))
    final = DELETED if reason is RemovalReason.DELETED else _TOMBSTONE[reason]
    metrics.REMOVALS.labels(reason.value).inc(len(retired))
    for job_id in retired:
        publish(status_event(job_id, final, messages[job_id]))
    return retired


def remove_job_files(paths: Paths, job_ids: Iterable[str]) -> list[str]:
    """Delete each job's directory and upload directory; return the ids fully removed.

    Blocking. A job whose files could not all be removed is logged and left out, so its
    row is not retired while files remain.
    """
    removed = []
    for job_id in job_ids:
        try:
            remove_tree(paths.job_dir(job_id))
            remove_tree(paths.upload_dir(job_id))
        except OSError as err:
            LOGGER.error("job=%s files could not be removed: %s", job_id, err)
            continue
        removed.append(job_id)
    return removed


def retire(
    conn: sqlite3.Connection,
    messages: Mapping[str, str | None],
    reason: RemovalReason,
    *,
    now: float,
) -> list[str]:
    """Retire the rows of reserved jobs whose files are gone; return the ids retired.

    A tombstone keeps the row and its source names, with `messages[id]` as the reason
    shown; outputs and reservation go. Only a finished job reserved by the same remover
    changes: a job the janitor reserved is never made `evicted`, an evicting one never
    `expired`, and one a DELETE reserved is never left a tombstone. A DELETE takes any
    reserved job, or a tombstone, and its row goes; a job already gone counts as retired.
    """
    changed = []
    for job_id, message in messages.items():
        row = conn.execute(
            "SELECT reason FROM deletion_reservations WHERE job_id = ?", (job_id,)
        ).fetchone()
        if reason is RemovalReason.DELETED:
            conn.execute(
                f"DELETE FROM jobs WHERE id = ? AND (status IN {sql_list(TOMBSTONES)} OR ?)",
                (job_id, row is not None),
            )
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                changed.append(job_id)
            continue
        if row is None or _OWNER[RemovalReason(row[0])] != _OWNER[reason]:
            continue
        updated = conn.execute(
            f"""UPDATE jobs SET status = ?, deleted_reason = ?, updated_at = ?,
                                thumbnail_path = NULL, archive_bytes = NULL
                WHERE id = ? AND status IN {sql_list(FINISHED)}""",
            (_TOMBSTONE[reason], message, iso(now), job_id),
        ).rowcount
        if not updated:
            continue
        conn.execute("DELETE FROM output_files WHERE job_id = ?", (job_id,))
        conn.execute("UPDATE job_files SET upload_path = NULL WHERE job_id = ?", (job_id,))
        conn.execute("DELETE FROM deletion_reservations WHERE job_id = ?", (job_id,))
        changed.append(job_id)
    return changed


def _interrupted(
    conn: sqlite3.Connection, reasons: Collection[RemovalReason], now: float
) -> dict[RemovalReason, dict[str, str | None]]:
    """Reserved jobs whose rows were not retired, by reason, with their owners' messages."""
    rows = conn.execute(
        f"""SELECT r.job_id, r.reason, r.reserved_at, jobs.status, jobs.finished_at,
                   jobs.expires_at
            FROM deletion_reservations r JOIN jobs ON jobs.id = r.job_id
            WHERE r.reason IN ({placeholders(len(reasons))})
            ORDER BY r.reserved_at, r.job_id""",
        tuple(reasons),
    ).fetchall()
    settled = iso(now - DELETE_RESUME_AFTER_S)
    found: dict[RemovalReason, dict[str, str | None]] = {}
    for job_id, reserved_as, reserved_at, status, finished_at, expires_at in rows:
        reason = RemovalReason(reserved_as)
        if reason is RemovalReason.DELETED:
            if reserved_at > settled:
                continue
        elif status not in FINISHED:
            continue
        message = {
            RemovalReason.EXPIRED: expiry_message(finished_at, expires_at),
            RemovalReason.LOST: LOST_MESSAGE,
            RemovalReason.EVICTED: EVICTED_MESSAGE,
            RemovalReason.DELETED: None,
        }[reason]
        found.setdefault(reason, {})[job_id] = message
    return found
