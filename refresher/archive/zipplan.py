"""The byte layout of a STORE-only ZIP archive whose members' sizes and CRC-32s are known.

Because nothing is compressed and every CRC-32 was recorded when the file was written,
the whole archive is known before its first byte: its exact size (Content-Length), and
what lies at any offset (so a `Range` request is answered by reading just those bytes).
No library offers that (see FIELD-NOTES.md), so this module lays the archive out itself,
following PKWARE's APPNOTE 6.3.x:

    [local header][data] ... [central directory] [zip64 end record + locator]? [end record]

ZIP64 is used only where a value does not fit: an entry's size at or above 4 GiB gets
ZIP64 sizes in both its headers, an offset past 4 GiB a ZIP64 offset in its central
header, and the zip64 end records are written when the entry count or the central
directory's size or offset do not fit. Small entries keep the plain 32-bit form (Safari's
extractor trips on a first member with ZIP64 extras). Names are UTF-8 with flag bit 11.
"""

from __future__ import annotations

import bisect
import itertools
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# Values at or above these do not fit their classic fields and need ZIP64.
MAX_32 = 0xFFFFFFFF
MAX_16 = 0xFFFF
UTF8_FLAG = 0x0800
# "Version needed": 2.0 for plain stored files, 4.5 for ZIP64.
VERSION_PLAIN = 20
VERSION_ZIP64 = 45
# "Version made by": UNIX (3) in the high byte, so external attributes carry a file mode.
MADE_BY = (3 << 8) | VERSION_ZIP64
FILE_ATTRIBUTES = (0o100644 & 0xFFFF) << 16

LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")
END_RECORD = struct.Struct("<IHHHHIIH")
ZIP64_END_RECORD = struct.Struct("<IQHHIIQQQQ")
ZIP64_LOCATOR = struct.Struct("<IIQI")


@dataclass(frozen=True)
class Member:
    """One file of the archive: its name inside, size, CRC-32, and where its bytes are."""

    name: str
    size: int
    crc32: int
    content: Path | bytes

    def __post_init__(self) -> None:
        if isinstance(self.content, bytes) and len(self.content) != self.size:
            raise ValueError(f"member {self.name!r}: size {self.size} != {len(self.content)}")
        if not 0 <= self.crc32 <= MAX_32:
            raise ValueError(f"member {self.name!r}: crc32 must fit 32 bits")


@dataclass(frozen=True)
class Piece:
    """A run of archive bytes: literal `data`, or `length` bytes of `path` from `offset`."""

    start: int
    length: int
    data: bytes | None = None
    path: Path | None = None
    offset: int = 0


def dos_datetime(moment: datetime) -> tuple[int, int]:
    """MS-DOS (time, date) fields; years before 1980 clamp to 1980."""
    year = max(moment.year, 1980)
    date = ((year - 1980) << 9) | (moment.month << 5) | moment.day
    time = (moment.hour << 11) | (moment.minute << 5) | (moment.second // 2)
    return time, date


def _zip64_extra(*values: int) -> bytes:
    if not values:
        return b""
    return struct.pack("<HH", 0x0001, 8 * len(values)) + struct.pack(f"<{len(values)}Q", *values)


class ZipPlan:
    """The layout of one archive; `size` is exact and `pieces(start, end)` gives any range."""

    def __init__(self, members: Sequence[Member], *, modified: datetime) -> None:
        names = [member.name for member in members]
        if len(set(names)) != len(names):
            raise ValueError("member names must be unique")
        time, date = dos_datetime(modified)
        self._pieces: list[Piece] = []
        central = bytearray()
        offset = 0
        for member in members:
            name = member.name.encode("utf-8")
            big = member.size >= MAX_32
            version = VERSION_ZIP64 if big else VERSION_PLAIN
            size_field = MAX_32 if big else member.size
            local_extra = _zip64_extra(member.size, member.size) if big else b""
            header = LOCAL_HEADER.pack(
                0x04034B50, version, UTF8_FLAG, 0, time, date, member.crc32,
                size_field, size_field, len(name), len(local_extra),
            ) + name + local_extra  # fmt: skip
            offset = self._add(offset, header)
            if isinstance(member.content, bytes):
                offset = self._add(offset, member.content)
            elif member.size:
                self._pieces.append(Piece(offset, member.size, path=member.content))
                offset += member.size
            header_offset = offset - member.size - len(header)
            far = header_offset >= MAX_32
            central_extra = _zip64_extra(
                *([member.size, member.size] if big else []), *([header_offset] if far else [])
            )
            central += CENTRAL_HEADER.pack(
                0x02014B50, MADE_BY, VERSION_ZIP64 if big or far else VERSION_PLAIN, UTF8_FLAG,
                0, time, date, member.crc32, size_field, size_field, len(name),
                len(central_extra), 0, 0, 0, FILE_ATTRIBUTES,
                MAX_32 if far else header_offset,
            ) + name + central_extra  # fmt: skip
        directory_offset = offset
        offset = self._add(offset, bytes(central))
        count = len(members)
        needs_zip64 = count >= MAX_16 or len(central) >= MAX_32 or directory_offset >= MAX_32
        tail = b""
        if needs_zip64:
            tail += ZIP64_END_RECORD.pack(
                0x06064B50, ZIP64_END_RECORD.size - 12, MADE_BY, VERSION_ZIP64, 0, 0,
                count, count, len(central), directory_offset,
            )  # fmt: skip
            tail += ZIP64_LOCATOR.pack(0x07064B50, 0, offset, 1)
        tail += END_RECORD.pack(
            0x06054B50, 0, 0, min(count, MAX_16), min(count, MAX_16),
            min(len(central), MAX_32), min(directory_offset, MAX_32), 0,
        )  # fmt: skip
        self.size = self._add(offset, tail)
        self.uses_zip64 = needs_zip64 or any(m.size >= MAX_32 for m in members)
        self._starts = [piece.start for piece in self._pieces]

    def _add(self, offset: int, data: bytes) -> int:
        if data:
            self._pieces.append(Piece(offset, len(data), data=data))
        return offset + len(data)

    def pieces(self, start: int = 0, end: int | None = None) -> Iterator[Piece]:
        """The pieces covering bytes [start, end) of the archive, trimmed to that range."""
        end = self.size if end is None else end
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"range [{start}, {end}) is outside the archive of {self.size}")
        first = max(0, bisect.bisect_right(self._starts, start) - 1)
        for piece in itertools.islice(self._pieces, first, None):
            piece_end = piece.start + piece.length
            if piece_end <= start:
                continue
            if piece.start >= end:
                break
            lo, hi = max(start, piece.start), min(end, piece_end)
            if piece.data is not None:
                cut = piece.data[lo - piece.start : hi - piece.start]
                yield Piece(lo, hi - lo, data=cut)
            else:
                yield Piece(lo, hi - lo, path=piece.path, offset=piece.offset + lo - piece.start)
