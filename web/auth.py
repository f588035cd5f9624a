"""`POST /api/auth`: login with the team's shared password, under a rate limit."""

from __future__ import annotations

import logging
import math

from quart import Blueprint, Response, jsonify, request

from refresher import timestamps, tokens
from web.errors import ApiError
from web.state import state

LOGGER = logging.getLogger(__name__)

SESSION_TTL_S = 24 * 3600
# A password in JSON is tiny; refuse large bodies before Quart buffers them whole.
MAX_LOGIN_BODY_BYTES = 4096

blueprint = Blueprint("auth", __name__)


def client_address() -> str:
    header = state().config.client_ip_header
    if header:
        forwarded = request.headers.get(header, "").strip()
        if forwarded:
            return forwarded
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
    if (request.content_length or 0) > MAX_LOGIN_BODY_BYTES:
        raise ApiError(413, "A login request is a small JSON object; this one is too large.")
    body = await request.get_json(force=True, silent=True)
    password = body.get("password") if isinstance(body, dict) else None
    if not isinstance(password, str) or not password:
        raise ApiError(400, 'Send JSON like {"password": "..."}: the password is missing.')
    if not app_state.credentials.password_matches(password):
        app_state.login_throttle.record_failure(client, now)
        LOGGER.info("failed login from %s", client)
        raise ApiError(401, "That password is not right.")
    app_state.login_throttle.record_success(client)
    token = tokens.issue(
        app_state.credentials.token_secret,
        scope=tokens.SESSION_SCOPE,
        now=now,
        ttl_s=SESSION_TTL_S,
    )
    return jsonify({"token": token.value, "expiresAt": timestamps.iso(token.expires_at)})
