"""Every patch of Quart, Quart-Trio and Hypercorn internals, in one place.

Each relies on something the framework does not promise; `tests/web/test_patches.py`
checks each of those things, so an upgrade that removes one fails loudly there, not by
an upload that piles up in memory or a download lease that never ends.

| patch | why | relies on |
|---|---|---|
| `BoundedBody`, `BoundedRequest` | a request body kept as the chunks that arrived (no copy), refused past its route's limit as it arrives | Quart's `Body`: `_data` (`extend`, `len`, `bytes`, `clear`), `_complete`, `_has_data`, `_must_raise`, `append`, `set_complete` |
| `ServiceHTTPConnection` | the receive loop waits for a streaming reader (backpressure); callbacks run when a request's handling ends, however it ends (`on_close`); the last send is shielded | Quart-Trio's `TrioASGIHTTPConnection`: `__call__`, `handle_messages`, `_create_request_from_scope`; `Quart.asgi_http_class` |
| `tune_reads` | 1 MiB reads: uploads at ~1.1 GB/s instead of ~650 MB/s | `hypercorn.trio.tcp_server.MAX_RECV`, read at each receive |
| `ServerConfig.create_sockets` | a kernel send timeout (`TCP_USER_TIMEOUT`) on each connection | `Config.create_sockets` returning the listening `Sockets` |
| `PacedTCPServer` | a client must take what it is sent at a minimum rate | `hypercorn.trio.run.TCPServer`, looked up at each serve; `TCPServer`'s `protocol_send`, `send_lock`, `stream`, `protocol` |

Why each is needed is told where it is made. `web.http.lease` tells how they keep a
download's lease no longer than its download; `web.http.bodies` the limits on bodies.
"""  # noqa: E501

# Long, but one idea: every reliance on a framework's internals in one module, so an
# upgrade has one list to check, and `tests/web/test_patches.py` one module to guard.

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

import hypercorn.trio.run
import hypercorn.trio.tcp_server
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent
from quart import Quart, Response, request
from quart.wrappers import Request
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody, TrioRequest
from werkzeug.exceptions import HTTPException

from web.http.bodies import BODY_LIMITS_KEY, SMALL_BODY, SMALL_BODY_TIMEOUT_S, BodyLimit
from web.http.errors import ApiError

LOGGER = logging.getLogger(__name__)

# --- Quart's request body -----------------------------------------------------------------

# Bytes the buffer may hold before the receive loop waits for the handler: a few of
# Hypercorn's reads, enough to keep the disk writer busy.
HIGH_WATER_BYTES = 4 * 1024 * 1024


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
        # Bytes handed to the handler so far (`__anext__`).
        self.read_bytes = 0

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
            self.read_bytes += len(chunk)
            return chunk
        finally:
            if len(self._data) < HIGH_WATER_BYTES:
                self._drained.set()

    def take_arrived(self) -> list[bytes]:
        """Take the chunks that arrived and were not read: what a handler whose client left
        (it was cancelled) keeps of what it was sent."""
        chunks = []
        while len(self._data):
            chunk = self._data.popleft()
            self.read_bytes += len(chunk)
            chunks.append(chunk)
        self._drained.set()
        return chunks

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


# --- Quart-Trio's connection ------------------------------------------------------------

Callback = Callable[[], Awaitable[None]]

# The callbacks of the request being served; each connection call sets a list of its own,
# which the tasks it starts (the handler's among them) share.
_CALLBACKS: ContextVar[list[Callback]] = ContextVar("on_close_callbacks")


def on_close(callback: Callback) -> None:
    """Run `callback` once the current request is over: answered, failed or abandoned.

    A streaming body's `finally` is not enough: Quart may be cancelled after a handler
    returned and before the body's first step (a client leaving as the headers go out),
    and a generator never started never runs its `finally`. The connection's own call is
    the one thing that always returns or raises, so callbacks run there, shielded."""
    _CALLBACKS.get().append(callback)


class ServiceHTTPConnection(TrioASGIHTTPConnection):
    """Quart-Trio's HTTP connection with three changes, each for a reason of its own.

    - Backpressure: Quart's receive loop appends every body chunk to the request's buffer
      without waiting for the handler to take it, so an upload arriving faster than the
      disk takes it piled up in memory (+150 MB RSS for a 1 GiB upload). Here the loop
      waits, once the handler streams the body, until the buffer is below
      HIGH_WATER_BYTES; the kernel's socket buffers then slow the client. Each route's
      body limit is set before the first byte is appended (`BODY_LIMITS_KEY`).
    - Request-end callbacks (`on_close`), run shielded when the call returns or raises.
    - A clean last send: inside the answer's last send Hypercorn readies the connection
      for its next request and starts the watch that closes an idle keep-alive
      connection at shutdown; the same send tells Quart-Trio the request is over, which
      cancels the task making it, so the watch never started and every idle connection
      held a graceful shutdown for its whole grace. The last send is shielded, and the
      body is abandoned first (`abandon_body`).
    """

    _body: BoundedBody | None = None

    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        callbacks: list[Callback] = []
        token = _CALLBACKS.set(callbacks)

        async def send_last_shielded(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.abandon_body()
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        try:
            await super().__call__(receive, send_last_shielded)
        finally:
            _CALLBACKS.reset(token)
            with trio.CancelScope(shield=True):
                for callback in reversed(callbacks):
                    try:
                        await callback()
                    except Exception:  # one failed cleanup must not skip the others
                        LOGGER.exception("a request's cleanup failed")

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


async def close_if_body_unread(response: Response) -> Response:
    """An error answered before the request's body has all arrived closes the connection.

    Otherwise the connection is kept for a next request, and the rest of the body (a
    refused upload's gigabytes) would have to be read, and thrown away, first."""
    body = request.body
    unread = isinstance(body, BoundedBody) and not body.complete
    if unread and response.status_code >= 400:
        response.headers["Connection"] = "close"
    return response


def install(app: Quart) -> None:
    """Serve `app`'s requests with the bounded body and the service's connection (the app
    registers `receive_limited_body` and `close_if_body_unread` among its hooks)."""
    app.request_class = BoundedRequest
    app.asgi_http_class = ServiceHTTPConnection


# --- Hypercorn ---------------------------------------------------------------------------

# Linux's socket option number (not in Python's socket module on every build).
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)
# Hypercorn reads at most 64 KiB per receive (`MAX_RECV`, a module constant with no
# setting), and each read then passes through h11, Hypercorn and Quart in Python: a 1 GiB
# upload over loopback ran at ~650 MB/s against a raw server's ~2 GB/s. Reads of up to
# 1 MiB make those passes 16 times fewer (~1.1 GB/s). A read takes only what the socket
# holds, so a small request still costs a small read.
HYPERCORN_READ_BYTES = 1024 * 1024
# A paced write goes out in pieces: small enough that a client at the minimum rate takes
# one well within its allowance, large enough that a fast one costs few steps.
SMALLEST_PIECE_BYTES = 16 * 1024
LARGEST_PIECE_BYTES = 1024 * 1024


def tune_reads() -> None:
    """Let Hypercorn read up to HYPERCORN_READ_BYTES at a time (process-wide)."""
    if not isinstance(getattr(hypercorn.trio.tcp_server, "MAX_RECV", None), int):
        LOGGER.warning("this Hypercorn has no MAX_RECV: uploads keep its own read size")
        return
    hypercorn.trio.tcp_server.MAX_RECV = HYPERCORN_READ_BYTES


class ServerConfig(HypercornConfig):
    """Hypercorn's config, plus how slow a client may be: `stall_timeout_s` without any
    acknowledgement, set in the kernel on the listening socket and inherited by each
    accepted one; and `min_send_rate_bytes_s` (0: none), paced by `PacedTCPServer`."""

    stall_timeout_s: float = 120.0
    min_send_rate_bytes_s: int = 0

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        for sock in sockets.insecure_sockets + sockets.secure_sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(
                    socket.IPPROTO_TCP, TCP_USER_TIMEOUT, int(self.stall_timeout_s * 1000)
                )
        return sockets


class ClientTooSlow(Exception):
    """A client took what it was sent slower than the minimum rate."""


class PacedTCPServer(TCPServer):
    """Hypercorn's TCP connection, with writes paced: while the server waits on a client
    to take what it is sent, the client must take `min_send_rate_bytes_s` on average.

    An allowance of waiting time starts at `stall_timeout_s`; waiting spends it, each
    byte taken earns 1/rate seconds back (never past `stall_timeout_s`). A write that
    outlasts the allowance cuts the connection. A client at the minimum rate or faster
    never runs out; one that takes a trickle is cut within about `stall_timeout_s` of
    falling behind, so it cannot pin a download's files. Waiting on nothing (an idle
    event stream between events) spends nothing. Configs without the rule (Hypercorn's
    own, as the metrics server uses) are served as Hypercorn serves them.
    """

    _allowance_s: float | None = None

    async def protocol_send(self, event: Event) -> None:
        rate = getattr(self.config, "min_send_rate_bytes_s", 0)
        if not isinstance(event, RawData) or rate <= 0:
            await super().protocol_send(event)
            return
        async with self.send_lock:
            try:
                with trio.CancelScope(shield=True):
                    await self._paced_send_all(event.data, rate)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
            except ClientTooSlow as slow:
                LOGGER.info("connection cut: %s", slow)
                with trio.CancelScope(shield=True):
                    await self.stream.aclose()
                    await self.protocol.handle(Closed())

    async def _paced_send_all(self, data: bytes, rate: int) -> None:
        stall_s = float(getattr(self.config, "stall_timeout_s", 120.0))
        if self._allowance_s is None:
            self._allowance_s = stall_s
        piece = min(LARGEST_PIECE_BYTES, max(SMALLEST_PIECE_BYTES, int(rate * stall_s / 4)))
        view = memoryview(data)
        for start in range(0, len(view), piece):
            chunk = view[start : start + piece]
            began = trio.current_time()
            with trio.move_on_after(self._allowance_s) as deadline:
                await self.stream.send_all(chunk)
            if deadline.cancelled_caught:
                raise ClientTooSlow(f"the client took less than {rate} bytes/s for {stall_s:g} s")
            spent = trio.current_time() - began
            self._allowance_s = min(stall_s, self._allowance_s - spent + len(chunk) / rate)


def install_paced_server() -> None:
    """Serve every connection Hypercorn's trio worker accepts with `PacedTCPServer`
    (process-wide; a config without the rule is served unchanged)."""
    hypercorn.trio.run.TCPServer = PacedTCPServer  # type: ignore[misc]
