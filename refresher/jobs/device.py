"""A job a device made: its sources as the client lists them, and each result it sent
matched to its source and variation by name, before anything is kept.

The original client encodes the variations in the browser, then sends them in one form:
`sourceFiles`, JSON `[{"name": "ad.mp4", "variationCount": 5}, ...]`, and each result
named `<base>/<base>_var<N>_<id>.mp4`, where `<base>` is the source's name without its
extension (as the client strips it: the last `.ext`), `N` counts from 1 and `<id>` is a
few random characters; the form keeps only the last part of a name, the file's own.
Nothing here touches a path: names are shown and matched, never used to find a file.

A device sends what it managed to make: a variation that failed in the browser, or all
those after a cancel, is simply not sent. So a source may have fewer results than its
`variationCount` (none at all: the file is recorded as failed, with a reason), but never
one it did not announce, one outside 1..variationCount, or the same variation twice.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from refresher.jobs.outputstore import NewOutput

# The original client's (and its server's) most results in one form.
MAX_RESULTS = 200
# The longest source name taken: file systems' own limit on one name.
MAX_SOURCE_NAME_CHARS = 255
# What a result's effects record: they were chosen and applied on the device, not here.
DEVICE_EFFECTS: dict[str, Any] = {"madeOn": "device"}
# Why a source with no result at all has failed.
NO_RESULTS = "The device sent none of this video's variations."
# `<base>_var<N>_<id>.mp4` (the id may be missing: `<base>_var<N>.mp4`, as the ZIP names
# them). The base is greedy, so it may hold `_var` itself; N has at most 9 digits.
RESULT_NAME = re.compile(
    r"(?P<base>.+)_var(?P<index>[0-9]{1,9})(?:_(?P<tag>[A-Za-z0-9-]{1,64}))?\.mp4",
    re.IGNORECASE | re.DOTALL,
)
# The client's own rule for a name without its extension (`name.replace(/\.[^/.]+$/, '')`).
_EXTENSION = re.compile(r"\.[^/.]+$")
SHAPE = "[{“name”: “ad.mp4”, “variationCount”: 5}, …]"


class DeviceResultsRefused(ValueError):
    """The sources or results a device sent break a rule; the message says which."""


@dataclass(frozen=True)
class SourceFile:
    """A source video as the device names it, and how many variations it set out to make."""

    name: str
    variation_count: int

    @property
    def base(self) -> str:
        """The name its results begin with: the name without its extension, a `"` in it
        written `%22`, as browsers write it in a form's file names (HTML's multipart
        encoding; control characters, the others escaped so, are refused in sources)."""
        return _comparable(_EXTENSION.sub("", self.name)).replace('"', "%22")


@dataclass(frozen=True)
class ResultMatch:
    """Which source (its position in the list) and variation a sent result is."""

    source: int
    variation_index: int


@dataclass(frozen=True)
class DeviceFile:
    """A source of a device job as it is recorded: its results, kept, perhaps none."""

    id: str
    name: str
    duration_s: float | None
    outputs: tuple[NewOutput, ...]


def _comparable(name: str) -> str:
    # As the form gives a file's name (`web.http.multipart.display_name`): NFC (a Mac's
    # names arrive decomposed), no outer spaces.
    return unicodedata.normalize("NFC", name).strip()


def _shown(text: str, limit: int = 60) -> str:
    """`text` safe to quote in a message: printable, and not too long."""
    cleaned = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _source_name(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise DeviceResultsRefused(f"Each entry of sourceFiles needs a “name”; expected {SHAPE}.")
    name = unicodedata.normalize("NFC", raw)
    if len(name) > MAX_SOURCE_NAME_CHARS:
        raise DeviceResultsRefused(
            f"The source name “{_shown(name)}” is longer than {MAX_SOURCE_NAME_CHARS} characters."
        )
    if any(unicodedata.category(ch)[0] == "C" for ch in name):
        raise DeviceResultsRefused(
            f"The source name “{_shown(name)}” holds control characters; no file is named so."
        )
    if "/" in name or "\\" in name or name.strip() in (".", ".."):
        raise DeviceResultsRefused(
            f"The source name “{_shown(name)}” names a folder; send the file's own name only."
        )
    return name


def _variation_count(raw: object, name: str, maximum: int) -> int:
    # JSON numbers only, whole and in range: not true, not "5", not 5.5.
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= maximum:
        raise DeviceResultsRefused(
            f"variationCount of “{_shown(name)}” must be a whole number from 1 to {maximum}; "
            f"got {_shown(json.dumps(raw), 20)}."
        )
    return raw


def parse_source_files(raw: str | None, *, max_files: int, max_variations: int) -> list[SourceFile]:
    """The `sourceFiles` field as sources; raise `DeviceResultsRefused` for anything but a
    JSON list of 1 to `max_files` objects, each a safe file name with a whole
    `variationCount` from 1 to `max_variations`, their bases all distinct."""
    if raw is None or not raw.strip():
        raise DeviceResultsRefused(f"Send the source videos' names in sourceFiles: {SHAPE}.")
    try:
        entries = json.loads(raw)
    except (RecursionError, ValueError):
        raise DeviceResultsRefused(f"sourceFiles is not JSON; expected {SHAPE}.") from None
    if not isinstance(entries, list) or not entries:
        raise DeviceResultsRefused(f"sourceFiles must be a list of one or more videos: {SHAPE}.")
    if len(entries) > max_files:
        raise DeviceResultsRefused(
            f"At most {max_files} videos per job; sourceFiles names {len(entries)}."
        )
    sources = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise DeviceResultsRefused(f"Each entry of sourceFiles must be an object: {SHAPE}.")
        name = _source_name(entry.get("name"))
        count = _variation_count(entry.get("variationCount"), name, max_variations)
        sources.append(SourceFile(name, count))
    bases: dict[str, SourceFile] = {}
    for source in sources:
        other = bases.setdefault(source.base, source)
        if other is not source:
            raise DeviceResultsRefused(
                f"“{_shown(other.name)}” and “{_shown(source.name)}” share the name "
                f"“{_shown(source.base)}”, so their results cannot be told apart; rename one."
            )
    return sources


def match_results(sources: Sequence[SourceFile], names: Sequence[str]) -> list[ResultMatch]:
    """Each result name's source and variation, in order; raise `DeviceResultsRefused` for
    no results, more than MAX_RESULTS, a name not shaped `<base>_var<N>_<id>.mp4`, one
    that matches no source, a variation outside 1..variationCount, or one sent twice."""
    if not names:
        raise DeviceResultsRefused("Send at least one result (field “results”).")
    if len(names) > MAX_RESULTS:
        raise DeviceResultsRefused(f"At most {MAX_RESULTS} results per job; this form has more.")
    by_base = {source.base: position for position, source in enumerate(sources)}
    seen: dict[tuple[int, int], str] = {}
    matches = []
    for raw in names:
        name = _comparable(raw)
        parsed = RESULT_NAME.fullmatch(name)
        if parsed is None:
            raise DeviceResultsRefused(
                f"The result “{_shown(name)}” is not named <video name>_var<N>_<id>.mp4."
            )
        position = by_base.get(_comparable(parsed["base"]))
        if position is None:
            raise DeviceResultsRefused(
                f"The result “{_shown(name)}” matches none of the videos in sourceFiles."
            )
        source, index = sources[position], int(parsed["index"])
        if not 1 <= index <= source.variation_count:
            raise DeviceResultsRefused(
                f"The result “{_shown(name)}” is variation {index}, but “{_shown(source.name)}” "
                f"has variations 1 to {source.variation_count}."
            )
        if (position, index) in seen:
            raise DeviceResultsRefused(
                f"Variation {index} of “{_shown(source.name)}” was sent twice: "
                f"“{_shown(seen[position, index])}” and “{_shown(name)}”."
            )
        seen[position, index] = name
        matches.append(ResultMatch(position, index))
    return matches
