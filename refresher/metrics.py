"""What an operator can scrape: Prometheus counters, histograms and gauges of the service.

The metrics live in one registry per process (`REGISTRY`): counters only ever grow, so
a test reads the change around what it did. Counters and histograms are bumped where
the thing happens; the gauges (queue, leases, storage) are read from the store every
GAUGE_PERIOD_S by `refresh_gauges`, so a scrape never waits on the database. They are
served on their own port (`METRICS_PORT`, off by default), never on the public one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import Connection, text

from refresher.jobs.status import FINISHED, JobStatus
from refresher.storage.usage import read_volume, stored_bytes
from refresher.store.sql import dialect

REGISTRY = CollectorRegistry(auto_describe=True)
GAUGE_PERIOD_S = 5.0

JOBS_FINISHED = Counter(
    "refresher_jobs_finished", "Jobs that ended, by final status.", ["status"], registry=REGISTRY
)
VARIATIONS_ENCODED = Counter(
    "refresher_variations_encoded", "Variations made and recorded.", registry=REGISTRY
)
ENCODE_SECONDS = Histogram(
    "refresher_encode_seconds",
    "Wall seconds per variation: its share of its FFmpeg run, measuring and draws again.",
    buckets=(0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
UPLOADED_BYTES = Counter(
    "refresher_uploaded_bytes", "Bytes of videos accepted in uploads.", registry=REGISTRY
)
RESUMABLE_RECEIVED_BYTES = Counter(
    "refresher_resumable_received_bytes",
    "Bytes received in resumable upload PATCHes and kept (sent again after a cut: counted again).",
    registry=REGISTRY,
)
RESUMABLE_EXPIRED = Counter(
    "refresher_resumable_uploads_expired",
    "Resumable uploads removed unfinished (abandoned) or never taken by their job.",
    registry=REGISTRY,
)
DOWNLOADED_BYTES = Counter(
    "refresher_downloaded_bytes", "Bytes sent of ZIPs and single variations.", registry=REGISTRY
)
DOWNLOADS = Counter(
    "refresher_downloads",
    "Downloads (ZIPs and single variations) by what became of them: started, completed "
    "(every byte asked for was sent) or cut (the client left, or it stalled).",
    ["outcome"],
    registry=REGISTRY,
)
REMOVALS = Counter(
    "refresher_removals", "Jobs removed, by reason: expired, lost, evicted, deleted.",
    ["reason"], registry=REGISTRY,
)  # fmt: skip
ACTOR_RESTARTS = Counter(
    "refresher_actor_restarts", "Restarts of each actor by its supervisor.", ["actor"],
    registry=REGISTRY,
)  # fmt: skip
HTTP_REQUESTS = Counter(
    "refresher_http_requests", "HTTP requests by route (its pattern) and status.",
    ["route", "method", "status"], registry=REGISTRY,
)  # fmt: skip
HTTP_SECONDS = Histogram(
    "refresher_http_request_seconds",
    "Seconds from a request's arrival to its response's headers, by route.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
    registry=REGISTRY,
)
QUEUED = Gauge("refresher_jobs_queued", "Jobs waiting for the processor.", registry=REGISTRY)
PROCESSING = Gauge("refresher_jobs_processing", "Jobs being processed.", registry=REGISTRY)
LEASES = Gauge("refresher_active_leases", "Download leases held now.", registry=REGISTRY)
STORED_BYTES = Gauge(
    "refresher_stored_bytes", "Bytes of outputs and uploads stored.", registry=REGISTRY
)
QUOTA_BYTES = Gauge("refresher_quota_bytes", "STORAGE_QUOTA_BYTES.", registry=REGISTRY)
VOLUME_FREE_BYTES = Gauge(
    "refresher_volume_free_bytes", "Bytes a writer may still fill on the volume.",
    registry=REGISTRY,
)  # fmt: skip


# What becomes of a download (`DOWNLOADS`): begun, every byte asked for sent, or cut.
DOWNLOAD_OUTCOMES = ("started", "completed", "cut")


def start_at_zero(actors: Iterable[str], removal_reasons: Iterable[str]) -> None:
    """Make every labelled series exist from the start, at 0 until something happens:
    a dashboard or an alert then sees zero, not "no data". Jobs by each final status,
    download outcomes, removals by reason, restarts of each of `actors`."""
    for status in sorted(FINISHED):
        JOBS_FINISHED.labels(status)
    for outcome in DOWNLOAD_OUTCOMES:
        DOWNLOADS.labels(outcome)
    for reason in removal_reasons:
        REMOVALS.labels(reason)
    for actor in actors:
        ACTOR_RESTARTS.labels(actor)


def download_ended(sent: int, wanted: int) -> None:
    """Count a download's bytes, and whether it sent all `wanted` or was cut."""
    DOWNLOADED_BYTES.inc(sent)
    DOWNLOADS.labels("completed" if sent == wanted else "cut").inc()


def refresh_gauges(conn: Connection, data_dir: Path, quota_bytes: int) -> None:
    """Read the gauges' values from the store and the volume (blocking)."""
    counts: dict[str, int] = {
        status: count
        for status, count in conn.execute(
            text(
                "SELECT status, count(*) FROM jobs WHERE status IN (:queued, :processing) "
                "GROUP BY status"
            ),
            {"queued": JobStatus.QUEUED, "processing": JobStatus.PROCESSING},
        )
    }
    QUEUED.set(counts.get(JobStatus.QUEUED, 0))
    PROCESSING.set(counts.get(JobStatus.PROCESSING, 0))
    LEASES.set(
        conn.execute(
            text(f"SELECT count(*) FROM leases WHERE expires_at > {dialect(conn).now_s}")
        ).scalar_one()
    )
    STORED_BYTES.set(stored_bytes(conn))
    QUOTA_BYTES.set(quota_bytes)
    used, usable = read_volume(data_dir)
    VOLUME_FREE_BYTES.set(max(0, usable - used))
