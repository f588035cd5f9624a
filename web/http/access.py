"""Who may call what: a session's bearer token, or a link signed for one thing."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from quart import request

from refresher.auth import tokens
from web.http.errors import ApiError
from web.state import state

P = ParamSpec("P")
R = TypeVar("R")

CHALLENGE = {"WWW-Authenticate": "Bearer"}
# Far above the ~200 characters of any token `refresher.auth.tokens` issues.
MAX_TOKEN_CHARS = 1024
INVALID_TOKEN = "That token is not valid; log in again."
LINK_EXPIRED = "This link has expired; reload the page for a fresh one."
LOGIN_TOKEN_IN_LINK = "A login token is not accepted in a link; use the Authorization header."


def require_login(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Let the request through only with a valid session bearer token; else 401."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        check_bearer()
        return await handler(*args, **kwargs)

    return wrapper


def check_bearer(*, also_scope: str | None = None) -> tokens.Token:
    """Accept a session bearer token and return it; raise a 401 `ApiError` otherwise.

    With `also_scope`, and no Authorization header, a `?token=` query parameter is
    accepted too, but only a token signed for exactly `also_scope` (a link to one thing).
    A login token in a URL is refused even when genuine: URLs land in logs and histories,
    and one there would open everything for a day. What is returned says when the
    access ends (a long-lived answer, an event stream, ends then).
    """
    scheme, _, header_token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and header_token.strip():
        return _verify_session(header_token.strip())
    if also_scope is not None and (query_token := request.args.get("token")):
        return _verify_link(query_token, also_scope)
    raise ApiError(401, "Log in first: this needs a bearer token.", headers=CHALLENGE)


def _readable(token: str) -> bool:
    # A token of ours is short ASCII; anything else is refused unread (non-ASCII would
    # also fail signing with UnicodeEncodeError, a 500).
    return len(token) <= MAX_TOKEN_CHARS and token.isascii()


def _as_session(token: str) -> tokens.Token:
    """Verify `token` as a login token; raise as `tokens.verify` does."""
    app_state = state()
    secret, now = app_state.credentials.signing_key, app_state.now()
    return tokens.verify(secret, token, scope=tokens.SESSION_SCOPE, now=now)


def _verify_session(token: str) -> tokens.Token:
    if not _readable(token):
        raise ApiError(401, INVALID_TOKEN, headers=CHALLENGE)
    try:
        return _as_session(token)
    except tokens.TokenExpired:
        raise ApiError(401, "Your session has expired; log in again.", headers=CHALLENGE) from None
    except tokens.TokenError:
        raise ApiError(401, INVALID_TOKEN, headers=CHALLENGE) from None


def _is_login_token(token: str) -> bool:
    """Whether `token` is a genuine login token, expired or not."""
    try:
        _as_session(token)
    except tokens.TokenExpired:
        return True
    except tokens.TokenError:
        return False
    return True


def _verify_link(token: str, scope: str) -> tokens.Token:
    if not _readable(token):
        raise ApiError(401, INVALID_TOKEN, headers=CHALLENGE)
    if _is_login_token(token):
        raise ApiError(401, LOGIN_TOKEN_IN_LINK, headers=CHALLENGE)
    app_state = state()
    try:
        return tokens.verify(
            app_state.credentials.signing_key, token, scope=scope, now=app_state.now()
        )
    except tokens.TokenExpired:
        raise ApiError(401, LINK_EXPIRED, headers=CHALLENGE) from None
    except tokens.TokenError:
        # Forged, or signed for something else (another job, purpose or variation).
        raise ApiError(401, INVALID_TOKEN, headers=CHALLENGE) from None
