"""The evictor: frees space when the volume or the quota runs short, oldest jobs first."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from actors.runtime import Mailbox
from refresher.db import Database

LOGGER = logging.getLogger(__name__)

INBOX_SIZE = 16


@dataclass(frozen=True)
class UsageChanged:
    """Something wrote or removed files; look at usage again."""


class Evictor:
    name = "evictor"

    def __init__(self, db: Database) -> None:
        self.db = db
        self.inbox: Mailbox[UsageChanged] = Mailbox(INBOX_SIZE)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch usage until cancelled."""
        task_status.started()
        async for _message in self.inbox.receive:
            # TODO(#5): evict the oldest finished, unleased jobs above the high watermark.
            pass
