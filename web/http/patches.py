"""Every change this service makes to Hypercorn's behaviour beyond its settings, in one
place. Each relies on something Hypercorn does not promise; `tests/web/test_patches.py`
checks each of those things, so an upgrade that removes one fails loudly there.

- `tune_reads`: 1 MiB reads, uploads at ~1.1 GB/s instead of ~650 MB/s. Relies on
  `hypercorn.trio.tcp_server.MAX_RECV`, read at each receive.
- `ServerConfig.create_sockets`: a kernel send timeout (`TCP_USER_TIMEOUT`) on each
  connection. Relies on `Config.create_sockets` returning the listening `Sockets`.
- `PacedTCPServer`: a client must take what it is sent at a minimum rate. Relies on
  `hypercorn.trio.run.TCPServer` being looked up at each serve, and on `TCPServer`'s
  `protocol_send`, `send_lock`, `stream` and `protocol`.

Hypercorn has no send timeout, and it shields its socket writes from cancellation: a
client that stops reading would hold its request's task, and a download's lease, for
ever; one that reads a trickle would hold them for hours. The kernel's TCP_USER_TIMEOUT
drops a connection whose peer acknowledges nothing for `DOWNLOAD_STALL_S`; pacing cuts
one whose peer acknowledges too little. Either way the write fails, Hypercorn tells the
app the client is gone, and the request's handling ends, which releases the lease
(`web.http.closing`).
"""

from __future__ import annotations

import logging
import socket

import hypercorn.trio.run
import hypercorn.trio.tcp_server
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.tcp_server import TCPServer

LOGGER = logging.getLogger(__name__)

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
