"""Small byte edits to the boxes of an MP4/MOV that FFmpeg made, for hostile-media tests:
headers that lie about a duration or a frame size, and cover art moved ahead of the
tracks. Every edit keeps each box's size, so no offset in the file moves."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"udta", b"edts"}


@dataclass(frozen=True)
class Box:
    kind: bytes
    offset: int  # where the box starts
    header: int  # bytes of size and type
    size: int

    @property
    def payload(self) -> int:
        return self.offset + self.header

    @property
    def end(self) -> int:
        return self.offset + self.size


def boxes(data: bytes | bytearray, start: int = 0, end: int | None = None) -> Iterator[Box]:
    end = len(data) if end is None else end
    position = start
    while position + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, position)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, position + 8)
            header = 16
        elif size == 0:
            size = end - position
        yield Box(kind, position, header, size)
        position += size


def find(data: bytes | bytearray, *path: bytes) -> list[Box]:
    """Every box at `path` from the top (all matches at each level)."""
    found = [Box(b"", 0, 0, len(data))]
    for kind in path:
        found = [child for box in found for child in boxes(data, box.payload, box.end)
                 if child.kind == kind]  # fmt: skip
    return found


def _timescale(data: bytearray, box: Box) -> int:
    version = data[box.payload]
    offset = box.payload + 4 + (16 if version == 1 else 8)
    return int(struct.unpack_from(">I", data, offset)[0])


def _set_duration(data: bytearray, box: Box, value: int, *, tkhd: bool = False) -> None:
    """Set the duration field of an mvhd, mdhd (after the timescale) or tkhd (after the
    track id and a reserved word), version 0 or 1."""
    version = data[box.payload]
    if tkhd:
        offset = box.payload + 4 + (16 if version == 1 else 8) + 8
    else:
        offset = box.payload + 4 + (16 if version == 1 else 8) + 4
    struct.pack_into(">Q" if version == 1 else ">I", data, offset, value)


def declare_duration(path: Path, seconds: float) -> None:
    """Make mvhd, every tkhd and every mdhd say the file lasts `seconds` (the samples, and
    the edit lists, still say what they said)."""
    data = bytearray(path.read_bytes())
    (mvhd,) = find(data, b"moov", b"mvhd")
    movie_scale = _timescale(data, mvhd)
    _set_duration(data, mvhd, round(seconds * movie_scale))
    for tkhd in find(data, b"moov", b"trak", b"tkhd"):
        _set_duration(data, tkhd, round(seconds * movie_scale), tkhd=True)
    for mdhd in find(data, b"moov", b"trak", b"mdia", b"mdhd"):
        _set_duration(data, mdhd, round(seconds * _timescale(data, mdhd)))
    path.write_bytes(bytes(data))


def declare_frame_size(path: Path, width: int, height: int) -> None:
    """Make every visual sample description and track header say `width` x `height`."""
    data = bytearray(path.read_bytes())
    for stsd in find(data, b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"):
        for entry in boxes(data, stsd.payload + 8, stsd.end):
            struct.pack_into(">HH", data, entry.offset + 32, width, height)
    for tkhd in find(data, b"moov", b"trak", b"tkhd"):
        struct.pack_into(">II", data, tkhd.end - 8, width << 16, height << 16)
    path.write_bytes(bytes(data))


def move_first(path: Path, kind: bytes) -> None:
    """Put the box `kind` first among moov's children (as a file whose cover art is
    declared ahead of its tracks has it); moov keeps its size."""
    data = bytearray(path.read_bytes())
    (moov,) = find(data, b"moov")
    children = list(boxes(data, moov.payload, moov.end))
    moved = [box for box in children if box.kind == kind]
    assert moved, f"no {kind!r} in moov"
    order = moved + [box for box in children if box.kind != kind]
    payload = b"".join(bytes(data[box.offset : box.end]) for box in order)
    data[moov.payload : moov.end] = payload
    path.write_bytes(bytes(data))
