"""A TCP relay in front of the S3 server that sends what clients write at a set pace, and
says when a request to a given path begins: a test can then stop a process while its
upload to the bucket is under way (on loopback an upload is over before a test could see
it). What the server sends back is relayed as fast as it comes."""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

REQUEST_LINE = re.compile(rb"(GET|PUT|POST|DELETE|HEAD) (/[^ ?]*)(\?[^ ]*)? HTTP/1\.1")
PIECE_BYTES = 16 * 1024


@dataclass
class Throttle:
    """Listens on `port`; `watch(pattern)` gives an event set when a request whose path
    matches `pattern` has sent its first bytes through."""

    port: int
    upstream: tuple[str, int]
    bytes_per_s: float
    watches: list[tuple[re.Pattern[bytes], trio.Event]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    # Cut the next connection whose answer passes this many bytes (once), as a network
    # that drops a long transfer would.
    cut_after: int | None = None
    cuts: int = 0

    def watch(self, pattern: str) -> trio.Event:
        event = trio.Event()
        self.watches.append((re.compile(pattern.encode()), event))
        return event

    def _notice(self, data: bytes) -> None:
        for match in REQUEST_LINE.finditer(data):
            line = match.group(0)
            self.seen.append(line.decode("latin-1"))
            for pattern, event in self.watches:
                if pattern.search(line):
                    event.set()

    async def _relay(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream(*self.upstream)
        async with client, server, trio.open_nursery() as nursery:

            async def up() -> None:
                while data := await client.receive_some(PIECE_BYTES):
                    self._notice(data)
                    await server.send_all(data)
                    await trio.sleep(len(data) / self.bytes_per_s)
                await server.send_eof()

            async def down() -> None:
                relayed = 0
                while data := await server.receive_some(65536):
                    await client.send_all(data)
                    relayed += len(data)
                    if self.cut_after is not None and relayed > self.cut_after:
                        self.cut_after, self.cuts = None, self.cuts + 1
                        break
                nursery.cancel_scope.cancel()

            nursery.start_soon(up)
            nursery.start_soon(down)

    async def _serve(self, client: trio.SocketStream) -> None:
        try:
            await self._relay(client)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # a process killed mid-request: its connection just ends


@asynccontextmanager
async def throttled(endpoint: str, bytes_per_s: float) -> AsyncIterator[Throttle]:
    """A relay to `endpoint` (http://host:port) on a free port of 127.0.0.1."""
    host, port = endpoint.removeprefix("http://").rstrip("/").split(":")
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"),
            lambda stream: throttle._serve(stream),
            0,
        )
        throttle = Throttle(listeners[0].socket.getsockname()[1], (host, int(port)), bytes_per_s)
        try:
            yield throttle
        finally:
            nursery.cancel_scope.cancel()
