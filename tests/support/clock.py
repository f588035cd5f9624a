"""Time in tests: a wall clock moved by hand, and waiting for work done in threads."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

DAY_S = 24 * 3600.0

T = TypeVar("T")


class WallClock:
    """A wall clock the test moves by hand (unix seconds)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.value = start

    def __call__(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds


async def wait_for(
    check: Callable[[], Awaitable[T]], *, polls: int = 2000, step_s: float = 0.01
) -> T:
    """Poll `check` until it gives something true, and return that: an actor's work shows
    only in the store, written from threads (or in another process), so there is no event
    to wait on. Fail after `polls` polls, `step_s` apart (under a mock clock the steps
    are virtual; on a real one, `polls * step_s` is the least the wait may take)."""
    for _poll in range(polls):
        if found := await check():
            return found
        await trio.sleep(step_s)
    raise AssertionError(f"{check} still false after {polls} polls")
