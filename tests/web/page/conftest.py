"""The page's tests: the real service on 127.0.0.1, on a wall clock that agrees with the
browser's, which a test can stop and start again; and natural footage to measure."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from refresher.config import Config
from refresher.media.ffmpeg import find_ffmpeg
from tests.support.clock import WallClock
from tests.support.footage import make_footage
from wiring.service import serve

# Every still in the comparison view scrolled to in turn, so each lazy image loads.
SCROLL_THROUGH_STILLS = """async () => {
  for (const img of document.querySelectorAll('#compare img')) {
    img.scrollIntoView({ block: 'center' });
    await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
  }
}"""
STILLS_LOADED = """() => [...document.querySelectorAll('#compare img')]
  .every((img) => img.complete && img.naturalWidth > 0)"""


@pytest.fixture(scope="session")
def teaser(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 s pan over photographs, made once: shorter than the shared `footage`, so a page
    test waits less; natural, since test patterns measure unlike real video, and its stills
    show what a person would compare."""
    path = tmp_path_factory.mktemp("footage") / "autumn teaser.mp4"
    return make_footage(find_ffmpeg(None), path, width=640, height=360, seconds=4)


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
