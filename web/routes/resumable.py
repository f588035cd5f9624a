"""Resumable uploads: the tus 1.0 protocol (core, creation, termination, expiration).

    POST /api/uploads           declare: Upload-Length, Upload-Metadata (filename, filetype)
    HEAD /api/uploads/<id>      how far it has come: Upload-Offset
    PATCH /api/uploads/<id>     bytes from Upload-Offset (application/offset+octet-stream)
    DELETE /api/uploads/<id>    end it, its bytes removed
    OPTIONS /api/uploads        what this server speaks

A finished upload becomes a job's source by reference: `POST /api/jobs` with JSON
`{"uploads": [id, ...]}` (`web.routes.uploads`). The rules of a multipart upload hold
here too: the bearer token, the per-file limit and accepted types when declared, room
asked as bytes arrive, the media limits once the job takes the bytes.

Written here rather than taken from a library: `tussi` (the ASGI tus server that runs
under Hypercorn's trio worker) has no termination, hands each PATCH's whole body to its
storage as one `bytes`, keeps its state in its own files on one disk, and answers
storage errors with 500s; this service needs its store's rows (any process may take the
next PATCH), its blob store (a bucket), its auth and its room checks.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable

import trio
from quart import Blueprint, Response, request

from refresher import metrics
from refresher.storage.blobs import StorageUnavailable
from refresher.storage.full import StorageFull
from refresher.store import write_if_room
from refresher.uploads import received, records
from refresher.uploads.received import drop_uploads
from refresher.uploads.records import UPLOAD_ID
from web.http.access import require_login
from web.http.errors import ApiError
from web.http.patches import BoundedBody
from web.http.tus import (
    OFFSET_OCTET_STREAM,
    TUS_EXTENSIONS,
    TUS_VERSION,
    check_version,
    declared_video,
    http_date,
    length_header,
    parse_metadata,
    tus_headers,
)
from web.intake import NO_ROOM, STORAGE_UNREACHABLE, ask_for_room, byte_words, room_checked
from web.state import AppState, state

LOGGER = logging.getLogger(__name__)

# A PATCH keeps (syncs to disk, or sends to the bucket as a piece) what it received at
# least every PIECE_BYTES or KEEP_EVERY_S, whichever comes first, and records the new
# offset: a cut connection loses at most that much, and a HEAD sees progress.
PIECE_BYTES = 8 * 1024 * 1024
KEEP_EVERY_S = 5.0
# Bytes gathered in memory before one write in a thread: the bound on a PATCH's buffer,
# whatever its size (plus the request body's own, `web.http.patches.HIGH_WATER_BYTES`).
WRITE_BYTES = 1024 * 1024
# How long a PATCH holds its upload past its last keep. A connection that died without
# the server noticing (a laptop lid closed) leaves a hold that lapses this long after its
# last bytes, and the client's next PATCH takes over; one that waits for bytes twice as
# long is ended, what it received kept.
HOLD_S = 20.0
STALL_S = 2 * HOLD_S
# Uploads no job has taken, at most, across the service: each may hold a file's worth of
# quota, and a client that only declares must not fill the table.
MAX_OPEN_UPLOADS = 200

blueprint = Blueprint("resumable", __name__)


async def _load(app_state: AppState, upload_id: str) -> records.UploadRecord:
    """The upload no job has taken, or a 404."""
    upload = None
    if UPLOAD_ID.match(upload_id):
        upload = await app_state.db.read(lambda conn: records.load(conn, upload_id))
    if upload is None or upload.taken_by is not None or upload.expires_at <= app_state.now():
        raise ApiError(
            404, "There is no such upload; it may have expired or been used by a job.",
            headers=tus_headers(),
        )  # fmt: skip
    return upload


@blueprint.route("/api/uploads", methods=["OPTIONS"])
@blueprint.route("/api/uploads/<upload_id>", methods=["OPTIONS"])
async def options(upload_id: str | None = None) -> Response:
    config = state().config
    return Response(
        "",
        204,
        headers=tus_headers(
            {"Tus-Version": TUS_VERSION, "Tus-Extension": TUS_EXTENSIONS,
             "Tus-Max-Size": str(config.max_upload_bytes)}
        ),
    )  # fmt: skip


@blueprint.post("/api/uploads")
@require_login
async def create_upload() -> Response:
    app_state = state()
    config = app_state.config
    check_version()
    if request.headers.get("Upload-Defer-Length") is not None:
        raise ApiError(400, "Declare the upload's length (Upload-Length); it cannot be deferred.")
    length = length_header("Upload-Length", request.headers.get("Upload-Length"))
    metadata = parse_metadata(request.headers.get("Upload-Metadata", ""))
    name = declared_video(metadata)
    if length == 0:
        raise ApiError(400, f"“{name}” is empty.")
    if length > config.max_upload_bytes:
        raise ApiError(
            413,
            f"“{name}” is larger than the {byte_words(config.max_upload_bytes)} per-file limit.",
            headers=tus_headers(),
        )
    # Weighed, not granted: bytes make room as they arrive.
    await ask_for_room(app_state, length, evict=False)
    if await app_state.db.read(records.open_uploads) >= MAX_OPEN_UPLOADS:
        raise ApiError(
            429,
            f"There are {MAX_OPEN_UPLOADS} unfinished uploads already; finish or cancel some.",
            headers=tus_headers(),
        )
    upload_id = uuid.uuid4().hex
    now = app_state.now()
    kept: dict[str, str] = {
        key: metadata[key][:200] for key in ("filename", "filetype") if key in metadata
    }
    try:
        upload = await app_state.db.write(
            lambda conn: records.declare(
                conn, upload_id=upload_id, name=name, length=length, metadata=kept, now=now,
                ttl_s=config.resumable_upload_ttl_s,
            )
        )  # fmt: skip
    except StorageFull:
        raise ApiError(507, NO_ROOM, headers=tus_headers()) from None
    LOGGER.info("upload=%s declared: %s, %d bytes", upload_id, name, length)
    return Response(
        "",
        201,
        headers=tus_headers(
            {"Location": f"/api/uploads/{upload.id}",
             "Upload-Expires": http_date(upload.expires_at)}
        ),
    )  # fmt: skip


@blueprint.route("/api/uploads/<upload_id>", methods=["HEAD"])
@require_login
async def upload_offset(upload_id: str) -> Response:
    upload = await _load(state(), upload_id)
    return Response(
        "",
        200,
        headers=tus_headers(
            {"Upload-Offset": str(upload.received), "Upload-Length": str(upload.length),
             "Upload-Expires": http_date(upload.expires_at)}
        ),
    )  # fmt: skip


async def _paced(body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The body's chunks, with an empty one each KEEP_EVERY_S that none arrives (so what
    did arrive is kept on time, however the client paces it); ended, what arrived kept,
    when none comes for STALL_S. (Only the body itself is waited on with a timeout: a
    generator cancelled mid-step cannot go on.)"""
    chunks = aiter(body)
    idle_s = 0.0
    while True:
        with trio.move_on_after(KEEP_EVERY_S) as waited:
            chunk = await anext(chunks, None)
        if waited.cancelled_caught:
            idle_s += KEEP_EVERY_S
            if idle_s >= STALL_S:
                LOGGER.info("upload PATCH stalled for %g s; ended", idle_s)
                return
            yield b""
            continue
        if chunk is None:
            return
        idle_s = 0.0
        yield chunk


class PastLength(Exception):
    """A PATCH sent more bytes than the upload declared."""


async def _receive(
    app_state: AppState,
    upload: records.UploadRecord,
    body: AsyncIterable[bytes],
    writer: str,
    arrived: Callable[[int], list[bytes]],
) -> int:
    """Write the body at the upload's offset, keeping and recording it as it arrives;
    return the offset reached. Cancelled (the client left), what arrived is kept first:
    `arrived(seen)` gives the chunks received after the `seen` bytes read here."""
    db, blobs, paths = app_state.db, app_state.lifecycle.blobs, app_state.paths
    ttl_s = app_state.config.resumable_upload_ttl_s
    receiver = await trio.to_thread.run_sync(
        received.Receiver, blobs, paths, upload.id, upload.received, writer
    )
    recorded = upload.received
    # Chunks received, not yet written, as they came (never joined), and their bytes.
    pending: list[bytes] = []
    pending_bytes = 0
    last_keep = trio.current_time()

    async def keep() -> bool:
        # Shielded, whole or not at all: a piece kept but not recorded would shift all.
        with trio.CancelScope(shield=True):
            kept = await keep_unshielded()
        return kept

    async def write_pending() -> None:
        nonlocal pending_bytes
        await trio.to_thread.run_sync(receiver.write, list(pending))
        pending.clear()
        pending_bytes = 0

    def take(chunk: bytes) -> bool:
        """Add what of `chunk` fits the declared length; whether all of it did."""
        nonlocal pending_bytes
        room = upload.length - recorded - receiver.unkept - pending_bytes
        pending.append(chunk if len(chunk) <= room else chunk[:room])
        pending_bytes += len(pending[-1])
        return len(chunk) <= room

    async def keep_unshielded() -> bool:
        nonlocal recorded, last_keep
        if pending:
            await write_pending()
        kept, piece = await trio.to_thread.run_sync(receiver.keep)
        last_keep = trio.current_time()
        if not kept:
            return True
        expires_at = app_state.now() + ttl_s
        advanced = await db.write(
            lambda conn: records.advance(
                conn, upload.id, writer, received=recorded, kept=kept, piece=piece,
                hold_s=HOLD_S, expires_at=expires_at,
            )
        )  # fmt: skip
        if not advanced:
            if piece is not None:
                await trio.to_thread.run_sync(receiver.forget_piece, piece)
            return False
        recorded += kept
        metrics.RESUMABLE_RECEIVED_BYTES.inc(kept)
        return True

    seen = 0
    try:
        async for chunk in body:
            seen += len(chunk)
            if not take(chunk):
                raise PastLength()
            if pending_bytes >= WRITE_BYTES:
                await write_pending()
            due = trio.current_time() - last_keep >= KEEP_EVERY_S
            if (receiver.unkept + pending_bytes >= PIECE_BYTES or due) and not await keep():
                raise records.UploadBusy(upload.id)
    except trio.Cancelled:
        for chunk in arrived(seen):
            take(chunk)
        raise
    finally:
        with trio.CancelScope(shield=True):
            try:
                await keep()
            finally:
                await trio.to_thread.run_sync(receiver.close)
    return recorded


@blueprint.patch("/api/uploads/<upload_id>")
@require_login
async def patch_upload(upload_id: str) -> Response:
    app_state = state()
    check_version()
    if request.headers.get("Content-Type", "").split(";")[0].strip() != OFFSET_OCTET_STREAM:
        raise ApiError(
            415, f"Send the bytes as {OFFSET_OCTET_STREAM}.", headers=tus_headers()
        )  # fmt: skip
    offset = length_header("Upload-Offset", request.headers.get("Upload-Offset"))
    writer = uuid.uuid4().hex[:12]
    try:
        # Shielded: a client that sends its bytes and leaves at once must find them kept,
        # not cut off before the PATCH could take hold (a cancel lands in `_receive`).
        with trio.CancelScope(shield=True):
            upload = await _load(app_state, upload_id)
            held = await app_state.db.write(
                lambda conn: records.hold(conn, upload.id, writer, hold_s=HOLD_S)
            )
    except records.UploadBusy:
        raise ApiError(
            423, "This upload is receiving bytes from another request; try again shortly.",
            headers=tus_headers({"Retry-After": "5"}),
        ) from None  # fmt: skip
    except (records.UploadNotFound, records.UploadTaken):
        raise ApiError(404, "There is no such upload any more.", headers=tus_headers()) from None
    try:
        if offset != held.received:
            raise ApiError(
                409,
                f"The upload has {held.received} bytes; send from there (Upload-Offset).",
                headers=tus_headers({"Upload-Offset": str(held.received)}),
            )
        remaining = held.length - held.received
        declared = request.content_length
        if declared is not None and declared > remaining:
            raise ApiError(
                413,
                f"This PATCH carries {declared} bytes, more than the {remaining} the upload "
                "still needs.",
                headers=tus_headers({"Upload-Offset": str(held.received)}),
            )
        raw = request.body
        already = raw.read_bytes if isinstance(raw, BoundedBody) else 0

        def arrived(seen: int) -> list[bytes]:
            # Only when no chunk was between the body and here as the client left: a gap
            # would put later bytes at the wrong offset.
            if not isinstance(raw, BoundedBody) or raw.read_bytes - already != seen:
                return []
            return raw.take_arrived()

        body = room_checked(
            _paced(request.body), 0,
            lambda nbytes: ask_for_room(app_state, nbytes), declared=remaining,
        )  # fmt: skip
        try:
            with trio.move_on_after(app_state.config.upload_timeout_s) as deadline:
                reached = await _receive(app_state, held, body, writer, arrived)
            if deadline.cancelled_caught:  # what arrived in time is kept: say how much
                LOGGER.info("upload=%s PATCH cut at the upload time limit", upload.id)
                now_at = await app_state.db.read(lambda conn: records.load(conn, upload.id))
                reached = now_at.received if now_at is not None else held.received
        except PastLength:
            raise ApiError(
                413,
                f"This PATCH carries more bytes than the {held.length} the upload declared.",
                headers=tus_headers(),
            ) from None
        except records.UploadBusy:
            raise ApiError(
                409, "Another request took this upload over; ask for its offset (HEAD).",
                headers=tus_headers(),
            ) from None  # fmt: skip
        except StorageFull:
            raise ApiError(507, NO_ROOM, headers=tus_headers()) from None
        except StorageUnavailable as err:
            LOGGER.error("upload=%s bytes could not be kept: %s", upload.id, err)
            raise ApiError(503, STORAGE_UNREACHABLE, headers=tus_headers()) from None
        except FileNotFoundError:  # removed as it expired, or by hand: never a hole of zeros
            LOGGER.warning("upload=%s bytes are gone; the upload is dropped", upload.id)
            await drop_uploads(
                app_state.db, app_state.lifecycle.blobs, app_state.paths, [upload.id]
            )
            raise ApiError(
                404, "This upload's bytes are gone; start the upload again.",
                headers=tus_headers(),
            ) from None  # fmt: skip
    finally:
        with trio.CancelScope(shield=True):
            # On a full store the hold stays, and lapses within HOLD_S.
            await write_if_room(
                app_state.db,
                lambda conn: records.let_go(conn, upload.id, writer),
                what=f"upload={upload.id} hold ended",
            )
    expires = app_state.now() + app_state.config.resumable_upload_ttl_s
    return Response(
        "",
        204,
        headers=tus_headers({"Upload-Offset": str(reached), "Upload-Expires": http_date(expires)}),
    )


@blueprint.delete("/api/uploads/<upload_id>")
@require_login
async def terminate_upload(upload_id: str) -> Response:
    app_state = state()
    check_version()
    upload = await _load(app_state, upload_id)
    if not await drop_uploads(
        app_state.db, app_state.lifecycle.blobs, app_state.paths, [upload.id]
    ):
        raise ApiError(503, STORAGE_UNREACHABLE, headers=tus_headers())
    LOGGER.info("upload=%s terminated", upload.id)
    return Response("", 204, headers=tus_headers())
