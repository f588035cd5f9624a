"""No download lease outlives its download, however the client leaves."""

from __future__ import annotations

import random
import socket
import struct
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tests.support.http import TEST_PASSWORD
from tests.support.jobs import lease_count, make_finished_job, wait_for_leases
from web.app import create_app
from wiring.service import RunningService

# The job lifecycle, leases, removal and downloads hold on either store.
pytestmark = pytest.mark.both_stores

CLIENTS = 16
DROPS_PER_CLIENT = 100


async def token_for(service: RunningService) -> str:
    async with httpx.AsyncClient(base_url=service.url) as http:
        answer = await http.post("/api/auth", json={"password": TEST_PASSWORD})
    value: str = answer.json()["token"]
    return value


async def test_a_client_leaving_as_the_headers_go_out_releases_its_lease(
    service: RunningService,
) -> None:
    """The body generator never starts here, so its `finally` cannot be what releases."""
    job_id = await make_finished_job(service.state.db, service.state.paths)
    token = await token_for(service)
    app = create_app(service.state)
    headers_sent = trio.Event()

    request_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if not request_sent:  # the whole request: a GET has an empty body
            request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await headers_sent.wait()
        return {"type": "http.disconnect"}  # the client is gone the moment headers leave

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200
            headers_sent.set()
            await trio.sleep_forever()  # the transport never takes the headers

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": f"/api/jobs/{job_id}/download",
        "raw_path": f"/api/jobs/{job_id}/download".encode(), "query_string": b"",
        "root_path": "", "headers": [(b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 80), "extensions": {},
    }  # fmt: skip
    with trio.fail_after(10):
        await app(scope, receive, send)  # type: ignore[arg-type]
    assert headers_sent.is_set()
    assert await lease_count(service.state) == 0


async def _download_and_drop(
    host: str, port: int, request: bytes, rng: random.Random, stats: dict[str, int]
) -> None:
    sock = trio.socket.socket()
    try:
        await sock.connect((host, port))
        await sock.send(request)
        moment = rng.choice(["before the answer", "at the headers", "after some bytes"])
        stats[moment] += 1
        if moment != "before the answer":
            wanted = rng.randint(1, 300) if moment == "at the headers" else rng.randint(1, 5)
            received = 0
            while received < wanted * (1 if moment == "at the headers" else 65536):
                chunk = await sock.recv(65536)
                if not chunk:
                    break
                received += len(chunk)
        if rng.random() < 0.3:  # some leave with a reset instead of a close
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stats["with a reset"] += 1
    finally:
        sock.close()


async def test_clients_dropping_downloads_at_random_moments_leak_no_lease(
    service: RunningService,
) -> None:
    job_id = await make_finished_job(
        service.state.db, service.state.paths, variations=4, size=1024 * 1024
    )
    token = await token_for(service)
    host, port = service.url.removeprefix("http://").split(":")
    request = (
        f"GET /api/jobs/{job_id}/download HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    stats = dict.fromkeys(
        ["before the answer", "at the headers", "after some bytes", "with a reset"], 0
    )

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        for _drop in range(DROPS_PER_CLIENT):
            await _download_and_drop(host, int(port), request, rng, stats)
            if rng.random() < 0.5:
                await trio.sleep(rng.random() * 0.01)

    with trio.fail_after(120):
        async with trio.open_nursery() as clients:
            for seed in range(CLIENTS):
                clients.start_soon(client, seed)
        await wait_for_leases(service.state, 0, polls=2000)
    print(f"dropped downloads: {CLIENTS * DROPS_PER_CLIENT} ({stats}); leaked leases: 0")
    # Nothing holds the job now: it can be deleted at once.
    async with httpx.AsyncClient(base_url=service.url) as http:
        http.headers["Authorization"] = f"Bearer {token}"
        assert (await http.delete(f"/api/jobs/{job_id}")).status_code == 200
