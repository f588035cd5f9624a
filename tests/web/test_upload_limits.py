"""Upload admission and limits: room asked in growing steps, media caps, the upload deadline."""

from __future__ import annotations

import contextlib
import json
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from refresher.config import MIB, Config
from refresher.media.probe import Probe
from tests.support.clock import wait_for
from tests.support.forms import BOUNDARY, chunks, form_body
from tests.support.http import StartService, upload
from tests.support.jobs import leftovers, make_finished_job
from tests.support.process import GRACE_S, drain, running_service
from web.intake import NO_ROOM, media_limit_breach, room_checked

MULTIPART = f"multipart/form-data; boundary={BOUNDARY.decode()}"


@contextlib.asynccontextmanager
async def logged_in(
    start_service: StartService, config: Config, **changes: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """Start the service with `changes` and yield a client logged in to it."""
    service = await start_service(**changes)
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        token = (await http.post("/api/auth", json={"password": config.auth_password})).json()
        http.headers["Authorization"] = f"Bearer {token['token']}"
        yield http


async def chunked_post(http: httpx.AsyncClient, body: bytes) -> httpx.Response:
    """POST `body` as a form without Content-Length (Transfer-Encoding: chunked)."""
    pieces = chunks(body, [64 * 1024] * (len(body) // (64 * 1024) + 1))
    response = await http.post("/api/jobs", content=pieces, headers={"Content-Type": MULTIPART})
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    return response


# --- room, asked in steps that start small and grow -------------------------------------


async def test_room_is_asked_in_steps_that_double_up_to_64_mib() -> None:
    asked: list[int] = []

    async def ask(nbytes: int) -> None:
        asked.append(nbytes)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(200):
            yield b"x" * MIB

    received = [len(chunk) async for chunk in room_checked(body(), 0, ask)]
    assert sum(received) == 200 * MIB
    # 1 + 2 + 4 + 8 + 16 + 32 + 64 = 127 MiB in seven asks, then 64 MiB at a time to 255.
    assert [nbytes // MIB for nbytes in asked] == [1, 2, 4, 8, 16, 32, 64, 64, 64]


async def test_a_body_longer_than_declared_asks_from_the_first_step() -> None:
    asked: list[int] = []

    async def ask(nbytes: int) -> None:
        asked.append(nbytes)

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        yield b"x" * (3 * MIB)  # one chunk past the next step: ask for all of it

    assert [len(chunk) async for chunk in room_checked(body(), 1000, ask)] == [1000, 3 * MIB]
    assert asked == [3 * MIB]


async def test_small_chunked_upload_is_admitted_on_a_small_volume(
    start_service: StartService, config: Config, clips: Any
) -> None:
    # 40 MB of quota, 34 MB under the high mark: room for a small upload, not for 64 MiB.
    async with logged_in(start_service, config, storage_quota_bytes=40_000_000) as http:
        body = form_body(
            [("videos", "small.mp4", clips.mp4.read_bytes()), ("variations", None, b"1")]
        )
        response = await chunked_post(http, body)
        assert response.status_code == 202, response.text
        assert [f["name"] for f in response.json()["files"]] == ["small.mp4"]


async def test_chunked_body_that_outgrows_the_room_is_507_and_leaves_nothing(
    start_service: StartService, config: Config
) -> None:
    # 4 MiB of quota, 3.4 MiB under the high mark: asks of 1 and 2 MiB pass, then 4 fails.
    async with logged_in(start_service, config, storage_quota_bytes=4 * MIB) as http:
        response = await chunked_post(http, form_body([("videos", "big.mp4", bytes(8 * MIB))]))
        assert response.status_code == 507, response.text
        assert response.json() == {"error": NO_ROOM}
        assert (await http.get("/api/jobs")).json() == []
    assert leftovers(config) == []


async def declare_upload(url: str, authorization: str, length: int) -> trio.SocketStream:
    """Open a connection and send an upload's headers declaring `length` bytes, and no
    byte of the body."""
    parts = urlsplit(url)
    stream = await trio.open_tcp_stream(parts.hostname or "", parts.port or 0)
    head = (
        f"POST /api/jobs HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: {authorization}\r\n"
        f"Content-Type: {MULTIPART}\r\nContent-Length: {length}\r\n\r\n"
    )
    await stream.send_all(head.encode())
    return stream


async def test_a_declared_length_evicts_nothing_until_the_bytes_arrive(
    start_service: StartService, config: Config
) -> None:
    """A declared Content-Length is weighed, never acted on: an upload that says 8 MiB and
    sends nothing leaves every finished job in place; one that could never fit is 507 at
    once, still without evicting."""
    service = await start_service(storage_quota_bytes=10 * MIB)
    state = service.state
    finished = {
        await make_finished_job(state.db, state.paths, size=MIB, now=state.now()) for _ in range(3)
    }  # 6 MiB of 10: room for 2.5 MiB more under the high mark, 8.5 after evictions
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        token = (await http.post("/api/auth", json={"password": config.auth_password})).json()
        authorization = f"Bearer {token['token']}"
        http.headers["Authorization"] = authorization
        async with await declare_upload(service.url, authorization, 8 * MIB):
            await trio.sleep(1.0)  # the headers are in; not a byte of the body
            listed = (await http.get("/api/jobs")).json()
            assert {job["id"]: job["status"] for job in listed} == dict.fromkeys(
                finished, "completed"
            )
        async with await declare_upload(service.url, authorization, 20 * MIB) as stream:
            status, body = await read_response(stream)
        assert status == 507, body
        assert body == {"error": NO_ROOM}
        listed = (await http.get("/api/jobs")).json()
        assert {job["id"]: job["status"] for job in listed} == dict.fromkeys(finished, "completed")


async def test_an_upload_refused_part_way_leaves_no_connection_behind(tmp_path: Path) -> None:
    """A client still sending a large body hears the refusal, and the connection ends, so
    a graceful shutdown right after it ends within its grace.

    Hypercorn queues the request's end for the app from inside the answer's last send
    and waits for room in that small queue: a receive loop still waiting for a reader of
    the unread body (its buffer full) never made that room. The send, shielded, hung for
    ever, and with it the connection and every later graceful shutdown. (The service
    runs as a process of its own, so that such a hang fails this test, not the run.)"""
    body = tmp_path / "body"
    part = b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="videos"; '
    part += b'filename="big.mp4"\r\nContent-Type: video/mp4\r\n\r\n'
    body.write_bytes(part + bytes(128 * MIB) + b"\r\n--" + BOUNDARY + b"--\r\n")
    quota = str(4 * MIB)
    async with running_service(tmp_path / "data", STORAGE_QUOTA_BYTES=quota) as service:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
            login = await http.post("/api/auth", json={"password": service.password})
        sent = await trio.run_process(
            ["curl", "-sS", "-m", "30", "-D", "-", "-H", "Transfer-Encoding: chunked",
             "-H", f"Content-Type: {MULTIPART}",
             "-H", f"Authorization: Bearer {login.json()['token']}",
             "--data-binary", f"@{body}", f"{service.url}/api/jobs"],
            capture_stdout=True, check=False,
        )  # fmt: skip
        # The last of the heads: curl may have been told to go on (100) first.
        answer = sent.stdout.decode()
        answer = answer[answer.rfind("HTTP/1.1 ") :]
        assert answer.startswith("HTTP/1.1 507"), answer
        assert "connection: close" in answer.lower()
        assert json.loads(answer.partition("\r\n\r\n")[2]) == {"error": NO_ROOM}
        service.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(GRACE_S + 10):
            output = await drain(service)
            await service.process.wait()
        assert service.process.returncode == 0, "still running after its grace"
    assert "Traceback" not in output, output
    assert list((tmp_path / "data").glob("uploads/*")) == []


# --- media limits -------------------------------------------------------------------------


def clip(width: int, height: int, *, fps: float = 30.0, duration_s: float = 10.0) -> Probe:
    return Probe(
        duration_s=duration_s, width=width, height=height, fps=fps, has_audio=True,
        video_codec="h264",
    )  # fmt: skip


@pytest.mark.parametrize(
    "probed",
    [
        clip(3840, 2160),
        clip(2160, 3840),
        clip(1080, 1920, fps=120),
        clip(640, 360, duration_s=10800),
    ],
    ids=["4k-landscape", "4k-portrait", "120-fps", "3-hours"],
)
def test_default_limits_accept_4k_either_way_up_to_120_fps_and_3_hours(probed: Probe) -> None:
    assert media_limit_breach("ad.mp4", probed, Config()) is None


def shown(text: str) -> str:
    """`text` with each `*` as the multiplication sign the service writes sizes with."""
    return text.replace("*", "\N{MULTIPLICATION SIGN}")


LARGEST = "the largest accepted is 3840*2160 or 2160*3840."


@pytest.mark.parametrize(
    ("probed", "message"),
    [
        (clip(8192, 8192), f"“ad.mp4” is 8192*8192; {LARGEST}"),
        (clip(3841, 2160), f"“ad.mp4” is 3841*2160; {LARGEST}"),
        (clip(2200, 2200), f"“ad.mp4” is 2200*2200; {LARGEST}"),
        (
            clip(1920, 1080, fps=240),
            "“ad.mp4” runs at 240 frames per second; the most accepted is 120.",
        ),
        (
            clip(1920, 1080, duration_s=4 * 3600),
            "“ad.mp4” is 4 hours long; the longest accepted is 3 hours.",
        ),
        (
            clip(1920, 1080, duration_s=10801),
            "“ad.mp4” is longer than 3 hours, the longest accepted.",
        ),
    ],
    ids=[
        "8k-square",
        "one-pixel-wider",
        "square-over-short-side",
        "240-fps",
        "4-hours",
        "just-over",
    ],
)
def test_default_limits_refuse_with_the_file_the_limit_and_its_value(
    probed: Probe, message: str
) -> None:
    assert media_limit_breach("ad.mp4", probed, Config()) == shown(message)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"max_long_side_px": 300, "max_short_side_px": 200},
            "“creative.mp4” is 320*240; the largest accepted is 300*200 or 200*300.",
        ),
        ({"max_fps": 24}, "“creative.mp4” runs at 25 frames per second; the most accepted is 24."),
        (
            {"max_duration_s": 0.5},
            "“creative.mp4” is 1 second long; the longest accepted is 0.5 seconds.",
        ),
    ],
    ids=["size", "fps", "duration"],
)
async def test_upload_over_a_configured_media_limit_is_415_and_leaves_nothing(
    start_service: StartService, config: Config, clips: Any, changes: dict[str, Any], message: str
) -> None:
    async with logged_in(start_service, config, **changes) as http:
        response = await upload(http, [clips.mp4])
        assert response.status_code == 415, response.text
        assert response.json() == {"error": shown(message)}
        assert (await http.get("/api/jobs")).json() == []
    assert leftovers(config) == []


# --- the upload deadline --------------------------------------------------------------------


async def test_upload_slower_than_the_timeout_is_408_and_leaves_nothing(
    start_service: StartService, config: Config, clips: Any
) -> None:
    timeout_s = 0.5
    async with logged_in(start_service, config, upload_timeout_s=timeout_s) as http:
        token = http.headers["Authorization"]
        address = urlsplit(str(http.base_url))
    body = form_body([("videos", "slow.mp4", clips.mp4.read_bytes())])
    head = (
        f"POST /api/jobs HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: {token}\r\n"
        f"Content-Type: {MULTIPART}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(address.hostname or "", address.port or 0)
        async with stream:
            started = trio.current_time()
            await stream.send_all(head + body[:1024])  # the part's headers: its file is open

            async def file_open() -> bool:
                return bool(list((config.data_dir / "uploads").rglob("*.upload")))

            await wait_for(file_open)

            async def trickle() -> None:
                # 100 bytes per 50 ms, and never the last byte: the form never completes.
                for position in range(1024, len(body) - 1, 100):
                    try:
                        await stream.send_all(body[position : min(position + 100, len(body) - 1)])
                    except trio.BrokenResourceError:
                        return  # the server answered and closed
                    await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                status, answer = await read_response(stream)
                nursery.cancel_scope.cancel()
            elapsed = trio.current_time() - started
    assert status == 408, answer
    assert answer == {
        "error": "The upload took longer than 0.5 seconds, the longest an upload may take; "
        "try again with fewer or smaller videos, or on a faster connection."
    }
    assert elapsed >= timeout_s
    assert leftovers(config) == []


async def read_response(stream: trio.SocketStream) -> tuple[int, Any]:
    """Read one HTTP/1.1 response with a Content-Length from `stream`: status, JSON body."""
    received = b""
    while b"\r\n\r\n" not in received:
        data = await stream.receive_some()
        assert data, f"the connection closed after {received!r}"
        received += data
    head, _, body = received.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    assert length is not None, head
    while len(body) < int(length.group(1)):
        data = await stream.receive_some()
        assert data, f"the connection closed after {received + body!r}"
        body += data
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def test_room_is_never_asked_past_the_declared_length() -> None:
    asked: list[int] = []

    async def ask(nbytes: int) -> None:
        asked.append(nbytes)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 1000

    passed = [len(chunk) async for chunk in room_checked(body(), 0, ask, declared=3000)]
    assert passed == [1000] * 3
    assert asked == [3000]  # one ask, for what was declared: not the first 1 MiB step
