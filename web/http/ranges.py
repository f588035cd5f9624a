"""HTTP range and validator logic for downloads, as pure functions (RFC 9110 §13, §14).

Every parser here takes any text a client sends: what it cannot read it ignores (as the
RFC allows), and the only exception any of them raises is `RangeNotSatisfiable`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

# A byte position: ASCII digits only (`int()` alone also takes "1_0", "+1" and "٣").
_POSITION = re.compile(r"[0-9]*")


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
    first, last = first.strip(), last.strip()
    if not dash or not _POSITION.fullmatch(first) or not _POSITION.fullmatch(last):
        return None
    try:
        low = int(first) if first else None
        high = int(last) if last else None
    except ValueError:  # more digits than int() converts: no file is that large
        return None
    if low is None:  # a suffix: the last N bytes
        if high is None:
            return None
        if high <= 0 or size == 0:  # nothing to send: no suffix of it is satisfiable
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
    """The aware moment `text` names, or None for no date or one that cannot be read."""
    if not text:
        return None
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, OverflowError):  # overflow: a number C cannot hold
        return None
    # "-0000" (RFC 5322: UTC, source zone unknown) parses naive; comparing a naive moment
    # with the archive's aware one would raise.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


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
