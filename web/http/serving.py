"""Serving a job's stored files: ranges and validators, and reads ahead of the sends.

Shared by the ZIP download and a single variation's route, so both answer `Range`,
`If-Range`, `If-Match` and `If-Unmodified-Since` alike; the reads themselves are the
blob store's (`refresher.storage.blobs`). Both hold a download lease
(`web.http.lease`) from before their first byte until the request's handling ends.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import trio
from quart import Response, request, send_file

from refresher.storage.blobs import BlobStore
from web.http import ranges
from web.http.errors import ApiError


async def send_private_image(
    blobs: BlobStore, path: Path, mimetype: str, *, missing: str
) -> Response:
    """A kept image whose link carries a token: cached by the browser alone, for an hour;
    404 with `missing` when it is gone."""
    if blobs.remote:
        try:
            data = await trio.to_thread.run_sync(blobs.load, path)
        except FileNotFoundError:
            raise ApiError(404, missing) from None
        response = Response(data, mimetype=mimetype)
    else:
        if not await trio.Path(path).exists():
            raise ApiError(404, missing)
        response = await send_file(path, mimetype=mimetype)
    # Private: its link carries a token. (send_file marks it public; both would contradict.)
    response.cache_control.public = False
    response.cache_control.private = True
    response.cache_control.max_age = 3600
    return response


def content_disposition(kind: str, filename: str) -> str:
    """`kind` ("inline" or "attachment") with `filename` for every browser: an ASCII
    fallback and the UTF-8 name (RFC 6266)."""
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "")
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


def wanted_range(
    *, size: int, etag: str, modified: datetime, noun: str
) -> tuple[int, int, int, dict[str, str]]:
    """What to send of `size` bytes under the request's validators and Range: the status
    (200 or 206), [start, end), and the headers that go with a part.

    Raise `ApiError` 412 when If-Match / If-Unmodified-Since rule the request out, and
    416 for a range wholly past the end; `noun` names the thing in those messages.
    """
    if ranges.precondition_failed(
        if_match=request.headers.get("If-Match"),
        if_unmodified_since=request.headers.get("If-Unmodified-Since"),
        etag=etag,
        modified=modified,
    ):
        raise ApiError(412, f"The {noun} has changed since this download began.")
    if not ranges.range_still_valid(request.headers.get("If-Range"), etag=etag, modified=modified):
        return 200, 0, size, {}
    try:
        wanted = ranges.parse_range(request.headers.get("Range"), size)
    except ranges.RangeNotSatisfiable:
        raise ApiError(
            416,
            f"The {noun} is {size} bytes; that range lies beyond it.",
            headers={"Content-Range": f"bytes */{size}"},
        ) from None
    if wanted is None:
        return 200, 0, size, {}
    start, end = wanted
    return 206, start, end, {"Content-Range": f"bytes {start}-{end - 1}/{size}"}
