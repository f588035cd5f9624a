"""Signed, expiring tokens: the bearer token of a login, and links signed for one thing.

A login's token goes in the Authorization header only. A link carries a token scoped to
exactly what it shows: one job's download, thumbnail or event stream, one variation, or
the stream of every job's events; a link never opens anything else.

A token is `v1.<payload>.<signature>`, both parts base64url without padding. The payload
is compact JSON `{"scope": ..., "exp": <unix seconds>}`; the signature is HMAC-SHA256
of `v1.<payload>` under the service's token secret. Verification compares signatures in
constant time before it reads the payload, so a forged token learns nothing, and takes
only the canonical spelling (no padding, nothing appended).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
from dataclasses import dataclass

VERSION = "v1"
# The scope of a login token: everything a logged-in person may do.
SESSION_SCOPE = "session"
SESSION_TTL_S = 24 * 3600
# The scope of a link to the one stream of every job's events (the page's live view).
EVENTS_SCOPE = "events"
# What a link to one job may open, each on its own: a download link shared with someone
# shows them neither the job's events nor anything of another job.
JOB_PURPOSES = ("download", "thumbnail", "events", "stills")


def job_scope(job_id: str, purpose: str) -> str:
    """The scope of a link to one job for one `purpose` (one of `JOB_PURPOSES`)."""
    if purpose not in JOB_PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(JOB_PURPOSES)}; got {purpose!r}")
    return f"{purpose}:{job_id}"


def output_scope(job_id: str, output_id: str) -> str:
    """The scope of a link to one variation of one job (its player and its download)."""
    return f"output:{job_id}:{output_id}"


def link_expiry(now: float, lifetime_s: float, bucket_s: float) -> int:
    """When a link minted at `now` expires: at least `lifetime_s` later, rounded up to the
    next whole `bucket_s` (unix time), so every link minted within one bucket is the same
    URL and a browser's cache of what it shows (a thumbnail, a video) keeps working."""
    if lifetime_s <= 0 or bucket_s <= 0:
        raise ValueError("lifetime_s and bucket_s must be > 0")
    return int(math.ceil((now + lifetime_s) / bucket_s) * bucket_s)


class TokenError(ValueError):
    """A token that must not be honoured; the message says why."""


class TokenExpired(TokenError):
    def __init__(self, expired_at: int) -> None:
        self.expired_at = expired_at
        super().__init__(f"token expired at {expired_at}")


@dataclass(frozen=True)
class Token:
    value: str
    scope: str
    expires_at: int


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, signed_part: str) -> bytes:
    return hmac.new(secret, signed_part.encode("ascii"), hashlib.sha256).digest()


def issue(secret: bytes, *, scope: str, now: float, ttl_s: float) -> Token:
    """Make a token for `scope` that expires `ttl_s` seconds after `now` (unix time)."""
    if ttl_s <= 0:
        raise ValueError("ttl_s must be > 0")
    return issue_until(secret, scope=scope, expires_at=int(now + ttl_s))


def issue_until(secret: bytes, *, scope: str, expires_at: int) -> Token:
    """Make a token for `scope` that expires at `expires_at` (unix seconds). The same
    arguments always give the same token."""
    if not secret:
        raise ValueError("secret must not be empty")
    payload = json.dumps({"scope": scope, "exp": expires_at}, separators=(",", ":"))
    signed_part = f"{VERSION}.{_b64encode(payload.encode())}"
    value = f"{signed_part}.{_b64encode(_sign(secret, signed_part))}"
    return Token(value=value, scope=scope, expires_at=expires_at)


def verify(secret: bytes, value: str, *, scope: str, now: float) -> Token:
    """Return the token if `value` was issued under `secret` for `scope` and is unexpired.

    Raise `TokenExpired` for a genuine but expired token, `TokenError` for anything else.
    """
    try:
        version, payload_b64, signature_b64 = value.split(".")
    except ValueError:
        raise TokenError("token is malformed") from None
    if version != VERSION:
        raise TokenError("token has an unknown version")
    try:
        signature = _b64decode(signature_b64)
    except (binascii.Error, ValueError):
        raise TokenError("token signature is malformed") from None
    # One spelling per token: base64 that decodes to the same bytes with padding, junk
    # or other trailing bits appended is not the token that was issued.
    if _b64encode(signature) != signature_b64:
        raise TokenError("token signature is not in canonical form")
    expected = _sign(secret, f"{version}.{payload_b64}")
    if not hmac.compare_digest(signature, expected):
        raise TokenError("token signature does not match")
    try:
        raw_payload = _b64decode(payload_b64)
        if _b64encode(raw_payload) != payload_b64:
            raise TokenError("token payload is not in canonical form")
        payload = json.loads(raw_payload)
        token_scope, expires_at = payload["scope"], payload["exp"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise TokenError("token payload is malformed") from None
    if not isinstance(token_scope, str) or not isinstance(expires_at, int):
        raise TokenError("token payload is malformed")
    # A scope built from a URL's path may hold anything, a lone surrogate too.
    if not hmac.compare_digest(
        token_scope.encode(errors="surrogatepass"), scope.encode(errors="surrogatepass")
    ):
        raise TokenError(f"token is not valid for {scope}")
    if now >= expires_at:
        raise TokenExpired(expires_at)
    return Token(value=value, scope=token_scope, expires_at=expires_at)
