"""Who may call what: a session's bearer token, or a link signed for one job."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from quart import request

from refresher import tokens
from web.errors import ApiError
from web.state import state

P = ParamSpec("P")
R = TypeVar("R")

CHALLENGE = {"WWW-Authenticate": "Bearer"}
# Far above the ~140 characters of any token `refresher.tokens` issues.
MAX_TOKEN_CHARS = 1024


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
    # A token of ours is short ASCII; anything else is refused unread (non-ASCII would
    # also fail signing with UnicodeEncodeError, a 500).
    if len(token) <= MAX_TOKEN_CHARS and token.isascii():
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
