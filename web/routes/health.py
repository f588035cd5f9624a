"""`GET /api/health`: is the service up, how full is its storage, how are its actors."""

from __future__ import annotations

from importlib import metadata

import trio
from quart import Blueprint, Response, jsonify

from refresher.storage.usage import read_volume, stored_bytes
from web.state import state

blueprint = Blueprint("health", __name__)


def service_version() -> str:
    try:
        return metadata.version("video-refresher")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@blueprint.get("/api/health")
async def health() -> tuple[Response, int]:
    app_state = state()
    actors = {
        name: {"state": status.state, "restarts": status.restarts}
        for name, status in app_state.supervisor.status().items()
    }
    healthy = all(actor["state"] == "running" for actor in actors.values())
    status = "stopping" if app_state.stopping.is_set() else ("ok" if healthy else "degraded")
    used = await app_state.db.read(stored_bytes)
    volume_used, volume_usable = await trio.to_thread.run_sync(read_volume, app_state.paths.root)
    body = {
        "status": status,
        "version": service_version(),
        "uptimeS": round(trio.current_time() - app_state.started_at, 3),
        "storage": {
            "usedBytes": used,
            "quotaBytes": app_state.config.storage_quota_bytes,
            "volumeFreeBytes": volume_usable - volume_used,
        },
        "actors": actors,
    }
    # 503 tells a load balancer or health check to look elsewhere while degraded.
    return jsonify(body), 200 if status == "ok" else 503
