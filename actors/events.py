"""The event hub: fans progress and status events out to live subscribers (SSE streams).

Publishers never wait: `publish` drops an event when the hub's inbox is full, and the hub
drops a subscriber whose own buffer is full instead of waiting for it. A dropped
subscriber sees its channel end and reconnects (browsers' EventSource does so by itself),
reading the current state from the database, so nothing is lost that matters.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from actors.runtime import Mailbox
from refresher.jobs.events import JobEvent

LOGGER = logging.getLogger(__name__)

# Events a burst may queue before publishers start dropping; the processor publishes at
# most a few per second per file, so this is minutes of slack for a stuck hub.
INBOX_SIZE = 1024
# Events one subscriber may lag behind before it is dropped.
SUBSCRIBER_BUFFER = 64


class EventHub:
    name = "events"

    def __init__(self) -> None:
        self.inbox: Mailbox[JobEvent] = Mailbox(INBOX_SIZE)
        # Owned by the hub object, not by one run, so subscribers survive a hub restart.
        self._subscribers: dict[trio.MemorySendChannel[JobEvent], str | None] = {}

    def publish(self, event: JobEvent) -> None:
        """Queue `event` for fan-out without waiting; drop it if the hub is swamped."""
        if not self.inbox.post(event):
            LOGGER.warning(
                "event hub inbox full; dropped %s event of job=%s", event.kind, event.job_id
            )

    @asynccontextmanager
    async def subscribe(
        self, job_id: str | None = None
    ) -> AsyncIterator[trio.MemoryReceiveChannel[JobEvent]]:
        """Receive events (of `job_id` only, if given) while the context is open.

        The channel ends early if this subscriber falls too far behind.
        """
        send, receive = trio.open_memory_channel[JobEvent](SUBSCRIBER_BUFFER)
        self._subscribers[send] = job_id
        try:
            async with receive:
                yield receive
        finally:
            self._subscribers.pop(send, None)
            send.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fan events out until cancelled."""
        task_status.started()
        async for event in self.inbox.receive:
            for send, job_filter in list(self._subscribers.items()):
                if job_filter is not None and job_filter != event.job_id:
                    continue
                try:
                    send.send_nowait(event)
                except trio.WouldBlock:
                    LOGGER.info("dropping a slow subscriber of job=%s", job_filter)
                    self._subscribers.pop(send, None)
                    send.close()
                except trio.BrokenResourceError:
                    self._subscribers.pop(send, None)
