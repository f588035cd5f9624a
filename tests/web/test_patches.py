"""What `web.http.patches` relies on in Quart, Quart-Trio and Hypercorn: each check fails
loudly when an upgrade takes it away, rather than letting a patch silently stop working."""

from __future__ import annotations

import inspect
import socket

import hypercorn.events
import hypercorn.trio.run
import hypercorn.trio.tcp_server
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.events import Closed, RawData
from quart import Quart
from quart.wrappers.request import Body
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody

from web.http import patches
from web.http.bodies import MAX_HEADER_BLOCK_BYTES


def test_hypercorn_reads_with_a_module_constant() -> None:
    assert isinstance(hypercorn.trio.tcp_server.MAX_RECV, int)
    source = inspect.getsource(hypercorn.trio.tcp_server.TCPServer._read_data)
    assert "receive_some(MAX_RECV)" in source  # read at each receive, not bound at import


def test_the_trio_worker_looks_up_its_connection_class_when_it_serves() -> None:
    assert hypercorn.trio.run.TCPServer in (
        hypercorn.trio.tcp_server.TCPServer,
        patches.PacedTCPServer,
    )
    assert "TCPServer," in inspect.getsource(hypercorn.trio.run.worker_serve)


def test_the_connection_class_has_what_pacing_uses() -> None:
    server = hypercorn.trio.tcp_server.TCPServer
    assert issubclass(patches.PacedTCPServer, server)
    parameters = inspect.signature(server.protocol_send).parameters
    assert list(parameters) == ["self", "event"]
    init = inspect.getsource(server.__init__)
    for attribute in ("self.send_lock", "self.stream", "self.config"):
        assert attribute in init, attribute
    assert "self.protocol" in inspect.getsource(server.run)
    assert RawData(b"x").data == b"x"
    assert isinstance(Closed(), hypercorn.events.Event)


def test_the_config_makes_the_listening_sockets() -> None:
    assert inspect.signature(HypercornConfig.create_sockets).return_annotation in (
        Sockets,
        "Sockets",
    )
    config = patches.ServerConfig()
    config.bind = ["127.0.0.1:0"]
    sockets = config.create_sockets()
    try:
        (sock,) = sockets.insecure_sockets
        timeout_ms = sock.getsockopt(socket.IPPROTO_TCP, patches.TCP_USER_TIMEOUT)
        assert timeout_ms == int(config.stall_timeout_s * 1000)
    finally:
        for sock in sockets.insecure_sockets:
            sock.close()


def test_hypercorns_header_limit_is_the_one_held_after_large_reads() -> None:
    assert HypercornConfig.h11_max_incomplete_size == MAX_HEADER_BLOCK_BYTES == 16 * 1024


# --- Quart and Quart-Trio ---------------------------------------------------------------


def test_quarts_body_keeps_what_the_bounded_body_replaces() -> None:
    """`BoundedBody` stands its chunk list in for Quart's bytearray, which Quart's `Body`
    uses only through `extend`, `len`, `bytes` and `clear`; and it reads the events and
    the error Quart's own methods read."""
    source = inspect.getsource(Body)
    uses = {line.strip() for line in source.splitlines() if "self._data" in line}
    allowed = ("self._data = bytearray()", "self._data.extend(", "self._data.clear()",
               "len(self._data)", "bytes(self._data)")  # fmt: skip
    assert all(any(use in line for use in allowed) for line in uses), uses
    body = TrioBody(None, None)
    for attribute in ("_data", "_complete", "_has_data", "_must_raise"):
        assert hasattr(body, attribute), attribute
    assert callable(body.append)
    assert callable(body.set_complete)
    assert issubclass(patches.BoundedBody, TrioBody)
    assert patches.BoundedRequest.body_class is patches.BoundedBody


def test_quart_trios_connection_has_what_the_service_connection_overrides() -> None:
    connection = TrioASGIHTTPConnection
    assert issubclass(patches.ServiceHTTPConnection, connection)
    assert list(inspect.signature(connection.__call__).parameters) == ["self", "receive", "send"]
    assert list(inspect.signature(connection.handle_messages).parameters) == [
        "self", "nursery", "request", "receive",
    ]  # fmt: skip
    assert list(inspect.signature(connection._create_request_from_scope).parameters) == [
        "self", "send",
    ]  # fmt: skip
    # The app picks both classes from these attributes.
    app = Quart(__name__)
    assert hasattr(app, "request_class")
    assert hasattr(app, "asgi_http_class")
    patches.install(app)
    assert app.asgi_http_class is patches.ServiceHTTPConnection
