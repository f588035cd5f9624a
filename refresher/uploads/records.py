"""Resumable uploads' rows: how far each has come, who writes it now, when it expires.

    declare ──► hold ─► (bytes kept) ─► advance … ─► let_go      one PATCH, any process
       │                                                      (repeat until finished)
       └──────────────► take (all of a job's, or none)     the job has the bytes; the
                          │                                rows stay, taken, until they
                          │                                expire, so asking again for
                          │                                the same job finds it
                          └─► give_back (the job could not be made; the uploads stay)
    expired: unfinished past `expires_at`, or taken by a job that never came (a crash)

One writer at a time: a PATCH holds its upload (`hold`) until it lets go, renewing the
hold each time it keeps a piece; a hold that lapses (its writer stalled or died) is the
next PATCH's to take, and the old writer's next `advance` then finds the hold gone and
stops. Bytes before rows: `advance` records what was already kept, so the offset a HEAD
reports is always on disk or in the bucket.

Holds run on the store's clock (every process agrees on it); expiry on the service's
clock, passed in as `now`. Each function takes a store connection in one transaction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, RowMapping, text

from refresher.store.sql import dialect, in_list
from refresher.timestamps import iso

# An upload's id: the hex of a UUID4, the last segment of its Location.
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


class UploadNotFound(LookupError):
    def __init__(self, upload_id: str) -> None:
        self.upload_id = upload_id
        super().__init__(f"no resumable upload {upload_id!r}")


class UploadBusy(RuntimeError):
    """Another request is writing the upload right now."""

    def __init__(self, upload_id: str) -> None:
        self.upload_id = upload_id
        super().__init__(f"upload {upload_id!r} is being written by another request")


class UploadTaken(RuntimeError):
    """A job has taken the upload (or is taking it): it can no longer change."""

    def __init__(self, upload_id: str, job_id: str | None = None) -> None:
        self.upload_id = upload_id
        self.job_id = job_id
        super().__init__(f"upload {upload_id!r} belongs to a job")


class UploadUnfinished(RuntimeError):
    """A job asked for an upload whose bytes have not all arrived."""

    def __init__(self, name: str, received: int, length: int) -> None:
        self.name = name
        self.received = received
        self.length = length
        super().__init__(f"upload {name!r} has {received} of {length} bytes")


@dataclass(frozen=True)
class Piece:
    """Bytes `start` to `start + length` of an upload, kept as the blob `name` (a bucket's
    pieces; on the volume an upload is one file and has none)."""

    start: int
    length: int
    name: str


@dataclass(frozen=True)
class UploadRecord:
    id: str
    # The file's name as the client declared it: shown, never used as a path.
    name: str
    length: int
    received: int
    metadata: Mapping[str, str]
    created_at: str
    expires_at: float
    writer: str | None
    writer_until: float | None
    pieces: tuple[Piece, ...]
    taken_by: str | None

    @property
    def finished(self) -> bool:
        return self.received == self.length


def _record(row: RowMapping) -> UploadRecord:
    return UploadRecord(
        id=str(row["id"]),
        name=str(row["name"]),
        length=int(row["length"]),
        received=int(row["received"]),
        metadata=json.loads(str(row["metadata"])),
        created_at=str(row["created_at"]),
        expires_at=float(row["expires_at"]),
        writer=row["writer"],
        writer_until=row["writer_until"],
        pieces=tuple(Piece(*piece) for piece in json.loads(str(row["pieces"]))),
        taken_by=row["taken_by"],
    )


def declare(
    conn: Connection,
    *,
    upload_id: str,
    name: str,
    length: int,
    metadata: Mapping[str, str],
    now: float,
    ttl_s: float,
) -> UploadRecord:
    """Record a new upload of `length` bytes, expiring `ttl_s` from now unless written."""
    conn.execute(
        text(
            """INSERT INTO uploads (id, name, length, metadata, created_at, expires_at)
               VALUES (:id, :name, :length, :metadata, :created_at, :expires_at)"""
        ),
        {"id": upload_id, "name": name, "length": length, "metadata": json.dumps(metadata),
         "created_at": iso(now), "expires_at": now + ttl_s},
    )  # fmt: skip
    found = load(conn, upload_id)
    assert found is not None
    return found


def load(conn: Connection, upload_id: str, *, lock: bool = False) -> UploadRecord | None:
    """The upload's row; with `lock`, locked until the transaction ends."""
    locking = f" {dialect(conn).for_update}" if lock else ""
    row = (
        conn.execute(text(f"SELECT * FROM uploads WHERE id = :id{locking}"), {"id": upload_id})
        .mappings()
        .fetchone()
    )
    return None if row is None else _record(row)


def hold(conn: Connection, upload_id: str, writer: str, *, hold_s: float) -> UploadRecord:
    """Hold the upload for `writer` for `hold_s` (the store's clock) and return it.

    Raise `UploadNotFound`, `UploadTaken`, or `UploadBusy` while another writer's hold
    lasts."""
    upload = load(conn, upload_id, lock=True)
    if upload is None:
        raise UploadNotFound(upload_id)
    if upload.taken_by is not None:
        raise UploadTaken(upload_id)
    now_s = dialect(conn).now_s
    held = conn.execute(
        text(
            f"""UPDATE uploads SET writer = :writer, writer_until = {now_s} + :hold_s
                WHERE id = :id AND (writer IS NULL OR writer_until < {now_s})"""
        ),
        {"writer": writer, "hold_s": hold_s, "id": upload_id},
    ).rowcount
    if not held:
        raise UploadBusy(upload_id)
    return upload


def advance(
    conn: Connection,
    upload_id: str,
    writer: str,
    *,
    received: int,
    kept: int,
    piece: Piece | None,
    hold_s: float,
    expires_at: float,
) -> bool:
    """Record `kept` more bytes after the `received` already recorded (and the bucket's
    `piece` holding them), renewing the hold and the expiry; return False, changing
    nothing, when the hold is no longer `writer`'s."""
    upload = load(conn, upload_id, lock=True)
    if upload is None or upload.writer != writer or upload.received != received:
        return False
    if piece is not None and piece.start != received:
        raise ValueError(f"piece at {piece.start} recorded after {received} bytes")
    pieces = [[p.start, p.length, p.name] for p in upload.pieces]
    if piece is not None:
        pieces.append([piece.start, piece.length, piece.name])
    conn.execute(
        text(
            f"""UPDATE uploads SET received = :now_received, pieces = :pieces,
                                   writer_until = {dialect(conn).now_s} + :hold_s,
                                   expires_at = :expires_at
                WHERE id = :id"""
        ),
        {"now_received": received + kept, "pieces": json.dumps(pieces), "hold_s": hold_s,
         "expires_at": expires_at, "id": upload_id},
    )  # fmt: skip
    return True


def let_go(conn: Connection, upload_id: str, writer: str) -> None:
    """End `writer`'s hold, if it still has it."""
    conn.execute(
        text(
            "UPDATE uploads SET writer = NULL, writer_until = NULL "
            "WHERE id = :id AND writer = :writer"
        ),
        {"id": upload_id, "writer": writer},
    )


def drop_holds(conn: Connection) -> int:
    """End every hold: for a process that alone uses the store, at start (the writers of
    an earlier run died with it)."""
    dropped: int = conn.execute(
        text("UPDATE uploads SET writer = NULL, writer_until = NULL WHERE writer IS NOT NULL")
    ).rowcount
    return dropped


def take(
    conn: Connection, upload_ids: Sequence[str], job_id: str, *, expires_at: float
) -> list[UploadRecord]:
    """Take every one of `upload_ids` for the job, in order, or none: raise
    `UploadNotFound`, `UploadTaken` or `UploadUnfinished` for the first that cannot be.

    A taken upload whose job never comes (the process died) expires at `expires_at`.
    """
    taken = []
    for upload_id in upload_ids:
        upload = load(conn, upload_id, lock=True)
        if upload is None:
            raise UploadNotFound(upload_id)
        if upload.taken_by is not None:
            raise UploadTaken(upload_id, upload.taken_by)
        if not upload.finished:
            raise UploadUnfinished(upload.name, upload.received, upload.length)
        taken.append(upload)
    conn.execute(
        text(
            "UPDATE uploads SET taken_by = :job_id, expires_at = :expires_at WHERE id IN :ids"
        ).bindparams(in_list("ids")),
        {"job_id": job_id, "expires_at": expires_at, "ids": list(upload_ids)},
    )
    return taken


def taken_by(conn: Connection, upload_ids: Sequence[str]) -> set[str | None]:
    """The jobs that took these uploads (None for one no job took, or one unknown)."""
    return {
        None if upload is None else upload.taken_by
        for upload in (load(conn, upload_id) for upload_id in upload_ids)
    }


def give_back(
    conn: Connection, upload_ids: Iterable[str], job_id: str, *, expires_at: float
) -> None:
    """Return uploads the job took but could not use, unchanged, for another try."""
    conn.execute(
        text(
            """UPDATE uploads SET taken_by = NULL, expires_at = :expires_at
               WHERE taken_by = :job_id AND id IN :ids"""
        ).bindparams(in_list("ids")),
        {"job_id": job_id, "expires_at": expires_at, "ids": list(upload_ids)},
    )


def forget(conn: Connection, upload_ids: Iterable[str]) -> int:
    """Delete the rows of uploads whose bytes went (to a job, or removed)."""
    upload_ids = list(upload_ids)
    if not upload_ids:  # an empty IN is not portable SQL
        return 0
    removed: int = conn.execute(
        text("DELETE FROM uploads WHERE id IN :ids").bindparams(in_list("ids")),
        {"ids": list(upload_ids)},
    ).rowcount
    return removed


def expired(conn: Connection, now: float) -> list[UploadRecord]:
    """Uploads past their expiry that no live hold is writing: unfinished ones nobody
    came back to, and taken ones whose job never came."""
    rows = conn.execute(
        text(
            f"""SELECT * FROM uploads
                WHERE expires_at <= :now
                  AND (writer IS NULL OR writer_until < {dialect(conn).now_s})
                ORDER BY expires_at"""
        ),
        {"now": now},
    ).mappings()
    return [_record(row) for row in rows]


def open_uploads(conn: Connection) -> int:
    """Uploads no job has taken."""
    count: int = conn.execute(
        text("SELECT count(*) FROM uploads WHERE taken_by IS NULL")
    ).scalar_one()
    return count


def upload_ids(conn: Connection) -> set[str]:
    return set(conn.execute(text("SELECT id FROM uploads")).scalars())
