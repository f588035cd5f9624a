"""The composition root: wires the store, the actors and the web app into one trio program.

`serve()` runs one nursery holding the supervisor (and through it every actor) and
Hypercorn serving the Quart-Trio app. Setting the `shutdown` event drains gracefully:
Hypercorn stops accepting and gives running requests (downloads) up to
`config.shutdown_grace_s` to finish, then the actors are cancelled and the database
closed. `run()` adds the process's edge: SIGTERM/SIGINT set that event, a second signal
stops at once.

A process plays a `Role`. By default it plays them all, on either store. Where several
processes share a PostgreSQL store (`DATABASE_URL`), each may play one:

| actor | all | web | worker |
|---|---|---|---|
| the web app (API, page, downloads) | yes | yes | |
| event hub (the streams' events) | yes | yes | |
| download tracker (leases, reservations) | yes | yes | yes |
| evictor (room for uploads and encodes) | yes | yes | yes |
| janitor | yes | yes | |
| processor (encoding, measuring) | yes | | yes |
| bus (PostgreSQL's notifications) | shared store | yes | yes |

Events and notices between the processes go through the bus: a worker's progress to
every web process's streams, an upload's job to the workers, a cancel to the worker
holding the job.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from actors.download_tracker import DownloadTracker
from actors.events import EventHub
from actors.evictor import Evictor
from actors.janitor import Janitor
from actors.processor import CancelJob, JobQueued, Processor
from actors.runtime import BACKOFF_MAX_S, MAX_RESTARTS, Supervisor
from refresher import metrics
from refresher.auth import credentials as credentials_store
from refresher.config import Config
from refresher.jobs.events import JobEvent, Publish
from refresher.jobs.lifecycle import Lifecycle
from refresher.jobs.transitions import RemovalReason
from refresher.media.ffmpeg import find_ffmpeg
from refresher.storage import reconcile
from refresher.storage.blobs import BlobStore, LocalBlobs
from refresher.storage.full import keep_ballast
from refresher.storage.paths import Paths
from refresher.store import Database
from refresher.store.bus import JOB_CANCEL, JOB_EVENTS, JOB_QUEUED, Bus, LocalBus
from refresher.store.postgres import PostgresBus
from refresher.uploads import records as upload_records
from web.app import create_app
from web.http import lease
from web.http.patches import ServerConfig, install_paced_server, tune_reads
from web.http.slots import StreamSlots
from web.state import AppState
from wiring.metrics import bound, serve_metrics

LOGGER = logging.getLogger(__name__)

# Closing the database waits for running queries; none takes near this long.
DB_CLOSE_TIMEOUT_S = 10.0


class Role(StrEnum):
    """What a process of the service does (see the table above)."""

    ALL = "all"
    WEB = "web"
    WORKER = "worker"

    @property
    def serves_web(self) -> bool:
        return self is not Role.WORKER

    @property
    def works(self) -> bool:
        return self is not Role.WEB


class NeedsSharedStore(ValueError):
    def __init__(self, role: Role) -> None:
        super().__init__(
            f"a {role} process works beside others: set DATABASE_URL to the PostgreSQL "
            "database they share (only `serve` alone runs on the SQLite default)"
        )


@dataclass(frozen=True)
class RunningService:
    """What `serve()` reports once it accepts connections (a worker: once it works)."""

    # Empty for a worker, which serves no web app.
    urls: list[str]
    # None for a worker.
    state: AppState | None
    supervisor: Supervisor
    db: Database
    # Where Prometheus scrapes (`METRICS_PORT`), and `/health` answers; None when not served.
    metrics_url: str | None = None

    @property
    def url(self) -> str:
        return self.urls[0]


def _hypercorn_config(config: Config) -> HypercornConfig:
    hypercorn_config = lease.limit_clients(ServerConfig(), config)
    hypercorn_config.graceful_timeout = config.shutdown_grace_s
    return bound(hypercorn_config, config.host, config.port)


async def serve(
    config: Config,
    *,
    shutdown: trio.Event,
    role: Role = Role.ALL,
    now: Callable[[], float] = time.time,
    restart_limit: int = MAX_RESTARTS,
    restart_backoff_max_s: float = BACKOFF_MAX_S,
    task_status: trio.TaskStatus[RunningService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the service in `role` until `shutdown` is set (graceful) or the call is cancelled.

    `restart_limit` (restarts of one actor within a minute past which the service gives
    up) and `restart_backoff_max_s` (the longest wait before a restart) are the restart
    policy; chaos tests raise the one and lower the other to kill actors far more often.

    Reports a `RunningService` once it accepts connections (a worker: once its actors
    run). Raises `actors.runtime.SupervisorGaveUp` (in an exception group) when an actor
    keeps dying, and `NeedsSharedStore` for a web or worker process without DATABASE_URL.
    """
    if role is not Role.ALL and config.database_url is None:
        raise NeedsSharedStore(role)
    paths = Paths(config.data_dir)
    await trio.to_thread.run_sync(paths.create)
    if role.serves_web:
        tune_reads()
        install_paced_server()
    db = await Database.open(config.database_url or paths.database)
    try:
        await _run(
            config, role, db, paths, shutdown=shutdown, now=now, restart_limit=restart_limit,
            restart_backoff_max_s=restart_backoff_max_s, task_status=task_status,
        )  # fmt: skip
    finally:
        with trio.move_on_after(DB_CLOSE_TIMEOUT_S) as cleanup:
            cleanup.shield = True
            await db.aclose()
    LOGGER.info("stopped")


async def open_blobs(config: Config, paths: Paths) -> BlobStore:
    """Where the jobs' bytes live: the data directory, or the bucket of STORAGE_URL (checked
    now, so a wrong endpoint, bucket or key stops the start with a sentence)."""
    if config.storage_url is None:
        return LocalBlobs(paths)
    from refresher.storage.s3 import S3Blobs  # AWS's client only where a bucket is used

    blobs = S3Blobs.from_environment(paths, config.storage_url, os.environ)
    await trio.to_thread.run_sync(blobs.check)
    LOGGER.info("results kept in %s; %s is scratch space", config.storage_url, paths.root)
    return blobs


async def adopt_local_files(db: Database, blobs: BlobStore, paths: Paths) -> None:
    """Move into the bucket what an earlier run kept on this volume (before STORAGE_URL)."""
    if not blobs.remote:
        return
    named = await db.read(reconcile.named_paths)
    adopted = await trio.to_thread.run_sync(reconcile.adopt_local_files, blobs, paths, named)
    if adopted:
        LOGGER.warning("moved %d files kept on this volume into the bucket", adopted)


async def _run(
    config: Config,
    role: Role,
    db: Database,
    paths: Paths,
    *,
    shutdown: trio.Event,
    now: Callable[[], float],
    restart_limit: int,
    restart_backoff_max_s: float,
    task_status: trio.TaskStatus[RunningService],
) -> None:
    if not await trio.to_thread.run_sync(keep_ballast, paths.ballast):
        LOGGER.warning("the volume is nearly full: no room held back for removals yet")
    events = EventHub()
    bus: Bus
    publish: Publish
    actors: list[Any] = []
    if db.shared:
        assert config.database_url is not None
        bus = postgres_bus = PostgresBus(config.database_url, db.backend.engine)
        actors.append(postgres_bus)

        def publish(event: JobEvent) -> None:
            postgres_bus.publish(JOB_EVENTS, event.as_json())

        if role.serves_web:
            bus.subscribe(JOB_EVENTS, lambda payload: events.publish(JobEvent.from_json(payload)))
    else:
        bus, publish = LocalBus(), events.publish
        # The sole process: no PATCH of an earlier run still writes an upload.
        await db.write(upload_records.drop_holds)
    blobs = await open_blobs(config, paths)
    await adopt_local_files(db, blobs, paths)
    lifecycle = Lifecycle(
        db, paths, now=now, ttl_s=config.job_ttl_s, publish=publish, bus=bus, blobs=blobs
    )
    tracker = DownloadTracker(db, now=now, ballast=paths.ballast, ttl_s=config.download_stall_s)
    evictor = Evictor(
        lifecycle,
        tracker,
        quota_bytes=config.storage_quota_bytes,
        high=config.evict_high,
        low=config.evict_low,
    )
    if role.serves_web:
        actors.append(events)
    actors.append(tracker)
    if role.works:
        ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, config.ffmpeg)
        LOGGER.info("using FFmpeg at %s", ffmpeg)
        processor = Processor(
            lifecycle,
            ffmpeg=ffmpeg,
            threads=config.ffmpeg_threads,
            request_room=evictor.request_room,
            limits=config.media_limits,
            claim_ttl_s=config.claim_ttl_s,
            queue_order=config.queue_order,
        )
        bus.subscribe(JOB_QUEUED, lambda job_id: processor.inbox.post(JobQueued(job_id)))
        bus.subscribe(JOB_CANCEL, lambda job_id: processor.inbox.post(CancelJob(job_id)))
        actors.append(processor)
    if role.serves_web:
        actors.append(
            Janitor(
                lifecycle,
                tracker,
                interval_s=config.janitor_interval_s,
                orphan_grace_s=config.orphan_grace_s,
                # Where other processes share the data, an old file may be theirs.
                process_started=None if db.shared else time.time(),
            )
        )
    actors.append(evictor)
    supervisor = Supervisor(actors, max_restarts=restart_limit, backoff_max_s=restart_backoff_max_s)
    metrics.start_at_zero(
        [actor.name for actor in actors], [reason.value for reason in RemovalReason]
    )
    # Nurseries nested by lifetime: the actors outlive the server, so requests being
    # drained can still reach them.
    async with trio.open_nursery() as actors_nursery:
        await actors_nursery.start(supervisor.run)
        async with trio.open_nursery() as server_nursery:
            metrics_url = None
            if config.metrics_port is not None:
                metrics_url = await serve_metrics(
                    server_nursery, config, db, supervisor, role, shutdown
                )
            if not role.serves_web:
                LOGGER.info("worker running: claiming work from the shared store")
                task_status.started(RunningService([], None, supervisor, db, metrics_url))
                await shutdown.wait()
                LOGGER.info("shutting down: stopping the work under way")
            else:
                await _serve_web(
                    server_nursery, config, db, paths, supervisor, lifecycle, events, tracker,
                    evictor, now=now, shutdown=shutdown, metrics_url=metrics_url,
                    task_status=task_status,
                )  # fmt: skip
        # Hypercorn returns once its drain is over; now stop the actors.
        actors_nursery.cancel_scope.cancel()


async def _serve_web(
    nursery: trio.Nursery,
    config: Config,
    db: Database,
    paths: Paths,
    supervisor: Supervisor,
    lifecycle: Lifecycle,
    events: EventHub,
    tracker: DownloadTracker,
    evictor: Evictor,
    *,
    now: Callable[[], float],
    shutdown: trio.Event,
    metrics_url: str | None,
    task_status: trio.TaskStatus[RunningService],
) -> None:
    """Serve the web app until `shutdown`, then drain its requests."""
    if db.shared:
        credentials = await db.write(
            lambda conn: credentials_store.load_shared(
                conn, password=config.auth_password, token_secret=config.token_secret
            )
        )
    else:
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
        now=now,
        started_at=trio.current_time(),
        streams=StreamSlots(
            per_key=config.max_event_streams_per_link, total=config.max_event_streams
        ),
    )
    app = create_app(app_state)

    async def shutdown_requested() -> None:
        await shutdown.wait()
        app_state.stopping.set()
        LOGGER.info("shutting down: draining requests for up to %g s", config.shutdown_grace_s)

    urls = await nursery.start(
        lambda task_status: hypercorn_serve(
            app,
            _hypercorn_config(config),
            shutdown_trigger=shutdown_requested,
            task_status=task_status,
        )
    )
    LOGGER.info("listening on %s", ", ".join(urls))
    task_status.started(RunningService(urls, app_state, supervisor, db, metrics_url))


async def run(config: Config, role: Role = Role.ALL) -> None:
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
            await serve(config, shutdown=shutdown, role=role)
            nursery.cancel_scope.cancel()
