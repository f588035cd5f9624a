"""A download's lease: the guarantee the product rests on, from its start to its end.

    acquire (before the first byte) → bytes flow → released when the request ends
                                          │
                     a client that stalls or trickles is cut: the request ends

A file that a running download will read is never deleted before that download ends
(DESIGN §5, invariants 1, 7 and 12): the ZIP and a single variation each take a lease on
their job from the download tracker before the first byte, and removal is granted only
while a job has no lease (`refresher.storage.removal`). The lease must end with the
download, however the download ends:

- **The request's handling ends**: the lease is released then, from the connection's
  own call (`web.http.patches.on_close`), not from the body generator's `finally`, which
  never runs if the client leaves as the headers go out.
- **The client stops reading**: Hypercorn has no send timeout and shields its writes,
  so a stalled client would hold its task for ever. The kernel cuts a connection that
  acknowledges nothing for `DOWNLOAD_STALL_S` (TCP_USER_TIMEOUT on every connection).
- **The client reads a trickle**: it keeps acknowledging, so the kernel never cuts it.
  While the server waits on it, it must take `DOWNLOAD_MIN_RATE_BYTES_S` on average
  (`web.http.patches.PacedTCPServer`), or it is cut within about `DOWNLOAD_STALL_S`.

Either cut makes Hypercorn tell the app the client is gone, which ends the request's
handling, which releases the lease. A process that dies takes its leases' holders with
it; the next start drops leases of earlier processes (`refresher.storage.leases`).
"""

from __future__ import annotations

from actors.download_tracker import LeaseRefused, TrackerUnavailable
from refresher.config import Config
from web.http.errors import ApiError
from web.http.patches import ServerConfig, on_close
from web.state import AppState

GONE = "This job's results have expired or were removed."
_REFUSED = {
    "gone": (410, GONE),
    "reserved": (410, "This job's results are being removed."),
}


async def hold_lease(app_state: AppState, job_id: str) -> None:
    """Lease the job for as long as this request lasts, however it ends; or raise the
    error to answer with (410 gone or being removed, 503)."""
    try:
        lease = await app_state.tracker.acquire(job_id)
    except LeaseRefused as refused:
        code, message = _REFUSED[refused.reason]
        raise ApiError(code, message) from None
    except TrackerUnavailable:
        raise ApiError(503, "Downloads are briefly unavailable; try again in a moment.") from None
    # Released when the connection's handling of this request ends: also when the client
    # leaves before the body's first byte, where a generator's `finally` never runs.
    on_close(lambda: app_state.tracker.release(lease))


def limit_clients(server: ServerConfig, config: Config) -> ServerConfig:
    """Set how slow a client may be before its connection, and so its lease, is cut."""
    server.stall_timeout_s = config.download_stall_s
    server.min_send_rate_bytes_s = config.download_min_rate_bytes_s
    return server
