"""The Quart-Trio app: built from the running system's handles, serving API and page."""

from __future__ import annotations

from pathlib import Path

from quart import Response, request, send_from_directory
from quart_trio import QuartTrio

from web import auth, downloads, errors, events, health, jobs, uploads
from web.backpressure import BoundedRequest
from web.closing import ClosingHTTPConnection
from web.state import EXTENSION_KEY, AppState

STATIC_DIR = Path(__file__).parent / "static"
CORS_ALLOW_HEADERS = "Authorization, Content-Type, Range, If-Range, If-Match, Last-Event-ID"
CORS_EXPOSE_HEADERS = "Content-Length, Content-Range, Content-Disposition, ETag, Last-Modified"


def create_app(app_state: AppState) -> QuartTrio:
    """Build the app around `app_state`; it holds no other state of its own."""
    app = QuartTrio(__name__, static_folder=None)
    app.request_class = BoundedRequest
    app.asgi_http_class = ClosingHTTPConnection
    config = app_state.config
    app.config.update(
        # Quart cuts responses and request bodies after 60 s by default: a download or
        # upload of a large creative would be silently truncated.
        RESPONSE_TIMEOUT=None,
        BODY_TIMEOUT=None,
        # Read when the request object is built, so it must be set here, not per route;
        # the per-file limit is enforced while the upload streams.
        MAX_CONTENT_LENGTH=app_state.max_body_bytes,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION_KEY] = app_state
    errors.register(app)
    for blueprint in (
        auth.blueprint,
        health.blueprint,
        jobs.blueprint,
        uploads.blueprint,
        events.blueprint,
        downloads.blueprint,
    ):
        app.register_blueprint(blueprint)

    @app.get("/")
    async def index() -> Response:
        return await send_from_directory(STATIC_DIR, "index.html")

    @app.get("/static/<path:name>")
    async def static_file(name: str) -> Response:
        return await send_from_directory(STATIC_DIR, name)

    @app.after_request
    async def add_cors_headers(response: Response) -> Response:
        origin = request.headers.get("Origin")
        allowed = config.cors_origins
        if origin and ("*" in allowed or origin.rstrip("/") in allowed):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
            response.headers["Access-Control-Allow-Methods"] = "GET, HEAD, POST, DELETE"
            response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
            response.vary.add("Origin")
        return response

    return app
