"""Every error leaves the service as JSON `{"error": "<a sentence a person understands>"}`."""

from __future__ import annotations

import logging

from quart import Quart, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from refresher.storage.full import StorageFull

LOGGER = logging.getLogger(__name__)

STORAGE_FULL = (
    "The storage is full. Delete older jobs or wait until older results are removed, "
    "then try again."
)

# Werkzeug's default descriptions are written for HTML pages; these say what to do.
_MESSAGES = {
    400: "The request is malformed.",
    401: "Log in first: this needs a valid bearer token.",
    404: "There is nothing at {method} {path}.",
    405: "{method} is not allowed on {path}.",
    413: "The upload is larger than this server accepts.",
    415: "This kind of content is not accepted here.",
    429: "Too many requests; wait a little and try again.",
}


class ApiError(HTTPException):
    """An HTTP error with a message for the person; raise it anywhere in a handler."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(description=message)
        self.code = status
        self.extra_headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register(app: Quart) -> None:
    """Install handlers that turn every HTTP and unexpected error into JSON."""

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if isinstance(error, ApiError):
            return error_response(status, error.description or "", error.extra_headers)
        template = _MESSAGES.get(status)
        if template is not None:
            message = template.format(method=request.method, path=request.path)
        else:
            message = error.description or error.name
        headers: dict[str, str] = {}
        if status == 405 and getattr(error, "valid_methods", None):
            headers["Allow"] = ", ".join(error.valid_methods or [])  # type: ignore[attr-defined]
        return error_response(status, message, headers)

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Response:
        if isinstance(error, StorageFull):  # nothing was changed: the write rolled back
            LOGGER.warning("storage full on %s %s: %s", request.method, request.path, error)
            return error_response(507, STORAGE_FULL)
        LOGGER.error("unhandled error on %s %s", request.method, request.path, exc_info=error)
        return error_response(500, "Something went wrong on the server; it has been logged.")
