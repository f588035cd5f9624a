"""The janitor: expires finished jobs past their TTL and reconciles disk with database."""

from __future__ import annotations

import logging

import trio

from refresher.db import Database

LOGGER = logging.getLogger(__name__)


class Janitor:
    name = "janitor"

    def __init__(self, db: Database, *, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.db = db
        self.interval_s = interval_s

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Make a pass on start and every `interval_s` until cancelled."""
        task_status.started()
        while True:
            await self.sweep()
            await trio.sleep(self.interval_s)

    async def sweep(self) -> None:
        """Make one pass over jobs and disk."""
        # TODO(#5): expire, fail stale queued jobs, purge tombstones, reconcile orphans.
        LOGGER.debug("janitor pass: nothing to do yet")
