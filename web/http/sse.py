"""Server-sent events: the one loop both event routes run, its framing, and its limits.

A stream sends `retry:` first (how soon EventSource reconnects after the stream ends),
then what the route opens with, then each event the hub brings, rendered by the route,
and a comment line after HEARTBEAT_S of silence. It ends when the route says so (the job
is over), when the hub drops it (it fell behind), when the service begins to stop, and
when the token or link it was opened with expires: a link handed on keeps nothing open
past its own lifetime. The browser then reconnects (with a fresh link) and reads the
current state afresh, so nothing that matters is lost.

An event carries status and progress, never a signed link (DESIGN §5, invariant 10): a
page asks for links with its session. Streams are counted: at most `per_key` at once on
one session or link (429) and `total` in all (503), so no link, leaked or not, can hold
the connections the service has.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import trio
from quart import Response

from refresher.auth.tokens import Token
from refresher.jobs import records
from refresher.jobs.events import DELETED, JobEvent
from refresher.jobs.status import TERMINAL
from web.http.patches import on_close
from web.state import AppState
from web.views import job_state

# A comment line this often keeps proxies (and Fly's) from closing an idle stream.
HEARTBEAT_S = 15.0
# Tells EventSource how soon to reconnect after the stream ends early.
RETRY_MS = 3000
RETRY = f"retry: {RETRY_MS}\n\n".encode()
KEEP_ALIVE = b": keep-alive\n\n"

# The opening of a stream: its first bytes, and whether anything may follow them.
Opening = Callable[[], Awaitable[tuple[bytes, bool]]]
# An event as the stream sends it: its bytes, and whether the stream ends after them.
Render = Callable[[JobEvent], Awaitable[tuple[bytes, bool]]]


def sse(kind: str, data: object) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def status_of(app_state: AppState, job_id: str) -> tuple[bytes, bool]:
    """The job's state as a `status` event (no link), and whether more will happen to it.
    A job deleted meanwhile gets an event saying just that."""
    job = await app_state.db.read(lambda conn: records.load_job(conn, job_id))
    if job is None:
        return sse("status", {"jobId": job_id, "status": DELETED}), False
    return sse("status", job_state(job)), job.status not in TERMINAL


async def _next_event(
    events: trio.MemoryReceiveChannel[JobEvent], stopping: trio.Event, wait_s: float
) -> JobEvent | None:
    """The next event, or None after `wait_s` without one. Raise `trio.EndOfChannel` when
    the subscription ended (a subscriber that fell behind) or the service stops."""
    event: JobEvent | None = None
    ended = False
    async with trio.open_nursery() as nursery:

        async def receive() -> None:
            nonlocal event, ended
            with trio.move_on_after(wait_s):
                try:
                    event = await events.receive()
                except trio.EndOfChannel:
                    ended = True
            nursery.cancel_scope.cancel()

        async def stop() -> None:
            await stopping.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(receive)
        nursery.start_soon(stop)
    if ended or stopping.is_set():
        raise trio.EndOfChannel
    return event


def event_stream(
    app_state: AppState, access: Token, topic: str | None, opening: Opening, render: Render
) -> Response:
    """Answer with the events of `topic` (a job's id; None for every job) for as long as
    `access` (the token or link the request showed) lasts.

    Takes a stream slot for `access` (raising the 429 or 503 that refuses it) and gives
    it back when the request's handling ends, however it ends.
    """
    slots = app_state.streams
    slots.take(access.value)

    async def give_back() -> None:
        slots.give_back(access.value)

    on_close(give_back)

    async def body() -> AsyncIterator[bytes]:
        async with app_state.events.subscribe(topic) as events:
            # The state is read only after subscribing, so no event falls between the two.
            first, goes_on = await opening()
            yield RETRY + first
            while goes_on:
                left_s = access.expires_at - app_state.now()
                if left_s <= 0:
                    return  # the token or link ran out: a fresh one must be shown
                try:
                    event = await _next_event(events, app_state.stopping, min(HEARTBEAT_S, left_s))
                except trio.EndOfChannel:
                    return  # dropped for falling behind, or the service stops: reconnect
                if access.expires_at <= app_state.now():
                    return
                if event is None:
                    yield KEEP_ALIVE
                    continue
                data, ends = await render(event)
                yield data
                goes_on = not ends

    response = Response(body(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"  # it carries job JSON
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None
    return response
