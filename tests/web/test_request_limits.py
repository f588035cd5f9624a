"""Memory is bounded by configuration for every part of every request (DESIGN §5,
invariant 11): form fields, part headers, the header block, and the boundary, all refused
with a 4xx as soon as they pass their limit, whatever the client goes on sending."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from tests.support.forms import BOUNDARY, form_body
from tests.support.memory import watch_memory
from web.http.bodies import MAX_HEADER_BLOCK_BYTES
from web.http.multipart import (
    MAX_BOUNDARY_BYTES,
    MAX_FIELDS,
    MAX_FIELDS_TOTAL_BYTES,
    MAX_PART_HEADER_BYTES,
)
from wiring.service import RunningService

MULTIPART = f"multipart/form-data; boundary={BOUNDARY.decode()}"
# What refusing a form may cost the service, whatever was sent.
GROWTH_MIB = 16


def assert_json_error(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"error": message}


@pytest.fixture
async def changes_nothing(service: RunningService) -> AsyncIterator[None]:
    yield
    assert os.listdir(service.state.paths.uploads) == []
    assert (await service_health(service)) == 200


async def service_health(service: RunningService) -> int:
    async with httpx.AsyncClient(base_url=service.url) as http:
        return (await http.get("/api/health")).status_code


def field(name: str, value: bytes) -> bytes:
    return (
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n' + value + b"\r\n"
    )


async def endless_fields(*, distinct: bool) -> AsyncIterator[bytes]:
    """Small fields for ever (each ~100 bytes), sent 64 KiB at a time."""
    number = 0
    while True:
        batch = bytearray()
        while len(batch) < 65536:
            number += 1
            name = f"field{number}" if distinct else "variations"
            batch += field(name, b"%d" % number * 8)
        yield bytes(batch)


@pytest.mark.parametrize("distinct", [True, False], ids=["distinct-names", "one-name"])
@pytest.mark.usefixtures("changes_nothing")
async def test_a_form_of_endless_small_fields_is_refused_early(
    authed: httpx.AsyncClient, distinct: bool
) -> None:
    async with watch_memory() as peak:
        with trio.fail_after(30):
            response = await authed.post(
                "/api/jobs", content=endless_fields(distinct=distinct),
                headers={"Content-Type": MULTIPART},
            )  # fmt: skip
    assert response.status_code == 400, response.text
    assert response.json()["error"] in {
        f"The form has more than {MAX_FIELDS} fields.",
        f"The form has more than {10 + 16} parts.",
        f"The form's fields hold more than {MAX_FIELDS_TOTAL_BYTES // 1024} KiB in all.",
    }
    assert response.headers["connection"] == "close"
    assert peak.growth_mib < GROWTH_MIB, f"grew {peak.growth_mib:.0f} MiB"


@pytest.mark.usefixtures("changes_nothing")
async def test_fields_past_their_total_are_refused(authed: httpx.AsyncClient) -> None:
    fields = [(f"f{n}", None, b"x" * 4000) for n in range(5)]  # 20,000 bytes in all
    response = await authed.post(
        "/api/jobs", content=form_body(fields), headers={"Content-Type": MULTIPART}
    )
    assert_json_error(
        response,
        400,
        f"The form's fields hold more than {MAX_FIELDS_TOTAL_BYTES // 1024} KiB in all.",
    )


@pytest.mark.usefixtures("changes_nothing")
async def test_a_part_header_past_its_limit_is_refused(authed: httpx.AsyncClient) -> None:
    body = (
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="videos"; filename="a.mp4"\r\n'
        b"X-Padding: " + b"p" * (4 * MAX_PART_HEADER_BYTES) + b"\r\n\r\nvideo\r\n"
        b"--" + BOUNDARY + b"--\r\n"
    )
    response = await authed.post("/api/jobs", content=body, headers={"Content-Type": MULTIPART})
    assert response.status_code == 400, response.text
    assert response.json()["error"] in {
        f"A part of the form has headers over {MAX_PART_HEADER_BYTES} bytes.",
        "The upload is not a well-formed form.",  # the parser's own cap, where it has one
    }


@pytest.mark.parametrize("length", [MAX_BOUNDARY_BYTES + 1, 257, 300, 5000])
@pytest.mark.usefixtures("changes_nothing")
async def test_a_boundary_past_rfc_2046_is_400(authed: httpx.AsyncClient, length: int) -> None:
    boundary = "b" * length
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--{boundary}--\r\n'
    )
    response = await authed.post(
        "/api/jobs",
        content=body.encode(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_json_error(
        response, 400, f"The form's boundary is longer than {MAX_BOUNDARY_BYTES} characters."
    )


@pytest.mark.usefixtures("changes_nothing")
async def test_a_header_block_past_hypercorns_limit_is_refused(
    service: RunningService,
) -> None:
    """A block that arrives in one read passed Hypercorn's 16 KiB limit (the service reads
    up to 1 MiB at a time); it is held to the same limit once it has arrived."""
    pad = "p" * (MAX_HEADER_BLOCK_BYTES + 1024)
    async with httpx.AsyncClient(base_url=service.url) as http:
        response = await http.get("/api/health", headers={"X-Padding": pad})
    assert response.status_code == 431
    if response.content:  # Hypercorn answers itself, bodiless, when the block came in pieces
        assert response.json() == {
            "error": f"The request's headers are larger than {MAX_HEADER_BLOCK_BYTES // 1024} "
            "KiB, the most this server takes."
        }
