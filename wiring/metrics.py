"""A process's Prometheus metrics and, for a process without the web app, its health:
served on `METRICS_PORT`, an internal port apart from the API's."""

from __future__ import annotations

import json
import logging
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client import make_asgi_app

from actors.runtime import Supervisor
from refresher import metrics
from refresher.config import Config
from refresher.storage.paths import Paths
from refresher.store import Database

LOGGER = logging.getLogger(__name__)


def bound(hypercorn_config: HypercornConfig, host: str, port: int) -> HypercornConfig:
    """`hypercorn_config` listening on `host:port`, logging through our setup (not a
    second stderr handler of Hypercorn's own), without a Server header."""
    shown = f"[{host}]" if ":" in host else host
    hypercorn_config.bind = [f"{shown}:{port}"]
    hypercorn_config.accesslog = None
    hypercorn_config.errorlog = logging.getLogger("hypercorn.error")
    hypercorn_config.include_server_header = False
    return hypercorn_config


async def serve_metrics(
    nursery: trio.Nursery,
    config: Config,
    db: Database,
    supervisor: Supervisor,
    role: str,
    shutdown: trio.Event,
) -> str:
    """Serve Prometheus metrics on `METRICS_PORT` until `shutdown`, keeping the gauges
    fresh, and `/health` (the actors' states: 200 when all run, else 503), for processes
    that serve no web app; return the URL to scrape."""
    paths = Paths(config.data_dir)

    async def refresh_gauges() -> None:
        while not shutdown.is_set():
            await db.read(
                lambda conn: metrics.refresh_gauges(conn, paths.root, config.storage_quota_bytes)
            )
            with trio.move_on_after(metrics.GAUGE_PERIOD_S):
                await shutdown.wait()

    hypercorn_config = bound(HypercornConfig(), config.host, config.metrics_port or 0)
    exposition = make_asgi_app(metrics.REGISTRY)

    async def health(send: Any) -> None:
        actors = {
            name: {"state": status.state, "restarts": status.restarts}
            for name, status in supervisor.status().items()
        }
        healthy = all(actor["state"] == "running" for actor in actors.values())
        body = json.dumps(
            {"status": "ok" if healthy else "degraded", "role": role, "actors": actors}
        ).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200 if healthy else 503,
                    "headers": headers})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/health":
            await health(send)
            return
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
