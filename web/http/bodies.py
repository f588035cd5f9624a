"""Request limits as every route meets them: a small body, a header block, JSON.

Quart's own limit, `MAX_CONTENT_LENGTH`, is one for all routes and sized for uploads
(gigabytes): a chunked login body was buffered that far before any handler ran. So a
limit is chosen per route as the request arrives (`web.http.patches.BoundedBody`): the
routes the app names in `BODY_LIMITS_KEY` get theirs, every other route `SMALL_BODY`.
Bytes are counted as they arrive; past the limit they are dropped, not kept, and reading
the body raises a 413. A streamed body (the upload's) gets backpressure instead: the
receive loop waits for its reader (`web.http.patches.ServiceHTTPConnection`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hypercorn.config import Config as HypercornConfig
from quart import request

from web.http.errors import ApiError


@dataclass(frozen=True)
class BodyLimit:
    """The most bytes a route's request body may carry, and the 413's sentence past it."""

    max_bytes: int
    message: str


# Every route but the upload takes at most a JSON object of a few fields.
SMALL_BODY = BodyLimit(
    64 * 1024, "This request's body is larger than 64 KiB, the most this route accepts."
)
# The app's config key: endpoint -> its `BodyLimit`, or None for a body its handler
# streams under the app-wide MAX_CONTENT_LENGTH and limits of its own.
BODY_LIMITS_KEY = "BODY_LIMITS"
# A small body that takes longer than this is not a slow line but a client holding the
# connection: refused, so no one holds a handler (and its buffer) for ever.
SMALL_BODY_TIMEOUT_S = 30.0
# Hypercorn refuses a request whose header block passes `h11_max_incomplete_size` (16 KiB)
# only while the block is still arriving: with reads of up to 1 MiB (`HYPERCORN_READ_BYTES`
# in `web.http.patches`) a larger block that arrives in one read would pass. The same
# limit is held on what arrived.
MAX_HEADER_BLOCK_BYTES: int = HypercornConfig.h11_max_incomplete_size


async def refuse_large_header_block() -> None:
    """Answer 431 to a request whose header block is larger than MAX_HEADER_BLOCK_BYTES."""
    scope = request.scope
    size = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
    size += sum(len(name) + len(value) + 4 for name, value in scope.get("headers", []))
    if size > MAX_HEADER_BLOCK_BYTES:
        raise ApiError(
            431,
            f"The request's headers are larger than {MAX_HEADER_BLOCK_BYTES // 1024} KiB, "
            "the most this server takes.",
            headers={"Connection": "close"},
        )


class MalformedJSON(ValueError):
    """A request body that is not JSON in UTF-8; the message says why."""


async def read_json(limit: BodyLimit | None = None) -> object:
    """The request's body parsed as JSON in strict UTF-8; raise `MalformedJSON` if it is not.

    Unlike Quart's `get_json(silent=True)`, nothing escapes as a 500: not invalid UTF-8,
    not JSON nested too deep to parse (`RecursionError`). Past the body's limit, the 413:
    the route's, or `limit` on a route whose body is streamed (it has none of its own).
    """
    raw = bytearray()
    async for chunk in request.body:
        raw += chunk
        if limit is not None and len(raw) > limit.max_bytes:
            raise ApiError(413, limit.message, headers={"Connection": "close"})
    try:
        return json.loads(raw.decode("utf-8"))
    except (RecursionError, ValueError) as err:  # UnicodeDecodeError is a ValueError
        raise MalformedJSON("the body is not JSON in UTF-8") from err
