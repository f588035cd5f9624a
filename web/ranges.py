"""HTTP range and validator logic for downloads, as pure functions (RFC 9110 §13, §14)."""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime, parsedate_to_datetime


class RangeNotSatisfiable(ValueError):
    def __init__(self, header: str, size: int) -> None:
        self.size = size
        super().__init__(f"range {header!r} is not satisfiable for {size} bytes")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range [start, end) that `header` asks of `size` bytes, or None for all.

    None also for headers this server chooses to ignore (other units, several ranges:
    the whole body is a valid answer to those). Raise `RangeNotSatisfiable` for a single
    range that lies wholly past the end.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        low = int(first) if first else None
        high = int(last) if last else None
    except ValueError:
        return None
    if low is None:  # a suffix: the last N bytes
        if high is None:
            return None
        if high <= 0:
            raise RangeNotSatisfiable(header, size)
        return (max(0, size - high), size)
    if low < 0 or (high is not None and high < low):
        return None
    if low >= size:
        raise RangeNotSatisfiable(header, size)
    return (low, size if high is None else min(high + 1, size))


def http_date(moment: datetime) -> str:
    return format_datetime(moment.replace(microsecond=0), usegmt=True)


def parse_http_date(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None


def strong_match(header: str, etag: str) -> bool:
    """Whether an If-Match / If-Range list names `etag` (weak tags never match strongly)."""
    tags = [tag.strip() for tag in header.split(",")]
    return "*" in tags or etag in tags


def precondition_failed(
    *, if_match: str | None, if_unmodified_since: str | None, etag: str, modified: datetime
) -> bool:
    """Whether If-Match / If-Unmodified-Since rule the request out (answer 412)."""
    if if_match is not None:
        return not strong_match(if_match, etag)
    since = parse_http_date(if_unmodified_since)
    return since is not None and modified.replace(microsecond=0) > since


def range_still_valid(if_range: str | None, *, etag: str, modified: datetime) -> bool:
    """Whether a Range may be honoured under If-Range (absent If-Range: yes)."""
    if not if_range:
        return True
    if if_range.strip().startswith(('"', "W/")):
        return if_range.strip() == etag
    date = parse_http_date(if_range)
    return date is not None and date == modified.replace(microsecond=0)
