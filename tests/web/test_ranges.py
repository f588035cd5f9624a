from __future__ import annotations

from datetime import UTC, datetime

import pytest

from web.ranges import (
    RangeNotSatisfiable,
    http_date,
    parse_range,
    precondition_failed,
    range_still_valid,
)

MODIFIED = datetime(2026, 11, 25, 10, 0, 0, 500_000, tzinfo=UTC)
ETAG = '"abc"'


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("bytes=0-99", (0, 100)),
        ("bytes=100-", (100, 1000)),
        ("bytes=990-5000", (990, 1000)),
        ("bytes=-10", (990, 1000)),
        ("bytes=-5000", (0, 1000)),
        ("bytes=999-999", (999, 1000)),
        ("items=0-5", None),
        ("bytes=0-1,5-6", None),
        ("bytes=abc", None),
        ("bytes=5-2", None),
        ("bytes=x-", None),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 1000)


def test_if_match_and_if_unmodified_since() -> None:
    def failed(**headers: str | None) -> bool:
        options = {"if_match": None, "if_unmodified_since": None, **headers}
        return precondition_failed(etag=ETAG, modified=MODIFIED, **options)

    assert not failed()
    assert not failed(if_match='"abc"')
    assert not failed(if_match='"x", "abc"')
    assert not failed(if_match="*")
    assert failed(if_match='"other"')
    assert failed(if_match='W/"abc"')  # weak tags never match strongly
    assert not failed(if_unmodified_since=http_date(MODIFIED))
    assert failed(if_unmodified_since="Tue, 24 Nov 2026 10:00:00 GMT")
    assert not failed(if_unmodified_since="not a date")


def test_if_range() -> None:
    assert range_still_valid(None, etag=ETAG, modified=MODIFIED)
    assert range_still_valid('"abc"', etag=ETAG, modified=MODIFIED)
    assert not range_still_valid('"old"', etag=ETAG, modified=MODIFIED)
    assert not range_still_valid('W/"abc"', etag=ETAG, modified=MODIFIED)
    assert range_still_valid(http_date(MODIFIED), etag=ETAG, modified=MODIFIED)
    assert not range_still_valid("Tue, 24 Nov 2026 10:00:00 GMT", etag=ETAG, modified=MODIFIED)
