"""The processor: turns queued jobs into variations with FFmpeg, one job at a time.

The database is the queue; `JobQueued` only rings the bell.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from actors.runtime import Mailbox
from refresher.db import Database

LOGGER = logging.getLogger(__name__)

# Doorbells only: one pending ring is as good as many.
INBOX_SIZE = 16


@dataclass(frozen=True)
class JobQueued:
    job_id: str


class Processor:
    name = "processor"

    def __init__(self, db: Database) -> None:
        self.db = db
        self.inbox: Mailbox[JobQueued] = Mailbox(INBOX_SIZE)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wait for doorbells and process queued jobs until cancelled."""
        task_status.started()
        async for message in self.inbox.receive:
            # TODO(#3): take queued jobs FIFO from the database and encode them.
            LOGGER.info("job=%s queued; processing arrives with the upload issue", message.job_id)
