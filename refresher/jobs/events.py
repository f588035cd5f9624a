"""What happened to a job, as live subscribers (the page's event streams) hear of it.

Every path that ends or removes a job publishes a `status` event saying so (the
processor, a cancel, the janitor, the evictor, a DELETE), so every stream can end; an
upload announces its new job as queued, so a stream of every job sees it appear.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from refresher.jobs.status import TERMINAL

# The status a stream reports for a job its owner deleted: its row is gone too.
DELETED = "deleted"


@dataclass(frozen=True)
class JobEvent:
    """Something happened to a job: `kind` is "status" or "progress"; `data` is JSON-ready."""

    job_id: str
    kind: str
    data: dict[str, Any]

    def as_json(self) -> str:
        """The event as one line of JSON, for other processes (`from_json` reads it)."""
        return json.dumps({"jobId": self.job_id, "kind": self.kind, "data": self.data})

    @classmethod
    def from_json(cls, text: str) -> JobEvent:
        fields = json.loads(text)
        return cls(fields["jobId"], fields["kind"], fields["data"])

    @property
    def ends_job(self) -> bool:
        """Whether nothing more will happen to the job: a stream of it may end."""
        return self.kind == "status" and self.data.get("status") in TERMINAL | {DELETED}


def status_event(job_id: str, status: str, error: str | None = None) -> JobEvent:
    """The event of a job reaching `status` (with a reason for its owner, if any)."""
    return JobEvent(job_id, "status", {"status": status, "error": error})


Publish = Callable[[JobEvent], None]


def nobody_listens(event: JobEvent) -> None:
    """The default `publish`: nobody follows the jobs (tools, benchmarks)."""
