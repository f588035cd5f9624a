"""multipart/form-data bodies made by hand, whole or in chunks, for upload tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

BOUNDARY = b"----formboundary7MA4YWxkTrZu0gW"


def form_body(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    """A multipart/form-data body of (field, filename or None, content) parts."""
    body = b""
    for field, filename, content in parts:
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += b"--" + BOUNDARY + b"\r\n"
        body += f"Content-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            body += b"Content-Type: video/mp4\r\n"
        body += b"\r\n" + content + b"\r\n"
    return body + b"--" + BOUNDARY + b"--\r\n"


async def chunks(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    position = 0
    for size in sizes:
        if position >= len(data):
            return
        yield data[position : position + size]
        position += size
    if position < len(data):
        yield data[position:]
