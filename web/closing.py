"""Cleanup that runs when a request's connection handling ends, however it ends.

A streaming body's `finally` is not enough: Quart may be cancelled after a handler
returned and before the body's first step (a client leaving as the headers go out), and
a generator never started never runs its `finally`. The ASGI connection's own call is
the one thing that always returns or raises, so callbacks registered with `on_close`
run there, shielded, after the response is done or abandoned.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable

from web.backpressure import BackpressureHTTPConnection

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
        try:
            await super().__call__(receive, send)
        finally:
            _CALLBACKS.reset(token)
            with trio.CancelScope(shield=True):
                for callback in reversed(callbacks):
                    try:
                        await callback()
                    except Exception:  # one failed cleanup must not skip the others
                        LOGGER.exception("a request's cleanup failed")
