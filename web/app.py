"""The Quart-Trio app: built from the running system's handles, serving API and page."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NoReturn

from quart import Response, g, request, send_from_directory
from quart.wrappers import BaseRequestWebsocket
from quart_trio import QuartTrio
from werkzeug.exceptions import BadHost, NotFound
from werkzeug.routing import MapAdapter

from refresher import metrics
from web.http import errors, patches
from web.http.bodies import BODY_LIMITS_KEY, refuse_large_header_block
from web.http.errors import ApiError
from web.routes import (
    all_events,
    auth,
    config_route,
    device,
    downloads,
    events,
    health,
    jobs,
    outputs,
    resumable,
    stills,
    uploads,
)
from web.state import EXTENSION_KEY, AppState

STATIC_DIR = Path(__file__).parent / "static"
CORS_ALLOW_HEADERS = (
    "Authorization, Content-Type, Range, If-Range, If-Match, Last-Event-ID, "
    "Tus-Resumable, Upload-Length, Upload-Metadata, Upload-Offset"
)
CORS_EXPOSE_HEADERS = (
    "Content-Length, Content-Range, Content-Disposition, ETag, Last-Modified, "
    "Location, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, Upload-Offset, "
    "Upload-Length, Upload-Expires"
)
# On every answer. The page is index.html, app.js and style.css, all from here, with no
# inline script, style or event handler: nothing else may run, load or frame it.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors, for browsers that predate it
    # Signed links carry a token in their query: never pass a URL on.
    "Referrer-Policy": "no-referrer",
}


class _HostRefused(MapAdapter):
    """The URL adapter of a request whose Host cannot be routed: every match is a 400."""

    def match(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise ApiError(400, "The Host header is not a host name this server can route.")


class _App(QuartTrio):
    def create_url_adapter(self, request: BaseRequestWebsocket | None) -> MapAdapter | None:
        # Quart binds the URL map to the Host header outside its error handling, so a Host
        # that IDNA cannot encode (a label over 63 characters) escaped as a bare 500.
        try:
            return super().create_url_adapter(request)
        except BadHost:
            return _HostRefused(self.url_map, "invalid", "/", None, "http", "/", "GET")


async def _send_static(name: str) -> Response:
    try:
        response = await send_from_directory(STATIC_DIR, name)
    except OSError:  # a name the file system refuses (too long): no such file either
        raise NotFound() from None
    if response.status_code == 412:  # Quart sends the whole file along with a 412
        raise ApiError(412, "This file has changed since the version named in If-Match.")
    return response


def create_app(app_state: AppState) -> QuartTrio:
    """Build the app around `app_state`; it holds no other state of its own."""
    app = _App(__name__, static_folder=None)
    patches.install(app)
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
    # Applied, like MAX_CONTENT_LENGTH, as the request arrives; every other route takes a
    # small body at most, refused with 413 even when chunked (`web.http.bodies`).
    app.config[BODY_LIMITS_KEY] = {
        "uploads.create_job": None,  # streamed to disk under limits of its own
        "device.create_device_job": None,  # ditto, its token checked before any byte
        "resumable.patch_upload": None,  # ditto
        "auth.login": auth.LOGIN_BODY,
    }
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION_KEY] = app_state
    errors.register(app)
    for blueprint in (
        auth.blueprint,
        health.blueprint,
        device.blueprint,  # before jobs: /api/jobs/device is no job id
        jobs.blueprint,
        uploads.blueprint,
        resumable.blueprint,
        events.blueprint,
        all_events.blueprint,
        downloads.blueprint,
        outputs.blueprint,
        config_route.blueprint,
        stills.blueprint,
    ):
        app.register_blueprint(blueprint)
    app.before_request(refuse_large_header_block)
    app.before_request(patches.receive_limited_body)

    @app.before_request
    async def start_clock() -> None:
        g.request_began = time.perf_counter()

    @app.after_request
    async def count_request(response: Response) -> Response:
        # The route's pattern, not its path: one series per route, whatever the ids.
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.HTTP_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        began = getattr(g, "request_began", None)
        if began is not None:
            metrics.HTTP_SECONDS.labels(route).observe(time.perf_counter() - began)
        return response

    @app.get("/")
    async def index() -> Response:
        return await _send_static("index.html")

    @app.get("/static/<path:name>")
    async def static_file(name: str) -> Response:
        return await _send_static(name)

    app.after_request(patches.close_if_body_unread)

    @app.after_request
    async def add_security_headers(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        # Tokens and jobs must not linger in any cache; answers with a caching policy of
        # their own (the download, the thumbnail, the page's files) keep it.
        if response.mimetype == "application/json" and "Cache-Control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.after_request
    async def add_cors_headers(response: Response) -> Response:
        origin = request.headers.get("Origin")
        allowed = config.cors_origins
        if origin and ("*" in allowed or origin.rstrip("/") in allowed):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
            response.headers["Access-Control-Allow-Methods"] = "GET, HEAD, POST, PATCH, DELETE"
            response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
            response.vary.add("Origin")
        return response

    return app
