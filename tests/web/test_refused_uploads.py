"""An upload refused while its body still arrives: the client gets the refusal, not a reset.

A client (httpx, a browser's XHR) sends its whole body before it reads the answer; a
server that answered and closed with bytes unread would reset the connection, and the
page would show "connection lost" where it should show the server's sentence (or, for a
401, the login). Hypercorn reads a refused body to its end before it closes; each case
here sends a body of several MiB that the server refuses early, and keeps that true.
"""

from __future__ import annotations

import httpx
import pytest

from tests.support.forms import BOUNDARY, chunks, form_body
from tests.support.http import TEST_PASSWORD, StartService

MULTIPART = f"multipart/form-data; boundary={BOUNDARY.decode()}"
# Far more than the socket buffers hold, so the client still sends when refused.
BODY = form_body([("variations", None, b"2"), ("videos", "big.mp4", b"\0" * (8 * 1024 * 1024))])


async def post(
    http: httpx.AsyncClient, token: str | None, *, chunked: bool = False
) -> httpx.Response:
    headers = {"Content-Type": MULTIPART}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    content = chunks(BODY, [256 * 1024] * 40) if chunked else BODY
    return await http.post("/api/jobs", content=content, headers=headers)


async def log_in(http: httpx.AsyncClient) -> str:
    token: str = (await http.post("/api/auth", json={"password": TEST_PASSWORD})).json()["token"]
    return token


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_upload_without_a_valid_session_gets_its_401(
    start_service: StartService, chunked: bool
) -> None:
    service = await start_service()
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        for token in (None, "v1.forged.token"):
            answer = await post(http, token, chunked=chunked)
            assert answer.status_code == 401
            assert answer.json()["error"]


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_upload_with_no_room_gets_its_507(
    start_service: StartService, chunked: bool
) -> None:
    service = await start_service(storage_quota_bytes=1024 * 1024)
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        answer = await post(http, await log_in(http), chunked=chunked)
        assert answer.status_code == 507
        assert "no room" in answer.json()["error"]
        # The connection still answers: the refused body was read to its end.
        assert (await http.get("/api/health")).status_code == 200


async def test_a_file_over_the_limit_gets_its_413(start_service: StartService) -> None:
    service = await start_service(max_upload_bytes=1024 * 1024)
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        answer = await post(http, await log_in(http), chunked=True)
        assert answer.status_code == 413
        assert "1 MiB" in answer.json()["error"]
