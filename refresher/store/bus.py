"""Notifications between the parts of the service, wherever they run: a job's events, a
job queued, a job to cancel. Publishing never waits.

Where one process owns the store (SQLite), the bus is that process's: a publish calls
every handler at once (`LocalBus`). Where several share it (PostgreSQL), it is the
database's `NOTIFY`/`LISTEN` (`refresher.store.postgres.PostgresBus`), and a publish
reaches every process that listens, its own included.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

LOGGER = logging.getLogger(__name__)

# The channels, and what their payloads are.
JOB_EVENTS = "job_events"  # a `JobEvent` as JSON
JOB_QUEUED = "job_queued"  # a job's id: work to claim
JOB_CANCEL = "job_cancel"  # a job's id: stop its encoders


class Bus(Protocol):
    def subscribe(self, channel: str, handler: Callable[[str], object]) -> None:
        """Call `handler(payload)` for every notification on `channel`; it must not wait."""
        ...

    def publish(self, channel: str, payload: str) -> None:
        """Notify `channel` of `payload`, without waiting."""
        ...


class LocalBus:
    """The bus of a process that owns its store: a publish calls its handlers at once."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Callable[[str], object]]] = {}

    def subscribe(self, channel: str, handler: Callable[[str], object]) -> None:
        self._handlers.setdefault(channel, []).append(handler)

    def publish(self, channel: str, payload: str) -> None:
        for handler in self._handlers.get(channel, []):
            try:
                handler(payload)
            except Exception:  # one handler's fault must not silence the others
                LOGGER.exception("a handler of %s failed", channel)
