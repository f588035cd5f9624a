from __future__ import annotations

import trio
import trio.testing

from web.http.patches import HIGH_WATER_BYTES, BoundedBody


async def test_receive_loop_waits_for_a_streaming_reader() -> None:
    body = BoundedBody(None, None)
    chunk = b"x" * (HIGH_WATER_BYTES // 2)
    # Before the handler streams, nothing waits (a body read whole must still complete).
    body.append(chunk)
    body.append(chunk)
    await body.wait_drained()
    # Now it streams, one chunk at a time as they arrived (never copied together).
    assert await body.__anext__() is chunk
    assert await body.__anext__() is chunk
    body.append(chunk)
    await body.wait_drained()  # below the mark: no wait
    body.append(chunk)  # at the mark: the receive loop must wait
    waited = trio.Event()

    async def receive_loop() -> None:
        await body.wait_drained()
        waited.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_loop)
        await trio.testing.wait_all_tasks_blocked()
        assert not waited.is_set()
        assert await body.__anext__() is chunk  # half taken: below the mark again
        await trio.testing.wait_all_tasks_blocked()
        assert waited.is_set()
