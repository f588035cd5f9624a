"""The running system's handles, as the web app sees them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from quart import current_app

from actors.download_tracker import DownloadTracker
from actors.events import EventHub
from actors.evictor import Evictor
from actors.runtime import Supervisor
from refresher.auth.credentials import Credentials
from refresher.config import Config
from refresher.jobs.lifecycle import Lifecycle
from refresher.media.probe import PROBES_AT_ONCE
from refresher.storage.paths import Paths
from refresher.store import Database
from web.http.slots import StreamSlots
from web.http.throttle import LoginThrottle

EXTENSION_KEY = "video_refresher"
# Multipart framing and the `variations` field on top of the files themselves.
FORM_OVERHEAD_BYTES = 1024 * 1024


@dataclass
class AppState:
    config: Config
    paths: Paths
    db: Database
    credentials: Credentials
    supervisor: Supervisor
    events: EventHub
    tracker: DownloadTracker
    evictor: Evictor
    # Every change of a job's status: its write, its event, its metric, its notice to
    # the workers.
    lifecycle: Lifecycle
    # Wall clock (unix seconds); injected so tests can move time.
    now: Callable[[], float]
    # Monotonic time the service started, from trio.current_time().
    started_at: float
    # Open event streams, counted by what opened them and in all.
    streams: StreamSlots
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
    # Set when a graceful shutdown begins: long-lived answers (event streams) end then.
    stopping: trio.Event = field(default_factory=trio.Event)
    # Uploads' probes take turns (each may hold a decoded frame of the largest size).
    probes: trio.CapacityLimiter = field(
        default_factory=lambda: trio.CapacityLimiter(PROBES_AT_ONCE)
    )

    @property
    def max_body_bytes(self) -> int:
        return self.config.max_files * self.config.max_upload_bytes + FORM_OVERHEAD_BYTES


def state() -> AppState:
    """The state of the app serving the current request."""
    app_state: AppState = current_app.extensions[EXTENSION_KEY]
    return app_state
