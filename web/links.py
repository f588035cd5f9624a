"""Signed links: the URLs the API hands out, each with a token for what it shows alone.

A link works without a header (an `<img>`, a `<video>`, an `EventSource`, a download
manager), so it carries a token scoped to one job and one purpose, or to one variation
(`refresher.auth.tokens`); never a login token. Links shown on the page are short-lived and
expire at the end of a whole bucket, so the same URL comes back throughout the bucket and
a browser's cache of a thumbnail or a video keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass

from refresher import timestamps
from refresher.auth import tokens
from web.state import AppState

# A thumbnail or player link lasts 1 to 2 hours: minted for an hour, expiring at the next
# whole hour, so a page open for a while shows the same URLs (and cached images) until
# its next refresh brings new ones.
MEDIA_LINK_S = 3600.0
MEDIA_BUCKET_S = 3600.0
# An event stream's link lasts `EVENTS_LINK_TTL_S` (10 minutes by default) and up to a
# minute more, to the end of the minute; the stream it opens ends with it.
EVENTS_BUCKET_S = 60.0


@dataclass(frozen=True)
class Link:
    url: str
    expires_at: int  # unix seconds

    @property
    def expires_at_iso(self) -> str:
        return timestamps.iso(self.expires_at)


def _token(app_state: AppState, scope: str, lifetime_s: float, bucket_s: float) -> str:
    expires_at = tokens.link_expiry(app_state.now(), lifetime_s, bucket_s)
    secret = app_state.credentials.signing_key
    return tokens.issue_until(secret, scope=scope, expires_at=expires_at).value


def thumbnail_url(app_state: AppState, job_id: str) -> str:
    scope = tokens.job_scope(job_id, "thumbnail")
    token = _token(app_state, scope, MEDIA_LINK_S, MEDIA_BUCKET_S)
    return f"/api/jobs/{job_id}/thumbnail?token={token}"


def still_url(app_state: AppState, job_id: str, name: str) -> str:
    """The link to one comparison still of a job (`source-<file id>` or an output's id);
    every still of a job shares the token."""
    scope = tokens.job_scope(job_id, "stills")
    token = _token(app_state, scope, MEDIA_LINK_S, MEDIA_BUCKET_S)
    return f"/api/jobs/{job_id}/stills/{name}?token={token}"


def _events_expiry(app_state: AppState) -> int:
    lifetime_s = app_state.config.events_link_ttl_s
    return tokens.link_expiry(app_state.now(), lifetime_s, min(EVENTS_BUCKET_S, lifetime_s))


def job_events_url(app_state: AppState, job_id: str) -> str:
    scope = tokens.job_scope(job_id, "events")
    token = tokens.issue_until(
        app_state.credentials.signing_key, scope=scope, expires_at=_events_expiry(app_state)
    )
    return f"/api/jobs/{job_id}/events?token={token.value}"


def output_url(app_state: AppState, job_id: str, output_id: str) -> str:
    """The link to one variation, shown inline (a player); `&download=1` makes the same
    link an attachment."""
    scope = tokens.output_scope(job_id, output_id)
    token = _token(app_state, scope, MEDIA_LINK_S, MEDIA_BUCKET_S)
    return f"/api/jobs/{job_id}/outputs/{output_id}?token={token}"


def all_events_link(app_state: AppState) -> Link:
    """The link to the stream of every job's events."""
    token = tokens.issue_until(
        app_state.credentials.signing_key,
        scope=tokens.EVENTS_SCOPE,
        expires_at=_events_expiry(app_state),
    )
    return Link(f"/api/events?token={token.value}", token.expires_at)


def download_url(app_state: AppState, job_id: str, expires_at: int) -> str | None:
    """The link to the job's ZIP, lasting until `expires_at` (when its results expire), so
    a download manager can resume it all that time; None once that has passed."""
    if expires_at <= app_state.now():
        return None
    scope = tokens.job_scope(job_id, "download")
    token = tokens.issue_until(
        app_state.credentials.signing_key, scope=scope, expires_at=expires_at
    )
    return f"/api/jobs/{job_id}/download?token={token.value}"
