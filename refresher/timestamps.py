"""The store's timestamps: ISO-8601 UTC text with milliseconds and a `Z`.

Text sorts in time order, so SQL compares timestamps as strings; the service's clock is
unix seconds (`time.time`, or a clock a test moves), turned into text only here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def iso(unix_s: float) -> str:
    """Unix seconds as the store's timestamp text, e.g. `2027-01-15T08:00:00.000Z`."""
    return _format(datetime.fromtimestamp(unix_s, UTC))


def iso_after(unix_s: float, seconds: float) -> str:
    """The timestamp `seconds` after `unix_s`."""
    return _format(datetime.fromtimestamp(unix_s, UTC) + timedelta(seconds=seconds))


def parse(text: str) -> datetime:
    """An aware UTC datetime from the store's timestamp text."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def seconds_between(start: str | None, end: str) -> float | None:
    """Seconds from `start` to `end`; None when there is no `start`."""
    if start is None:
        return None
    return (parse(end) - parse(start)).total_seconds()


def duration_words(seconds: float) -> str:
    """Say a duration the way a person would: "24 hours", "1 hour", "90 minutes"."""
    if seconds >= 3600:
        value, unit = seconds / 3600, "hour"
    elif seconds >= 60:
        value, unit = seconds / 60, "minute"
    else:
        value, unit = seconds, "second"
    text = f"{round(value, 1):g}"
    return f"{text} {unit}" if text == "1" else f"{text} {unit}s"


def _format(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
