"""What happened to a job, as live subscribers (the page's event streams) hear of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JobEvent:
    """Something happened to a job: `kind` is "status" or "progress"; `data` is JSON-ready."""

    job_id: str
    kind: str
    data: dict[str, Any]
