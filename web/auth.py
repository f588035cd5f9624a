"""Login with the team's shared password, bearer tokens, and a login rate limit."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar

from quart import Blueprint, Response, jsonify, request

from refresher import tokens
from refresher.db import utc_iso
from web.errors import ApiError
from web.state import state

LOGGER = logging.getLogger(__name__)

SESSION_TTL_S = 24 * 3600
# A password in JSON is tiny; refuse large bodies before Quart buffers them whole.
MAX_LOGIN_BODY_BYTES = 4096
P = ParamSpec("P")
R = TypeVar("R")

CHALLENGE = {"WWW-Authenticate": "Bearer"}

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
    expires_at = utc_iso(datetime.fromtimestamp(token.expires_at, UTC))
    return jsonify({"token": token.value, "expiresAt": expires_at})


def require_login(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Let the request through only with a valid session bearer token; else 401."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        check_bearer()
        return await handler(*args, **kwargs)

    return wrapper


def check_bearer(*, also_scope: str | None = None) -> None:
    """Accept a session bearer token; raise a 401 `ApiError` otherwise.

    With `also_scope`, a `?token=` query parameter is accepted too: a session token (a
    browser's EventSource or download manager cannot send headers) or a token signed for
    `also_scope` alone (a job's signed link).
    """
    scheme, _, header_token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and header_token.strip():
        _verify(header_token.strip(), (tokens.SESSION_SCOPE,))
    elif also_scope is not None and (query_token := request.args.get("token")):
        _verify(query_token, (tokens.SESSION_SCOPE, also_scope))
    else:
        raise ApiError(401, "Log in first: this needs a bearer token.", headers=CHALLENGE)


def _verify(token: str, scopes: tuple[str, ...]) -> None:
    app_state = state()
    for scope in scopes:
        try:
            tokens.verify(
                app_state.credentials.token_secret, token, scope=scope, now=app_state.now()
            )
        except tokens.TokenExpired:
            raise ApiError(
                401, "Your session has expired; log in again.", headers=CHALLENGE
            ) from None
        except tokens.TokenError:
            continue
        return
    raise ApiError(401, "That token is not valid; log in again.", headers=CHALLENGE)
