"""The words for where a job stands: one `JobStatus` vocabulary, used in code and in SQL.

A job moves `queued → processing → completed | failed | cancelled` (finished: its results
can be downloaded until they expire), then perhaps to `expired | evicted` (a tombstone:
the row stays listed with a reason, its files are gone). A source file of a job takes the
same words, but never a tombstone's.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    EVICTED = "evicted"


# Waiting for or under the processor: never expired by age alone, never evicted.
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.PROCESSING})
# Ended with results (possibly none) that stay until they expire or are evicted.
FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
# The results are gone; the row stays, with the reason, for the owner to see.
TOMBSTONES = frozenset({JobStatus.EXPIRED, JobStatus.EVICTED})
# Nothing more will happen to the job but removal.
TERMINAL = FINISHED | TOMBSTONES
# Jobs whose failed files keep their sources, so they can be retried without uploading.
RETRYABLE = frozenset({JobStatus.COMPLETED, JobStatus.FAILED})


def sql_list(statuses: Iterable[JobStatus]) -> str:
    """The statuses as an SQL list literal, `('cancelled', 'completed')`, for `IN`."""
    return "(" + ", ".join(f"'{status.value}'" for status in sorted(statuses)) + ")"
