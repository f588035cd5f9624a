"""What an MP4/MOV file declares before anything decodes it: the frame size of each video
track, read from the box headers alone (ISO/IEC 14496-12; QuickTime's layout is the same).

A decoder allocates a frame as large as the stream says, and FFmpeg and PyAV decode while
they open a file (to learn its streams), so a check after opening is too late: a 0.8 MB
MOV whose one PNG frame is 16000 x 16000 costs ~740 MiB inside `av.open`. This reads the
sample descriptions (`moov/trak/mdia/minf/stbl/stsd`) of the tracks whose handler is
`vide` with plain reads and seeks, never more than a box header or a few bytes at a time.

What a header says may still lie; decoders are capped as well (`max_pixels`), so a frame
larger than declared fails to decode instead of filling memory.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

# A real file has a handful of top-level boxes (a fragmented one a few per fragment); a
# file of millions of tiny boxes would only cost time to walk, so walking stops here.
MAX_BOXES = 100_000
# A visual sample entry: size and type (8), reserved (6), data reference index (2),
# pre-defined and reserved (16), then width and height (16 bits each).
_VISUAL_SIZE_OFFSET = 8 + 6 + 2 + 16


class BoxesDamaged(ValueError):
    """The box structure is not what an MP4/MOV file holds."""


@dataclass(frozen=True)
class DeclaredFrame:
    """A video track's frame size as its sample description declares it."""

    track: int  # the track's position among the file's tracks, from 0
    width: int
    height: int


@dataclass(frozen=True)
class _Box:
    kind: bytes
    start: int  # where the payload starts
    end: int  # where the box ends


def _boxes(
    file: BinaryIO, start: int, end: int, budget: list[int], *, top: bool = False
) -> Iterator[_Box]:
    """The boxes laid end to end in [start, end); `budget` counts boxes left to visit.

    At the `top` level a box that overruns the file ends the walk: what follows the last
    whole box (a cut-off copy, a camera's trailing bytes) is for the demuxer to judge."""
    position = start
    while position + 8 <= end:
        budget[0] -= 1
        if budget[0] < 0:
            raise BoxesDamaged(f"more than {MAX_BOXES} boxes")
        file.seek(position)
        header = file.read(8)
        if len(header) < 8:
            return
        size, kind = struct.unpack(">I4s", header)
        payload = position + 8
        if size == 1:  # the size follows as 64 bits
            large = file.read(8)
            if len(large) < 8:
                return
            (size,) = struct.unpack(">Q", large)
            payload += 8
        elif size == 0:  # to the end of the enclosing box (or the file)
            size = end - position
        if size < payload - position or position + size > end:
            if top:
                return
            raise BoxesDamaged(f"box {kind!r} at {position} overruns its parent")
        yield _Box(kind, payload, position + size)
        position += size


def _read(file: BinaryIO, offset: int, length: int) -> bytes:
    file.seek(offset)
    return file.read(length)


def _handler(file: BinaryIO, mdia: _Box, budget: list[int]) -> bytes | None:
    for box in _boxes(file, mdia.start, mdia.end, budget):
        if box.kind == b"hdlr":
            # Version and flags (4), pre-defined or QuickTime's component type (4), then
            # the handler type.
            data = _read(file, box.start + 8, 4)
            return data if len(data) == 4 else None
    return None


def _visual_sizes(file: BinaryIO, stsd: _Box) -> Iterator[tuple[int, int]]:
    """Each sample entry's width and height (version and flags, then an entry count)."""
    head = _read(file, stsd.start, 8)
    if len(head) < 8:
        raise BoxesDamaged("stsd is cut short")
    (count,) = struct.unpack(">I", head[4:])
    position = stsd.start + 8
    for _ in range(min(count, MAX_BOXES)):
        entry = _read(file, position, _VISUAL_SIZE_OFFSET + 4)
        if len(entry) < _VISUAL_SIZE_OFFSET + 4:
            raise BoxesDamaged("a sample entry is cut short")
        (size,) = struct.unpack(">I", entry[:4])
        if size < len(entry) or position + size > stsd.end:
            raise BoxesDamaged("a sample entry overruns stsd")
        yield struct.unpack(">HH", entry[_VISUAL_SIZE_OFFSET:])
        position += size


def _find(
    file: BinaryIO, parent: _Box, path: list[bytes], budget: list[int], *, top: bool = False
) -> Iterator[_Box]:
    """The boxes at `path` below `parent` (every match at each level)."""
    if not path:
        yield parent
        return
    for box in _boxes(file, parent.start, parent.end, budget, top=top):
        if box.kind == path[0]:
            yield from _find(file, box, path[1:], budget)


def declared_frames(file: BinaryIO, size: int) -> list[DeclaredFrame]:
    """The declared frame size of every sample description of every video track in the
    `size` bytes of `file` (blocking). Raise `BoxesDamaged` for a box that overruns its
    parent or more than MAX_BOXES boxes; a file that is not made of boxes at all has no
    tracks to declare (the demuxer refuses it)."""
    budget = [MAX_BOXES]
    whole = _Box(b"", 0, size)
    frames: list[DeclaredFrame] = []
    track = -1
    for trak in _find(file, whole, [b"moov", b"trak"], budget, top=True):
        track += 1
        for mdia in _find(file, trak, [b"mdia"], budget):
            if _handler(file, mdia, budget) != b"vide":
                continue
            for stsd in _find(file, mdia, [b"minf", b"stbl", b"stsd"], budget):
                frames += [DeclaredFrame(track, w, h) for w, h in _visual_sizes(file, stsd)]
    return frames
