"""Reading a server-sent event stream in the background, one item at a time."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import httpx
import trio

# (kind, data): an event's name and its JSON data; ("retry", milliseconds); or
# ("comment", text) for a comment line such as the heartbeat.
Item = tuple[str, Any]


async def open_stream(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: dict[str, str] | None = None,
) -> trio.MemoryReceiveChannel[Item]:
    """Read the stream at `url` into a channel, which ends when the server ends the
    stream. Fail (in `nursery`) unless it answers 200 with `text/event-stream`."""
    send, receive = trio.open_memory_channel[Item](math.inf)

    async def read() -> None:
        async with send, client.stream("GET", url, headers=headers, timeout=None) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            kind = None
            async for line in response.aiter_lines():
                if line.startswith("retry: "):
                    send.send_nowait(("retry", int(line.removeprefix("retry: "))))
                elif line.startswith(":"):
                    send.send_nowait(("comment", line.removeprefix(":").strip()))
                elif line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: ") and kind is not None:
                    send.send_nowait((kind, json.loads(line.removeprefix("data: "))))

    nursery.start_soon(read)
    return receive


async def receive_until(
    items: trio.MemoryReceiveChannel[Item],
    wanted: Callable[[Item], bool],
    *,
    timeout_s: float = 30,
) -> tuple[Item, list[Item]]:
    """The first item `wanted` accepts, and every item received before it."""
    passed: list[Item] = []
    with trio.fail_after(timeout_s):
        async for item in items:
            if wanted(item):
                return item, passed
            passed.append(item)
    raise AssertionError(f"the stream ended first, after {passed}")
