"""How the service logs: text for people (the default), or one JSON object per line.

`LOG_FORMAT=json` is for log shippers: each record is `{"time", "level", "logger",
"message"}`, plus `"jobId"` when the message names a job (`job=<id>`, as every message
about one does), and `"error"` with the traceback when there is one.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_JOB = re.compile(r"\bjob=([0-9A-Za-z-]+)")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }  # fmt: skip
        job = _JOB.search(message)
        if job is not None:
            entry["jobId"] = job.group(1)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, log_format: str) -> None:
    """Send the service's logs to stdout at `level`, as `text` or `json`."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
