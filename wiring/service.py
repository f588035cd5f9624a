"""The composition root: wires the store, the actors and the web app into one trio program.

`serve()` runs one nursery holding the supervisor (and through it every actor) and
Hypercorn serving the Quart-Trio app. Setting the `shutdown` event drains gracefully:
Hypercorn stops accepting and gives running requests (downloads) up to
`config.shutdown_grace_s` to finish, then the actors are cancelled and the database
closed. `run()` adds the process's edge: SIGTERM/SIGINT set that event, a second signal
stops at once.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client import make_asgi_app

from actors.download_tracker import DownloadTracker
from actors.events import EventHub
from actors.evictor import Evictor
from actors.janitor import Janitor
from actors.processor import Processor
from actors.runtime import BACKOFF_MAX_S, MAX_RESTARTS, Supervisor
from refresher import metrics
from refresher.auth import credentials as credentials_store
from refresher.config import Config
from refresher.db import Database
from refresher.jobs.lifecycle import Lifecycle
from refresher.media.ffmpeg import find_ffmpeg
from refresher.storage.full import keep_ballast
from refresher.storage.paths import Paths
from web.app import create_app
from web.http import lease
from web.http.patches import ServerConfig, install_paced_server, tune_reads
from web.http.slots import StreamSlots
from web.state import AppState

LOGGER = logging.getLogger(__name__)

# Closing the database waits for running queries; none takes near this long.
DB_CLOSE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RunningService:
    """What `serve()` reports once it accepts connections."""

    urls: list[str]
    state: AppState
    # Where Prometheus scrapes (`METRICS_PORT`); None when not served.
    metrics_url: str | None = None

    @property
    def url(self) -> str:
        return self.urls[0]


def _bound(hypercorn_config: HypercornConfig, host: str, port: int) -> HypercornConfig:
    """`hypercorn_config` listening on `host:port`, logging through our setup (not a
    second stderr handler of Hypercorn's own), without a Server header."""
    shown = f"[{host}]" if ":" in host else host
    hypercorn_config.bind = [f"{shown}:{port}"]
    hypercorn_config.accesslog = None
    hypercorn_config.errorlog = logging.getLogger("hypercorn.error")
    hypercorn_config.include_server_header = False
    return hypercorn_config


def _hypercorn_config(config: Config) -> HypercornConfig:
    hypercorn_config = lease.limit_clients(ServerConfig(), config)
    hypercorn_config.graceful_timeout = config.shutdown_grace_s
    return _bound(hypercorn_config, config.host, config.port)


async def serve(
    config: Config,
    *,
    shutdown: trio.Event,
    now: Callable[[], float] = time.time,
    restart_limit: int = MAX_RESTARTS,
    restart_backoff_max_s: float = BACKOFF_MAX_S,
    task_status: trio.TaskStatus[RunningService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the service until `shutdown` is set (graceful) or the call is cancelled.

    `restart_limit` (restarts of one actor within a minute past which the service gives
    up) and `restart_backoff_max_s` (the longest wait before a restart) are the restart
    policy; chaos tests raise the one and lower the other to kill actors far more often.

    Reports a `RunningService` once it accepts connections. Raises
    `actors.runtime.SupervisorGaveUp` (in an exception group) when an actor keeps dying.
    """
    paths = Paths(config.data_dir)
    await trio.to_thread.run_sync(paths.create)
    tune_reads()
    install_paced_server()
    credentials = await trio.to_thread.run_sync(
        lambda: credentials_store.load(
            paths, password=config.auth_password, token_secret=config.token_secret
        )
    )
    if config.auth_password is None:
        LOGGER.warning(
            "login password: %s (kept in %s; set AUTH_PASSWORD to choose your own)",
            credentials.password,
            credentials.password_source,
        )
    ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, config.ffmpeg)
    LOGGER.info("using FFmpeg at %s", ffmpeg)
    db = await Database.open(paths.database)
    if not await trio.to_thread.run_sync(keep_ballast, paths.ballast):
        LOGGER.warning("the volume is nearly full: no room held back for removals yet")
    try:
        events = EventHub()
        lifecycle = Lifecycle(db, paths, now=now, ttl_s=config.job_ttl_s, publish=events.publish)
        tracker = DownloadTracker(db, now=now, ballast=paths.ballast)
        evictor = Evictor(
            lifecycle,
            tracker,
            quota_bytes=config.storage_quota_bytes,
            high=config.evict_high,
            low=config.evict_low,
        )
        processor = Processor(
            lifecycle,
            ffmpeg=ffmpeg,
            threads=config.ffmpeg_threads,
            request_room=evictor.request_room,
            limits=config.media_limits,
        )
        supervisor = Supervisor(
            [
                events,
                tracker,
                processor,
                Janitor(
                    lifecycle,
                    tracker,
                    interval_s=config.janitor_interval_s,
                    process_started=time.time(),
                ),
                evictor,
            ],
            max_restarts=restart_limit,
            backoff_max_s=restart_backoff_max_s,
        )
        app_state = AppState(
            config=config,
            paths=paths,
            db=db,
            credentials=credentials,
            supervisor=supervisor,
            events=events,
            tracker=tracker,
            evictor=evictor,
            lifecycle=lifecycle,
            processor_inbox=processor.inbox,
            now=now,
            started_at=trio.current_time(),
            streams=StreamSlots(
                per_key=config.max_event_streams_per_link, total=config.max_event_streams
            ),
        )
        app = create_app(app_state)
        # Nurseries nested by lifetime: the actors outlive the server, so requests being
        # drained can still reach them.
        async with trio.open_nursery() as actors_nursery:
            await actors_nursery.start(supervisor.run)

            async def shutdown_requested() -> None:
                await shutdown.wait()
                app_state.stopping.set()
                LOGGER.info(
                    "shutting down: draining requests for up to %g s", config.shutdown_grace_s
                )

            async with trio.open_nursery() as server_nursery:
                metrics_url = None
                if config.metrics_port is not None:
                    metrics_url = await _serve_metrics(
                        server_nursery, config, config.metrics_port, db, shutdown
                    )
                urls = await server_nursery.start(
                    lambda task_status: hypercorn_serve(
                        app,
                        _hypercorn_config(config),
                        shutdown_trigger=shutdown_requested,
                        task_status=task_status,
                    )
                )
                LOGGER.info("listening on %s", ", ".join(urls))
                task_status.started(
                    RunningService(urls=urls, state=app_state, metrics_url=metrics_url)
                )
            # Hypercorn returns once its drain is over; now stop the actors.
            actors_nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(DB_CLOSE_TIMEOUT_S) as cleanup:
            cleanup.shield = True
            await db.aclose()
    LOGGER.info("stopped")


async def _serve_metrics(
    nursery: trio.Nursery, config: Config, port: int, db: Database, shutdown: trio.Event
) -> str:
    """Serve Prometheus metrics on `port` (`METRICS_PORT`) until `shutdown`, keeping the gauges
    fresh; return the URL to scrape."""
    paths = Paths(config.data_dir)

    async def refresh_gauges() -> None:
        while not shutdown.is_set():
            await db.read(
                lambda conn: metrics.refresh_gauges(conn, paths.root, config.storage_quota_bytes)
            )
            with trio.move_on_after(metrics.GAUGE_PERIOD_S):
                await shutdown.wait()

    hypercorn_config = _bound(HypercornConfig(), config.host, port)
    exposition = make_asgi_app(metrics.REGISTRY)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await exposition(scope, receive, send)
            return
        # Nothing to start or stop; answered, so Hypercorn does not warn of its absence.
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})

    urls: list[str] = await nursery.start(
        lambda task_status: hypercorn_serve(
            app,
            hypercorn_config,
            shutdown_trigger=shutdown.wait,
            mode="asgi",
            task_status=task_status,
        )
    )
    nursery.start_soon(refresh_gauges)
    LOGGER.info("metrics on %s/metrics", urls[0])
    return f"{urls[0]}/metrics"


async def run(config: Config) -> None:
    """Serve until SIGTERM or SIGINT (graceful), or a second such signal (immediate)."""
    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    if shutdown.is_set():
                        LOGGER.warning("second %s: stopping now", signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        return
                    LOGGER.info("%s received", signal.Signals(signum).name)
                    shutdown.set()

            nursery.start_soon(watch_signals)
            await serve(config, shutdown=shutdown)
            nursery.cancel_scope.cancel()
