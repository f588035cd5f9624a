"""Stream a multipart/form-data body to disk, part by part, with bounded memory.

Quart's own form parsing spools files with synchronous writes on the event loop; this
feeds the raw body to python-multipart (a sans-IO parser) and writes file parts with trio
file I/O as they arrive, enforcing the per-file size limit while streaming. Field values
are kept in memory only up to a small limit.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from pathlib import Path

import trio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from refresher.storage.full import files_written

# Bytes gathered before one write to disk: big writes keep thread hops few (one per MiB).
WRITE_BUFFER_BYTES = 1024 * 1024
# The most buffers one writev takes (Linux: 1024).
IOV_MAX = os.sysconf("SC_IOV_MAX")
# What a form may hold beside its files, all kept in memory until the form ends: the
# upload's few fields (variations, strength, mirror) with room to spare. Past any of these
# the form is refused at once, whatever it still sends: memory is bounded by these, not
# by what a client sends (DESIGN §5, invariant 11).
MAX_FIELD_BYTES = 4096
MAX_FIELDS = 16
MAX_FIELDS_TOTAL_BYTES = 16 * 1024
# A part's headers (Content-Disposition, Content-Type) are a few hundred bytes.
MAX_PART_HEADER_BYTES = 8 * 1024
# Parts of any kind: the files, the fields, and the empty file parts a browser sends for
# an input left empty.
MAX_EXTRA_PARTS = 16
MAX_NAME_CHARS = 200
NO_ROOM_FOR_UPLOAD = "there was no room for the upload"
# RFC 2046 §5.1.1: a boundary is 1 to 70 characters.
MAX_BOUNDARY_BYTES = 70


class FormRejected(Exception):
    """The form breaks a rule; `status` is the HTTP status, the message is for a person."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass
class ReceivedFile:
    field: str
    name: str  # display name only, never used as a path
    path: Path
    size: int = 0


@dataclass
class ReceivedForm:
    files: list[ReceivedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


def display_name(raw: str) -> str:
    """The name a person gave the file, safe to show: no folders, no control characters."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    name = unicodedata.normalize("NFC", name)[:MAX_NAME_CHARS]
    return name or "video"


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a multipart/form-data type, or None if it is not one.

    Raise `FormRejected` (400) for a boundary longer than RFC 2046 allows, which the
    parser would refuse with an error of its own."""
    mime, options = parse_options_header(content_type)
    if mime != b"multipart/form-data":
        return None
    boundary = options.get(b"boundary") or None
    if boundary is not None and len(boundary) > MAX_BOUNDARY_BYTES:
        raise FormRejected(
            400, f"The form's boundary is longer than {MAX_BOUNDARY_BYTES} characters."
        )
    return boundary


def _create(path: Path) -> int:
    """Open a new file for writing (never an existing one); its descriptor."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # as open(path, "xb")


def _write_all(fd: int, pieces: list[bytes | memoryview]) -> None:
    """Write the pieces in order with as few system calls as the kernel allows."""
    views = [memoryview(piece) for piece in pieces]
    while views:
        written = os.writev(fd, views[:IOV_MAX])
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]


class _Events:
    """Collects the parser's callbacks; the async side replays them after each chunk."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes | memoryview]] = []
        self.header_field = b""
        self.header_value = b""
        self.header_bytes = 0  # of the part being read
        self.finished = False

    def _count_header(self, length: int) -> None:
        self.header_bytes += length
        if self.header_bytes > MAX_PART_HEADER_BYTES:
            raise FormRejected(
                400, f"A part of the form has headers over {MAX_PART_HEADER_BYTES} bytes."
            )

    def callbacks(self) -> dict[str, object]:
        def on(kind: str) -> object:
            return lambda: self.items.append((kind, b""))

        def on_part_begin() -> None:
            self.header_bytes = 0
            self.items.append(("begin", b""))

        def on_header_field(data: bytes, start: int, end: int) -> None:
            self._count_header(end - start)
            self.header_field += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            self._count_header(end - start)
            self.header_value += data[start:end]

        def on_header_end() -> None:
            name = self.header_field.decode("latin-1").strip().lower()
            self.items.append(("header:" + name, self.header_value))
            self.header_field = self.header_value = b""

        def on_part_data(data: bytes, start: int, end: int) -> None:
            # A view of the chunk, not a copy, when the parser hands us the chunk itself
            # (immutable); its own look-behind buffer changes later, so that is copied.
            piece = memoryview(data)[start:end] if isinstance(data, bytes) else data[start:end]
            self.items.append(("data", piece))

        def on_end() -> None:
            self.finished = True

        return {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on("headers_done"),
            "on_part_data": on_part_data,
            "on_part_end": on("end"),
            "on_end": on_end,
        }


async def receive_form(
    body: AsyncIterable[bytes],
    boundary: bytes,
    directory: Path,
    *,
    file_field: str,
    max_files: int,
    max_file_bytes: int,
    limit_words: str,
) -> ReceivedForm:
    """Parse `body`, writing each file part of `file_field` to `directory/<n>.upload`.

    Raise `FormRejected` as soon as a rule breaks (more than `max_files` files, a file
    over `max_file_bytes`, a file in another field, more or larger fields or part headers
    than MAX_FIELDS, MAX_FIELDS_TOTAL_BYTES and MAX_PART_HEADER_BYTES allow, a malformed
    or incomplete body), and `StorageFull` when the volume has no room for a file. The
    caller removes `directory` on any exception, including cancellation.
    """
    events = _Events()
    try:
        parser = MultipartParser(boundary, events.callbacks())  # type: ignore[arg-type]
    except FormParserError:  # a boundary the parser will not take
        raise FormRejected(400, "The upload is not a well-formed form.") from None
    form = ReceivedForm()
    parts = 0
    fields_bytes = 0
    headers: dict[str, bytes] = {}
    current: ReceivedFile | None = None
    field_name: str | None = None
    field_value = bytearray()
    sink: int | None = None  # the open file's descriptor
    pending: list[bytes | memoryview] = []
    pending_bytes = 0

    async def flush() -> None:
        nonlocal pending, pending_bytes
        if pending and sink is not None:
            with files_written(NO_ROOM_FOR_UPLOAD):
                await trio.to_thread.run_sync(_write_all, sink, pending)
        pending, pending_bytes = [], 0

    try:
        async for chunk in body:
            try:
                parser.write(chunk)
            except FormParserError:  # MultipartParseError and any other of the parser's
                raise FormRejected(400, "The upload is not a well-formed form.") from None
            items, events.items = events.items, []
            for kind, data in items:
                if kind == "begin":
                    headers = {}
                    parts += 1
                    if parts > max_files + MAX_EXTRA_PARTS:
                        raise FormRejected(
                            400, f"The form has more than {max_files + MAX_EXTRA_PARTS} parts."
                        )
                elif kind.startswith("header:"):
                    headers[kind.removeprefix("header:")] = bytes(data)
                elif kind == "headers_done":
                    _, options = parse_options_header(headers.get("content-disposition", b""))
                    name = options.get(b"name", b"").decode("utf-8", "replace")
                    filename = options.get(b"filename")
                    if filename is None:
                        if len(form.fields) >= MAX_FIELDS:
                            raise FormRejected(400, f"The form has more than {MAX_FIELDS} fields.")
                        field_name, field_value = name, bytearray()
                        continue
                    if name != file_field:
                        raise FormRejected(
                            400, f"Send videos in the field “{file_field}”, not “{name}”."
                        )
                    if not filename:
                        continue  # a browser sends an empty file part when none was chosen
                    if len(form.files) >= max_files:
                        raise FormRejected(
                            400, f"At most {max_files} videos per job; this upload has more."
                        )
                    current = ReceivedFile(
                        field=name,
                        name=display_name(filename.decode("utf-8", "replace")),
                        path=directory / f"{len(form.files)}.upload",
                    )
                    form.files.append(current)
                    with files_written(NO_ROOM_FOR_UPLOAD):
                        sink = await trio.to_thread.run_sync(_create, current.path)
                elif kind == "data":
                    if current is not None:
                        current.size += len(data)
                        if current.size > max_file_bytes:
                            raise FormRejected(
                                413, f"“{current.name}” is larger than the {limit_words} limit."
                            )
                        pending.append(data)
                        pending_bytes += len(data)
                        if pending_bytes >= WRITE_BUFFER_BYTES:
                            await flush()
                    elif field_name is not None:
                        field_value.extend(data)
                        fields_bytes += len(data)
                        if len(field_value) > MAX_FIELD_BYTES:
                            raise FormRejected(400, f"The field “{field_name}” is too long.")
                        if fields_bytes > MAX_FIELDS_TOTAL_BYTES:
                            raise FormRejected(
                                400,
                                "The form's fields hold more than "
                                f"{MAX_FIELDS_TOTAL_BYTES // 1024} KiB in all.",
                            )
                elif kind == "end":
                    if current is not None and sink is not None:
                        await flush()
                        await trio.to_thread.run_sync(os.close, sink)
                        sink, current = None, None
                    elif field_name is not None:
                        form.fields[field_name] = field_value.decode("utf-8", "replace")
                        field_name = None
        if not events.finished:
            raise FormRejected(400, "The upload ended before it was complete; try again.")
        return form
    finally:
        if sink is not None:
            os.close(sink)
