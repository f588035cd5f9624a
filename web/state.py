"""The running system's handles, as the web app sees them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from quart import current_app

from actors.events import EventHub
from actors.processor import JobQueued
from actors.runtime import Mailbox, Supervisor
from refresher.config import Config
from refresher.credentials import Credentials
from refresher.db import Database
from refresher.storage import Paths
from web.auth_throttle import LoginThrottle

EXTENSION_KEY = "video_refresher"


@dataclass
class AppState:
    config: Config
    paths: Paths
    db: Database
    credentials: Credentials
    supervisor: Supervisor
    events: EventHub
    processor_inbox: Mailbox[JobQueued]
    # Wall clock (unix seconds); injected so tests can move time.
    now: Callable[[], float]
    # Monotonic time the service started, from trio.current_time().
    started_at: float
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
    stopping: bool = False


def state() -> AppState:
    """The state of the app serving the current request."""
    app_state: AppState = current_app.extensions[EXTENSION_KEY]
    return app_state
