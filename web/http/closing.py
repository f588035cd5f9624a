"""The end of a request's handling: cleanup that always runs, and a clean last send.

A streaming body's `finally` is not enough: Quart may be cancelled after a handler
returned and before the body's first step (a client leaving as the headers go out), and
a generator never started never runs its `finally`. The ASGI connection's own call is
the one thing that always returns or raises, so callbacks registered with `on_close`
run there, shielded, after the response is done or abandoned.

The last send of a response is shielded too. Inside it Hypercorn readies the connection
for its next request and starts the watch that closes an idle keep-alive connection
when the server shuts down; but the same send tells Quart-Trio the request is over,
which cancels the task making that send, and the watch was never started. Every idle
keep-alive connection then held a graceful shutdown for its whole grace period.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent

from web.http.bodies import BackpressureHTTPConnection

LOGGER = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None]]

# The callbacks of the request being served; each connection call sets a list of its own,
# which the tasks it starts (the handler's among them) share.
_CALLBACKS: ContextVar[list[Callback]] = ContextVar("on_close_callbacks")


def on_close(callback: Callback) -> None:
    """Run `callback` once the current request is over: answered, failed or abandoned."""
    _CALLBACKS.get().append(callback)


class ClosingHTTPConnection(BackpressureHTTPConnection):
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
