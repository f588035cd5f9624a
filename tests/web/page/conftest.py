"""The page's tests: the real service on 127.0.0.1, on a wall clock that agrees with the
browser's, which a test can stop and start again."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from refresher.config import Config
from refresher.main import serve
from tests.support.clock import WallClock


@pytest.fixture
def wall_clock() -> WallClock:
    """Now, held still: the page counts times left with the browser's own clock."""
    return WallClock(start=time.time())


class Server:
    """The service on 127.0.0.1 that a test can stop and start again: same port, same data."""

    def __init__(self, nursery: trio.Nursery, config: Config, clock: WallClock) -> None:
        self.nursery, self.config, self.clock = nursery, config, clock
        self.url = ""
        self._shutdown = trio.Event()
        self._stopped = trio.Event()

    async def start(self) -> str:
        self._shutdown, self._stopped = trio.Event(), trio.Event()
        config = self.config
        if self.url:
            config = dataclasses.replace(config, port=int(self.url.rsplit(":", 1)[1]))

        async def run(task_status: trio.TaskStatus[Any]) -> None:
            try:
                await serve(
                    config, shutdown=self._shutdown, now=self.clock, task_status=task_status
                )
            finally:
                self._stopped.set()

        running = await self.nursery.start(run)
        self.url = running.url
        return self.url

    async def stop(self) -> None:
        self._shutdown.set()
        await self._stopped.wait()


@pytest.fixture
async def server(
    nursery: trio.Nursery, config: Config, wall_clock: WallClock
) -> AsyncIterator[Server]:
    running = Server(nursery, config, wall_clock)
    await running.start()
    yield running
    await running.stop()
