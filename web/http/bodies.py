"""Request bodies: backpressure for a streamed one, a small size limit on every other.

Quart's receive loop appends every body chunk to the request's buffer without waiting
for the handler to take it, so an upload arriving faster than the disk takes it piles
up in memory (measured: +150 MB RSS for a 1 GiB upload). Here the loop waits, once the
handler has started streaming the body (`async for chunk in request.body`), until the
buffer is below a high-water mark; the kernel's socket buffers then slow the client.
Bodies read whole behave as before.

Quart's own limit, `MAX_CONTENT_LENGTH`, is one for all routes and sized for uploads
(gigabytes): a chunked login body was buffered that far before any handler ran. So a
limit is chosen per route as the request arrives: the routes the app names in
`BODY_LIMITS_KEY` get theirs, every other route `SMALL_BODY`. Bytes are counted as they
arrive; past the limit they are dropped, not kept, and reading the body raises a 413.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from quart import Quart, Response, request
from quart.wrappers import Request
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody, TrioRequest
from werkzeug.exceptions import HTTPException

from web.http.errors import ApiError

# Bytes the buffer may hold before the receive loop waits for the handler: a few of
# Hypercorn's 64 KiB reads, enough to keep the disk writer busy.
HIGH_WATER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class BodyLimit:
    """The most bytes a route's request body may carry, and the 413's sentence past it."""

    max_bytes: int
    message: str


# Every route but the upload takes at most a JSON object of a few fields.
SMALL_BODY = BodyLimit(
    64 * 1024, "This request's body is larger than 64 KiB, the most this route accepts."
)
# A small body that takes longer than this is not a slow line but a client holding the
# connection: refused, so no one holds a handler (and its buffer) for ever.
SMALL_BODY_TIMEOUT_S = 30.0
# The app's config key: endpoint -> its `BodyLimit`, or None for a body its handler
# streams under the app-wide MAX_CONTENT_LENGTH and limits of its own.
BODY_LIMITS_KEY = "BODY_LIMITS"


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


class _Chunks:
    """A body's buffer kept as the chunks that arrived, so that taking them in never
    copies them. Quart's own buffer is one bytearray: each chunk copied in, all of it
    copied out again, its memory freed and taken anew (page faults) at every read; that
    held a 1 GiB upload to about 550 MB/s against a raw server's 2 GB/s. It stands in
    for that bytearray in what Quart's `Body` does with it (extend, len, bytes, clear)."""

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def extend(self, data: bytes) -> None:
        chunk = bytes(data)  # the same object when it is bytes already
        self._chunks.append(chunk)
        self._size += len(chunk)

    def popleft(self) -> bytes:
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        return chunk

    def __len__(self) -> int:
        return self._size

    def __bytes__(self) -> bytes:
        return b"".join(self._chunks)

    def clear(self) -> None:
        self._chunks.clear()
        self._size = 0


class BoundedBody(TrioBody):
    """A request body that lets the receive loop wait for its streaming reader, and
    refuses to grow past its route's limit."""

    def __init__(self, expected_content_length: int | None, max_content_length: int | None) -> None:
        super().__init__(expected_content_length, max_content_length)
        self._data: _Chunks = _Chunks()  # type: ignore[assignment]
        self._streaming = False
        self._drained = trio.Event()
        self._drained.set()
        self._expected_bytes = expected_content_length
        self._received_bytes = 0
        self.limit: BodyLimit | None = None
        self._abandoned = False

    def set_limit(self, limit: BodyLimit) -> None:
        """Refuse the body (413) once more than `limit.max_bytes` arrive in all."""
        self.limit = limit
        if self._expected_bytes is not None and self._expected_bytes > limit.max_bytes:
            self._refuse(limit)

    def _refuse(self, limit: BodyLimit) -> None:
        # The answer may go out while the body still arrives: the connection cannot carry
        # another request, and the client must be told so.
        self._must_raise = ApiError(413, limit.message, headers={"Connection": "close"})
        self._data.clear()
        self.set_complete()

    def abandon(self) -> None:
        """No one will read the rest: drop what is kept and what still arrives, and never
        make the receive loop wait again."""
        self._abandoned = True
        self._data.clear()
        self._drained.set()

    def append(self, data: bytes) -> None:
        if self._must_raise is not None or self._abandoned:
            return  # refused or abandoned: what still arrives is dropped, not kept
        self._received_bytes += len(data)
        if self.limit is not None and self._received_bytes > self.limit.max_bytes:
            self._refuse(self.limit)
            return
        super().append(data)
        if self._streaming and len(self._data) >= HIGH_WATER_BYTES and self._drained.is_set():
            self._drained = trio.Event()

    async def __anext__(self) -> bytes:
        """The next chunk as it arrived (Quart's joins all that is waiting)."""
        self._streaming = True
        try:
            if self._must_raise is not None:
                raise self._must_raise
            if not self._complete.is_set():
                await self._has_data.wait()
            if self._complete.is_set() and len(self._data) == 0:
                raise StopAsyncIteration()
            chunk = self._data.popleft()
            if len(self._data) == 0 and not self._complete.is_set():
                self._has_data.clear()
            return chunk
        finally:
            if len(self._data) < HIGH_WATER_BYTES:
                self._drained.set()

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived (or been refused)."""
        return self._complete.is_set()

    async def wait_drained(self) -> None:
        """Return once the buffer is below the high-water mark (at once if not streaming)."""
        await self._drained.wait()


class BoundedRequest(TrioRequest):
    body_class = BoundedBody


def _route_limit(app: Quart, method: str, path: str) -> BodyLimit | None:
    try:
        endpoint, _ = app.url_map.bind("localhost").match(path, method=method)
    except HTTPException:  # no such route (or a redirect): its answer reads no body
        return SMALL_BODY
    limits: dict[str, BodyLimit | None] = app.config.get(BODY_LIMITS_KEY, {})
    return limits.get(endpoint, SMALL_BODY)


async def receive_limited_body() -> None:
    """Receive a limited body whole before the handler runs; past its limit, raise the 413.

    Run before every request, so each route refuses an oversized body, also one whose
    handler never reads it; a streamed body (no limit here) is left to its handler.
    """
    body = request.body
    if isinstance(body, BoundedBody) and body.limit is not None:
        with trio.move_on_after(SMALL_BODY_TIMEOUT_S) as deadline:
            await body
        if deadline.cancelled_caught:
            raise ApiError(
                408,
                f"The request's body did not arrive within {SMALL_BODY_TIMEOUT_S:g} seconds.",
                headers={"Connection": "close"},
            )


async def read_json() -> object:
    """The request's body parsed as JSON in strict UTF-8; raise `MalformedJSON` if it is not.

    Unlike Quart's `get_json(silent=True)`, nothing escapes as a 500: not invalid UTF-8,
    not JSON nested too deep to parse (`RecursionError`). Past the body's limit, the 413.
    """
    raw = bytearray()
    async for chunk in request.body:
        raw += chunk
    try:
        return json.loads(raw.decode("utf-8"))
    except (RecursionError, ValueError) as err:  # UnicodeDecodeError is a ValueError
        raise MalformedJSON("the body is not JSON in UTF-8") from err


async def close_if_body_unread(response: Response) -> Response:
    """An error answered before the request's body has all arrived closes the connection.

    Otherwise the connection is kept for a next request, and the rest of the body (a
    refused upload's gigabytes) would have to be read, and thrown away, first."""
    body = request.body
    unread = isinstance(body, BoundedBody) and not body.complete
    if unread and response.status_code >= 400:
        response.headers["Connection"] = "close"
    return response


class BackpressureHTTPConnection(TrioASGIHTTPConnection):
    """Quart-Trio's HTTP connection, with the receive loop waiting for a streaming reader
    until the answer is complete (`abandon_body`)."""

    _body: BoundedBody | None = None

    def abandon_body(self) -> None:
        """Call as the answer's last piece goes out. Hypercorn, inside that very send,
        queues a last message for the receive loop (the request is over) and waits for
        room in the queue: a loop still waiting for a reader of a body that went unread
        (an upload refused part-way) would never make that room, and the connection, its
        task and the client would all hang."""
        if self._body is not None:
            self._body.abandon()

    def _create_request_from_scope(self, send: ASGISendCallable) -> Request:
        # The limit must be set before the receive loop appends the first byte.
        created = super()._create_request_from_scope(send)
        limit = _route_limit(self.app, created.method, created.path)
        if isinstance(created.body, BoundedBody):
            self._body = created.body
            if limit is not None:
                created.body.set_limit(limit)
        return created

    async def handle_messages(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Request, receive: ASGIReceiveCallable
    ) -> None:
        body = request.body
        while True:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
                elif isinstance(body, BoundedBody):
                    await body.wait_drained()
            elif message["type"] == "http.disconnect":
                break
        nursery.cancel_scope.cancel()
