"""Fakes with fault hooks for actor tests."""

from __future__ import annotations

from collections.abc import Callable

import trio

from actors.download_tracker import DownloadTracker
from refresher.store import Database


class GatedTracker(DownloadTracker):
    """A tracker whose `hold_call`-th reservation waits until `gate` is set."""

    def __init__(self, db: Database, *, now: Callable[[], float], hold_call: int) -> None:
        super().__init__(db, now=now)
        self.gate = trio.Event()
        self.hold_call = hold_call
        self.calls = 0

    async def reserve_for_deletion(self, job_id: str, *, reason: str) -> bool:
        self.calls += 1
        if self.calls == self.hold_call:
            await self.gate.wait()
        return await super().reserve_for_deletion(job_id, reason=reason)
