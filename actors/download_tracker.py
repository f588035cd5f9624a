"""The download tracker: leases that keep a job's files alive while a download reads them."""

from __future__ import annotations

import logging

import trio

from actors.runtime import Mailbox

LOGGER = logging.getLogger(__name__)

INBOX_SIZE = 64


class DownloadTracker:
    name = "download_tracker"

    def __init__(self) -> None:
        self.inbox: Mailbox[object] = Mailbox(INBOX_SIZE)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve lease requests until cancelled."""
        task_status.started()
        async for _message in self.inbox.receive:
            # TODO(#4): acquire/release leases and reserve jobs for deletion.
            pass
