"""`GET`/`HEAD /api/jobs/:id/outputs/:outputId`: one variation, for a player or a download.

Served like the ZIP (`web.http.serving`): Content-Length, a strong ETag and Last-Modified from
the database, a single `Range` answered with 206 (a `<video>` seeks that way), HEAD
without reading the file, and a download lease held while a GET lasts, so a player open
on a variation keeps its job from being removed under it. Shown inline unless the query
says `download=1`; either way under the name it has in the job's ZIP.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

from quart import Blueprint, Response, request

from refresher import metrics, timestamps
from refresher.archive import job_archive
from refresher.auth import tokens
from refresher.jobs import records
from refresher.jobs.status import TOMBSTONES
from refresher.storage.blobs import BlobStore
from web.http import ranges
from web.http.access import check_bearer
from web.http.errors import ApiError
from web.http.lease import GONE, hold_lease
from web.http.serving import content_disposition, wanted_range
from web.state import state
from web.views import load_or_404

LOGGER = logging.getLogger(__name__)

blueprint = Blueprint("outputs", __name__)


def etag_of(output: records.OutputRecord) -> str:
    """A strong ETag: an output's bytes never change once recorded, and its id, size and
    CRC-32 name them."""
    digest = hashlib.sha256(f"{output.id}\0{output.size}\0{output.crc32}".encode())
    return f'"{digest.hexdigest()[:32]}"'


async def _stream(
    blobs: BlobStore, path: Path, start: int, end: int, job_id: str
) -> AsyncIterator[bytes]:
    sent = 0
    metrics.DOWNLOADS.labels("started").inc()
    try:
        chunks = blobs.chunks(path, start, end - start)
        async with aclosing(chunks):
            async for chunk in chunks:
                yield chunk
                sent += len(chunk)
    finally:
        metrics.download_ended(sent, end - start)
        LOGGER.info("job=%s output stream ended after %d of %d bytes", job_id, sent, end - start)


@blueprint.route("/api/jobs/<job_id>/outputs/<output_id>", methods=["GET", "HEAD"])
async def output(job_id: str, output_id: str) -> Response:
    check_bearer(also_scope=tokens.output_scope(job_id, output_id))
    app_state = state()
    job = await load_or_404(app_state, job_id)
    if job.status in TOMBSTONES:
        raise ApiError(410, GONE)
    found = next((out for out in job.outputs if out.id == output_id), None)
    if found is None:
        raise ApiError(404, "This job has no such variation; it may have been removed.")
    name = job_archive.output_names(job)[output_id]
    etag, modified = etag_of(found), timestamps.parse(found.created_at)
    disposition = "attachment" if request.args.get("download") == "1" else "inline"
    headers = {
        "Content-Type": "video/mp4",
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Last-Modified": ranges.http_date(modified),
        "Content-Disposition": content_disposition(disposition, name),
        "Cache-Control": "private, no-transform",
    }
    status, start, end, part = wanted_range(
        size=found.size, etag=etag, modified=modified, noun="video"
    )
    headers.update(part)
    if request.method == "HEAD":
        response = Response(b"", status=status, headers=headers)
    else:
        await hold_lease(app_state, job_id)
        path = app_state.paths.absolute(found.path)
        stream = _stream(app_state.lifecycle.blobs, path, start, end, job_id)
        response = Response(stream, status=status, headers=headers)
        response.timeout = None  # Quart's 60 s default would cut a long video short
        LOGGER.info("job=%s output=%s %d-%d of %d bytes", job_id, output_id, start, end, found.size)
    response.headers["Content-Length"] = str(end - start)
    return response
