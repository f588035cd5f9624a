"""`GET`/`HEAD /api/jobs/:id/download`: the job's ZIP, streamed from disk, resumable.

The archive's layout is known from the database before a byte is read
(`refresher.archive.job_archive`), so the response carries Content-Length, a strong ETag and
Last-Modified, answers a single `Range` with 206, and HEAD reads no file. A GET holds a
download lease from before its first byte until the connection's handling of the request
ends (also when the client goes away, at any moment), so no cleanup deletes a file under
it and no lease outlives its download.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

import trio
from quart import Blueprint, Response, request

from refresher import metrics
from refresher.archive import job_archive
from refresher.archive.zipplan import ZipPlan
from refresher.auth import tokens
from refresher.jobs.status import FINISHED, TOMBSTONES
from refresher.storage.blobs import CHUNK_BYTES, BlobStore
from web.http import ranges
from web.http.access import check_bearer
from web.http.errors import ApiError
from web.http.lease import GONE, hold_lease
from web.http.serving import content_disposition, wanted_range
from web.state import state
from web.views import load_or_404

LOGGER = logging.getLogger(__name__)

# Files up to this size are read whole and sent together with the headers around them.
SMALL_PIECE_BYTES = 256 * 1024

blueprint = Blueprint("downloads", __name__)


async def _stream(
    blobs: BlobStore, plan: ZipPlan, start: int, end: int, job_id: str
) -> AsyncIterator[bytes]:
    sent = 0
    metrics.DOWNLOADS.labels("started").inc()
    try:
        pending = bytearray()
        for piece in plan.pieces(start, end):
            if piece.path is None:
                assert piece.data is not None
                pending += piece.data
            elif piece.length <= SMALL_PIECE_BYTES:
                pending += await trio.to_thread.run_sync(
                    blobs.read, piece.path, piece.offset, piece.length
                )
            else:
                if pending:
                    yield bytes(pending)
                    sent += len(pending)
                    pending.clear()
                chunks = blobs.chunks(piece.path, piece.offset, piece.length)
                async with aclosing(chunks):
                    async for chunk in chunks:
                        yield chunk
                        sent += len(chunk)
            if len(pending) >= CHUNK_BYTES:
                yield bytes(pending)
                sent += len(pending)
                pending.clear()
        if pending:
            yield bytes(pending)
            sent += len(pending)
    finally:
        metrics.download_ended(sent, end - start)
        LOGGER.info("job=%s download ended after %d of %d bytes", job_id, sent, end - start)


def _headers(built: job_archive.JobArchive) -> dict[str, str]:
    return {
        "Content-Type": "application/zip",
        "Accept-Ranges": "bytes",
        "ETag": built.etag,
        "Last-Modified": ranges.http_date(built.last_modified),
        "Content-Disposition": content_disposition("attachment", built.filename),
        "Cache-Control": "private, no-transform",
    }


@blueprint.route("/api/jobs/<job_id>/download", methods=["GET", "HEAD"])
async def download(job_id: str) -> Response:
    check_bearer(also_scope=tokens.job_scope(job_id, "download"))
    app_state = state()
    job = await load_or_404(app_state, job_id)
    if job.status in TOMBSTONES:
        raise ApiError(410, GONE)
    if job.status not in FINISHED or not job.outputs:
        raise ApiError(404, "This job has no results to download yet.")
    built = job_archive.build(job, app_state.paths)
    headers = _headers(built)
    status, start, end, part = wanted_range(
        size=built.size, etag=built.etag, modified=built.last_modified, noun="archive"
    )
    headers.update(part)
    if request.method == "HEAD":
        response = Response(b"", status=status, headers=headers)
    else:
        await hold_lease(app_state, job_id)
        stream = _stream(app_state.lifecycle.blobs, built.plan, start, end, job_id)
        response = Response(stream, status=status, headers=headers)
        response.timeout = None  # Quart's 60 s default would cut a long download short
        LOGGER.info("job=%s download %d-%d of %d bytes", job_id, start, end, built.size)
    response.headers["Content-Length"] = str(end - start)
    return response
