"""`GET`/`HEAD /api/jobs/:id/download`: the job's ZIP, streamed from disk, resumable.

The archive's layout is known from the database before a byte is read
(`refresher.archive`), so the response carries Content-Length, a strong ETag and
Last-Modified, answers a single `Range` with 206, and HEAD reads no file. A GET holds a
download lease from before its first byte until the connection's handling of the request
ends (also when the client goes away, at any moment), so no cleanup deletes a file under
it and no lease outlives its download.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from urllib.parse import quote

import trio
from quart import Blueprint, Response, request

from actors.download_tracker import LeaseRefused, TrackerUnavailable
from refresher import archive, tokens
from refresher.status import FINISHED, TOMBSTONES
from refresher.zipplan import ZipPlan
from web import ranges
from web.access import check_bearer
from web.closing import on_close
from web.errors import ApiError
from web.state import AppState, state
from web.views import load_or_404

LOGGER = logging.getLogger(__name__)

# Large reads keep thread hops and sends few (measured, 2 GiB job: 1 MiB ~1.3-1.9 GB/s,
# 2 MiB ~2.4 GB/s, 4 MiB ~2.4 GB/s); memory is about two chunks per download in flight.
CHUNK_BYTES = 2 * 1024 * 1024
# Files up to this size are read whole and sent together with the headers around them.
SMALL_PIECE_BYTES = 256 * 1024

blueprint = Blueprint("downloads", __name__)

_REFUSED = {
    "gone": (410, "This job's results have expired or were removed."),
    "reserved": (410, "This job's results are being removed."),
    "not_ready": (404, "This job has no results to download yet."),
}


def _read_exactly(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as file:
        data = os.pread(file.fileno(), length, offset)
    if len(data) != length:
        raise OSError(f"{path} is shorter than recorded ({offset + len(data)} bytes)")
    return data


async def _stream(plan: ZipPlan, start: int, end: int, job_id: str) -> AsyncIterator[bytes]:
    sent = 0
    try:
        pending = bytearray()
        for piece in plan.pieces(start, end):
            if piece.data is not None:
                pending += piece.data
            elif piece.length <= SMALL_PIECE_BYTES:
                pending += await trio.to_thread.run_sync(
                    _read_exactly, str(piece.path), piece.offset, piece.length
                )
            else:
                if pending:
                    yield bytes(pending)
                    sent += len(pending)
                    pending.clear()
                fd = await trio.to_thread.run_sync(os.open, str(piece.path), os.O_RDONLY)
                try:
                    position, stop = piece.offset, piece.offset + piece.length
                    while position < stop:
                        want = min(CHUNK_BYTES, stop - position)
                        chunk = await trio.to_thread.run_sync(os.pread, fd, want, position)
                        if len(chunk) != want:
                            raise OSError(f"{piece.path} is shorter than recorded")
                        position += want
                        yield chunk
                        sent += want
                finally:
                    os.close(fd)
            if len(pending) >= CHUNK_BYTES:
                yield bytes(pending)
                sent += len(pending)
                pending.clear()
        if pending:
            yield bytes(pending)
            sent += len(pending)
    finally:
        LOGGER.info("job=%s download ended after %d of %d bytes", job_id, sent, end - start)


async def _lease(app_state: AppState, job_id: str) -> None:
    """Lease the job for as long as this request lasts, however it ends; or raise the
    error to answer with."""
    try:
        lease = await app_state.tracker.acquire(job_id)
    except LeaseRefused as refused:
        code, message = _REFUSED[refused.reason]
        raise ApiError(code, message) from None
    except TrackerUnavailable:
        raise ApiError(503, "Downloads are briefly unavailable; try again in a moment.") from None
    # Released when the connection's handling of this request ends: also when the client
    # leaves before the body's first byte, where a generator's `finally` never runs.
    on_close(lambda: app_state.tracker.release(lease))


def _headers(built: archive.JobArchive) -> dict[str, str]:
    ascii_name = built.filename.encode("ascii", "replace").decode().replace('"', "")
    return {
        "Content-Type": "application/zip",
        "Accept-Ranges": "bytes",
        "ETag": built.etag,
        "Last-Modified": ranges.http_date(built.last_modified),
        "Content-Disposition": (
            f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(built.filename)}"
        ),
        "Cache-Control": "private, no-transform",
    }


@blueprint.route("/api/jobs/<job_id>/download", methods=["GET", "HEAD"])
async def download(job_id: str) -> Response:
    check_bearer(also_scope=tokens.job_scope(job_id))
    app_state = state()
    job = await load_or_404(app_state, job_id)
    if job.status in TOMBSTONES:
        raise ApiError(410, "This job's results have expired or were removed.")
    if job.status not in FINISHED or not job.outputs:
        raise ApiError(404, "This job has no results to download yet.")
    built = archive.build(job, app_state.paths)
    headers = _headers(built)
    if ranges.precondition_failed(
        if_match=request.headers.get("If-Match"),
        if_unmodified_since=request.headers.get("If-Unmodified-Since"),
        etag=built.etag,
        modified=built.last_modified,
    ):
        raise ApiError(412, "The archive has changed since this download began.")
    status, start, end = 200, 0, built.size
    if ranges.range_still_valid(
        request.headers.get("If-Range"), etag=built.etag, modified=built.last_modified
    ):
        try:
            wanted = ranges.parse_range(request.headers.get("Range"), built.size)
        except ranges.RangeNotSatisfiable:
            raise ApiError(
                416,
                f"The archive is {built.size} bytes; that range lies beyond it.",
                headers={"Content-Range": f"bytes */{built.size}"},
            ) from None
        if wanted is not None:
            status, (start, end) = 206, wanted
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{built.size}"
    if request.method == "HEAD":
        response = Response(b"", status=status, headers=headers)
    else:
        await _lease(app_state, job_id)
        response = Response(_stream(built.plan, start, end, job_id), status=status, headers=headers)
        response.timeout = None  # Quart's 60 s default would cut a long download short
        LOGGER.info("job=%s download %d-%d of %d bytes", job_id, start, end, built.size)
    response.headers["Content-Length"] = str(end - start)
    return response
