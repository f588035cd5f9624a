"""Time in tests: a wall clock moved by hand, and waiting for work done in threads."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

DAY_S = 24 * 3600.0


class WallClock:
    """A wall clock the test moves by hand (unix seconds)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.value = start

    def __call__(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, polls: int = 2000, step_s: float = 0.01
) -> None:
    """Poll `check` until true: an actor's work shows only in the store, written from
    threads, so there is no event to wait on. Under a mock clock the steps are virtual."""
    for _poll in range(polls):
        if await check():
            return
        await trio.sleep(step_s)
    raise AssertionError(f"{check} still false after {polls} polls")
