"""`POST /api/auth`: login with the team's shared password, under a rate limit."""

from __future__ import annotations

import logging
import math

from quart import Blueprint, Response, jsonify, request

from refresher import timestamps
from refresher.auth import tokens
from web.http.bodies import BodyLimit, MalformedJSON, read_json
from web.http.errors import ApiError
from web.state import state

LOGGER = logging.getLogger(__name__)

# A password in JSON is tiny: past this the body is refused, chunked or not, and no more
# of it is kept (the app gives this route this limit).
LOGIN_BODY = BodyLimit(4096, "A login request is a small JSON object; this one is too large.")
SEND_JSON = 'Send JSON like {"password": "..."}'

MAX_CLIENT_KEY_CHARS = 64
blueprint = Blueprint("auth", __name__)


def client_address() -> str:
    """Who is logging in, as the login throttle counts them.

    Cut to MAX_CLIENT_KEY_CHARS: a proxy's header names one address (an IPv6 one is at
    most 45 characters), and the throttle remembers thousands of clients, so a forged
    header of kilobytes must not become a key of kilobytes.
    """
    header = state().config.client_ip_header
    if header:
        forwarded = request.headers.get(header, "").strip()
        if forwarded:
            return forwarded[:MAX_CLIENT_KEY_CHARS]
    return request.remote_addr or "unknown"


@blueprint.post("/api/auth")
async def login() -> Response:
    app_state = state()
    client = client_address()
    now = app_state.now()
    wait_s = app_state.login_throttle.retry_after_s(client, now)
    if wait_s > 0:
        raise ApiError(
            429,
            f"Too many wrong passwords; try again in {math.ceil(wait_s)} seconds.",
            headers={"Retry-After": str(math.ceil(wait_s))},
        )
    try:
        body = await read_json()
    except MalformedJSON as err:
        raise ApiError(400, f"{SEND_JSON}: {err}.") from None
    password = body.get("password") if isinstance(body, dict) else None
    if not isinstance(password, str) or not password:
        raise ApiError(400, f"{SEND_JSON}: the password is missing.")
    try:
        matches = app_state.credentials.password_matches(password)
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" is valid JSON): not the password
        matches = False
    if not matches:
        app_state.login_throttle.record_failure(client, now)
        LOGGER.info("failed login from %s", client)
        raise ApiError(401, "That password is not right.")
    app_state.login_throttle.record_success(client)
    token = tokens.issue(
        app_state.credentials.signing_key,
        scope=tokens.SESSION_SCOPE,
        now=now,
        ttl_s=tokens.SESSION_TTL_S,
    )
    return jsonify({"token": token.value, "expiresAt": timestamps.iso(token.expires_at)})
