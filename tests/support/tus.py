"""Resumable uploads from a test: the real tus client (`tuspy`, blocking, run in a thread)
and the protocol's requests by hand, for what a well-behaved client never sends."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio
from tusclient import client as tus_client

from tests.support.clock import wait_for

TUS = {"Tus-Resumable": "1.0.0"}


def metadata(**pairs: str) -> str:
    """An Upload-Metadata header: `key base64(value)` pairs."""
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in pairs.items()
    )


async def tus_upload(
    base_url: str, token: str, path: Path, *, chunk_size: int = 4 * 1024 * 1024,
    url: str | None = None, name: str | None = None,
) -> str:  # fmt: skip
    """Upload `path` whole with tuspy (resuming `url` when given); return the upload's URL."""

    def run() -> str:
        client = tus_client.TusClient(
            f"{base_url}/api/uploads", headers={"Authorization": f"Bearer {token}"}
        )
        uploader = client.uploader(
            str(path), chunk_size=chunk_size, url=url,
            metadata={"filename": name or path.name, "filetype": "video/mp4"},
        )  # fmt: skip
        uploader.upload()
        assert uploader.url is not None
        return str(uploader.url)

    return await trio.to_thread.run_sync(run)


def upload_id(location: str) -> str:
    """The id a job names: the last segment of the upload's Location."""
    return location.rstrip("/").rsplit("/", 1)[-1]


async def declare(
    http: httpx.AsyncClient, length: int, name: str = "clip.mp4", **headers: str
) -> httpx.Response:
    """`POST /api/uploads` for `length` bytes named `name`."""
    return await http.post(
        "/api/uploads",
        headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": metadata(filename=name),
                 **headers},
    )  # fmt: skip


async def patch(http: httpx.AsyncClient, location: str, offset: int, data: bytes) -> httpx.Response:
    return await http.patch(
        location,
        content=data,
        headers={**TUS, "Upload-Offset": str(offset),
                 "Content-Type": "application/offset+octet-stream"},
    )  # fmt: skip


async def offset_of(http: httpx.AsyncClient, location: str) -> int:
    response = await http.head(location, headers=TUS)
    assert response.status_code == 200, response.status_code
    return int(response.headers["Upload-Offset"])


async def cut_patch(
    port: int, token: str, location: str, offset: int, data: bytes, *, send_bytes: int,
    until: Callable[[], Awaitable[bool]],
) -> None:  # fmt: skip
    """Send a PATCH declaring all of `data`, send its first `send_bytes`, and cut the
    connection once `until()` holds, as a dropped line does."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Tus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\n"
        f"Content-Type: application/offset+octet-stream\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    try:
        await stream.send_all(head.encode() + data[:send_bytes])
        await wait_for(until, polls=3000)
    finally:
        await stream.aclose()


async def settled_offset(http: httpx.AsyncClient, location: str) -> int:
    """The upload's offset once no request holds it (an empty PATCH goes through)."""

    async def free() -> int | None:
        offset = await offset_of(http, location)
        passed = (await patch(http, location, offset, b"")).status_code == 204
        return offset + 1 if passed else None  # + 1: an offset of 0 counts as found

    return await wait_for(free, polls=1000, step_s=0.05) - 1
