from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from web.http.ranges import (
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


def test_no_suffix_of_an_empty_body_is_satisfiable() -> None:
    # Found by the property test below: "bytes=-1" of 0 bytes gave the empty range (0, 0).
    with pytest.raises(RangeNotSatisfiable, match=r"^range 'bytes=-1' is not satisfiable"):
        parse_range("bytes=-1", 0)


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


@pytest.mark.parametrize(
    "header",
    [
        "bytes=1_0-20",  # int() takes digit separators
        "bytes=٣-",  # and any Unicode digit (Arabic-Indic three)
        "bytes=-٣",
        "bytes=+5-10",
        "bytes=0-+5",
        "bytes=0x10-",
        "bytes=1 0-",
        "bytes=" + "9" * 5000 + "-",  # beyond int()'s digit limit
        "bytes=--5",
        "bytes=-",
        "bytes 0-5",
    ],
)
def test_range_positions_other_than_ascii_digits_are_ignored(header: str) -> None:
    assert parse_range(header, 1000) is None


def test_dates_with_an_unknown_zone_are_read_as_utc() -> None:
    # RFC 5322's "-0000" parses to a naive datetime; compared with the archive's aware
    # time it raised TypeError (a 500 on the download).
    assert not precondition_failed(
        if_match=None,
        if_unmodified_since="Wed, 25 Nov 2026 10:00:00 -0000",
        etag=ETAG,
        modified=MODIFIED,
    )
    assert precondition_failed(
        if_match=None,
        if_unmodified_since="Sun, 06 Nov 1994 08:49:37 -0000",
        etag=ETAG,
        modified=MODIFIED,
    )
    assert range_still_valid("Wed, 25 Nov 2026 10:00:00 -0000", etag=ETAG, modified=MODIFIED)


@pytest.mark.parametrize(
    "text",
    [
        "Sun, 06 Nov 1994 08:49:37 +9999",  # an offset no timezone can hold
        "Sun, 06 Nov 99999 08:49:37 GMT",  # a year datetime cannot hold
        "Sun, 06 Nov 99999999999999999999 08:49:37 GMT",  # one C cannot hold (OverflowError)
        "Sun, 06 Nov 1994 08:49:37 +99999999999999999999999",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 25:61:99 GMT",
        "06 Nov",
        "\x00",
    ],
)
def test_unreadable_dates_are_ignored(text: str) -> None:
    assert not precondition_failed(
        if_match=None, if_unmodified_since=text, etag=ETAG, modified=MODIFIED
    )
    assert not range_still_valid(text, etag=ETAG, modified=MODIFIED)


HEADER_TEXT = st.one_of(
    st.text(),
    st.text(alphabet='bytes=0123456789-, \t٣_+*W/"'),
    st.from_regex(r"\A[bB][yY][tT][eE][sS] ?= ?-?[0-9]{0,25}-?[0-9]{0,25}\Z"),
    st.datetimes(timezones=st.none() | st.timezones()).map(
        lambda moment: moment.strftime("%a, %d %b %Y %H:%M:%S %z")
    ),
    st.builds(
        "{}, {} {} {} {}:{}:{} {}".format,
        st.sampled_from(["Sun", "Mon", "xx", ""]),
        st.integers(-5, 40),
        st.sampled_from(["Nov", "Feb", "Foo", ""]),
        st.integers(-1, 100_000) | st.integers(),
        st.integers(-1, 99) | st.integers(),
        st.integers(-1, 99),
        st.integers(-1, 99),
        st.sampled_from(["GMT", "-0000", "+0000", "+9999", "-2400", "UT", "EST", "Z", ""])
        | st.integers().map("{:+d}".format),
    ),
)


@settings(max_examples=500, deadline=None)
@given(
    range_header=HEADER_TEXT,
    if_range=HEADER_TEXT,
    if_match=HEADER_TEXT,
    if_unmodified_since=HEADER_TEXT,
    size=st.integers(0, 2**63),
)
def test_header_parsers_take_any_text(
    range_header: str, if_range: str, if_match: str, if_unmodified_since: str, size: int
) -> None:
    with contextlib.suppress(RangeNotSatisfiable):
        wanted = parse_range(range_header, size)
        if wanted is not None:
            start, end = wanted
            assert 0 <= start < end <= size
    assert isinstance(range_still_valid(if_range, etag=ETAG, modified=MODIFIED), bool)
    for match in (if_match, None):
        failed = precondition_failed(
            if_match=match,
            if_unmodified_since=if_unmodified_since,
            etag=ETAG,
            modified=MODIFIED,
        )
        assert isinstance(failed, bool)
