"""Hostile input at the web edge: a 4xx JSON answer, never a 500, and nothing changed."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from tests.support.forms import BOUNDARY, chunks, form_body
from tests.support.http import TEST_PASSWORD
from tests.support.jobs import make_finished_job
from tests.support.tus import TUS, declare, offset_of
from web.http import patches
from web.http.bodies import SMALL_BODY, BodyLimit
from web.http.errors import ApiError
from web.http.patches import BoundedBody
from web.routes.uploads import parse_variations
from wiring.service import RunningService

NOT_JSON = 'Send JSON like {"password": "..."}: the body is not JSON in UTF-8.'
LOGIN_TOO_LARGE = "A login request is a small JSON object; this one is too large."
SMALL_TOO_LARGE = "This request's body is larger than 64 KiB, the most this route accepts."
INVALID_TOKEN = "That token is not valid; log in again."
MULTIPART = f"multipart/form-data; boundary={BOUNDARY.decode()}"


async def pieces(data: bytes, size: int = 1024) -> AsyncIterator[bytes]:
    """`data` as a chunked body (no Content-Length), `size` bytes a chunk."""
    async for piece in chunks(data, [size] * (len(data) // size + 1)):
        yield piece


@pytest.fixture
async def changes_nothing(service: RunningService) -> AsyncIterator[None]:
    """After a case against the service: no upload left on disk, and still healthy."""
    yield
    assert os.listdir(service.state.paths.uploads) == []
    async with httpx.AsyncClient(base_url=service.url) as http:
        health = await http.get("/api/health")
    assert health.status_code == 200, health.text
    assert all(actor["restarts"] == 0 for actor in health.json()["actors"].values())


def assert_json_error(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": message}


async def finished_job(service: RunningService) -> str:
    return await make_finished_job(service.state.db, service.state.paths)


# --- the login body ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        # 2,000 deep (4,000 bytes, under the login limit): RecursionError in the parser.
        pytest.param(b"[" * 2000 + b"]" * 2000, id="nested-2000-deep"),
        pytest.param(b'{"password": "\xff"}', id="invalid-utf-8"),
        pytest.param(b'{"password": "\xed\xa0\x80"}', id="utf-8-encoded-surrogate"),
        pytest.param(b'\xef\xbb\xbf{"password": "x"}', id="byte-order-mark"),
        pytest.param(b'{"password": "x"', id="truncated"),
    ],
)
@pytest.mark.usefixtures("changes_nothing")
async def test_login_body_that_is_not_json_in_utf8_is_400(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post(
        "/api/auth", content=body, headers={"Content-Type": "application/json"}
    )
    assert_json_error(response, 400, NOT_JSON)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.usefixtures("changes_nothing")
async def test_login_body_past_4_kib_is_413(client: httpx.AsyncClient, chunked: bool) -> None:
    body = b'{"password": "' + b"x" * 4100 + b'"}'
    response = await client.post("/api/auth", content=pieces(body) if chunked else body)
    assert_json_error(response, 413, LOGIN_TOO_LARGE)


@pytest.mark.usefixtures("changes_nothing")
async def test_endless_chunked_login_is_refused_before_it_ends(
    client: httpx.AsyncClient,
) -> None:
    # Buffered whole, this body would never end: only a server that refuses it once past
    # the limit answers at all.
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"[" * 65536

    with trio.fail_after(20):
        response = await client.post("/api/auth", content=endless())
    assert_json_error(response, 413, LOGIN_TOO_LARGE)
    assert response.headers["connection"] == "close"
    assert (await client.get("/api/health")).status_code == 200  # on a new connection


@pytest.mark.usefixtures("changes_nothing")
async def test_login_with_a_lone_surrogate_is_a_wrong_password(client: httpx.AsyncClient) -> None:
    # Valid JSON, but no UTF-8 encodes "\ud800": comparing it raised UnicodeEncodeError.
    response = await client.post("/api/auth", content=b'{"password": "\\ud800"}')
    assert_json_error(response, 401, "That password is not right.")


@pytest.mark.usefixtures("changes_nothing")
async def test_login_still_takes_a_chunked_body(client: httpx.AsyncClient) -> None:
    body = b'{"password": "' + TEST_PASSWORD.encode() + b'"}'
    response = await client.post("/api/auth", content=pieces(body, size=5))
    assert response.status_code == 200
    assert set(response.json()) == {"token", "expiresAt"}


async def test_limited_body_keeps_nothing_past_its_limit() -> None:
    body = BoundedBody(None, None)
    body.set_limit(BodyLimit(4096, "too large"))
    for _ in range(5):
        body.append(b"x" * 1000)  # the fifth passes 4,096 bytes in all
    body.append(b"x" * 1000)  # and what still arrives after it
    assert len(body._data) == 0  # refused: dropped, not kept
    with pytest.raises(ApiError, match=r"^413 Request Entity Too Large: too large$"):
        await body
    with pytest.raises(ApiError, match=r"^413 Request Entity Too Large: too large$"):
        await body.__anext__()


async def test_declared_length_past_the_limit_is_refused_at_once() -> None:
    body = BoundedBody(5000, None)
    body.set_limit(BodyLimit(4096, "too large"))
    body.append(b"x")
    assert len(body._data) == 0
    with pytest.raises(ApiError, match=r"^413 Request Entity Too Large: too large$"):
        await body


# --- a small limit on every route but the upload ------------------------------------------

ROUTES = [
    ("GET", "/api/health"),
    ("GET", "/api/jobs"),
    ("GET", "/api/jobs/{job}"),
    ("POST", "/api/jobs/{job}/cancel"),
    ("DELETE", "/api/jobs/{job}"),
    ("GET", "/api/jobs/{job}/download"),
    ("HEAD", "/api/jobs/{job}/download"),
    ("GET", "/api/jobs/{job}/thumbnail"),
    ("GET", "/api/jobs/{job}/events"),
    ("GET", "/"),
    ("GET", "/static/app.js"),
    ("GET", "/api/no-such-route"),
    ("PUT", "/api/health"),  # a method not allowed
]


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.usefixtures("changes_nothing")
async def test_every_route_but_the_upload_refuses_a_large_body(
    service: RunningService, authed: httpx.AsyncClient, method: str, path: str, chunked: bool
) -> None:
    job_id = await finished_job(service)
    body = b"x" * (SMALL_BODY.max_bytes + 1)
    response = await authed.request(
        method, path.format(job=job_id), content=pieces(body, 8192) if chunked else body
    )
    assert response.status_code == 413
    assert response.headers["connection"] == "close"
    if method != "HEAD":
        assert response.json() == {"error": SMALL_TOO_LARGE}
    assert (await authed.get(f"/api/jobs/{job_id}")).json()["status"] == "completed"


@pytest.mark.usefixtures("changes_nothing")
async def test_delete_with_a_large_body_deletes_nothing(
    service: RunningService, authed: httpx.AsyncClient
) -> None:
    job_id = await finished_job(service)
    body = pieces(b"x" * 1024 * 1024, 65536)
    assert (await authed.request("DELETE", f"/api/jobs/{job_id}", content=body)).status_code == 413
    assert (await authed.get(f"/api/jobs/{job_id}")).status_code == 200
    assert len(list(service.state.paths.job_dir(job_id).glob("*.mp4"))) == 2


@pytest.mark.usefixtures("changes_nothing")
async def test_a_small_body_on_any_route_is_still_fine(authed: httpx.AsyncClient) -> None:
    response = await authed.request("GET", "/api/jobs", content=b"x" * SMALL_BODY.max_bytes)
    assert response.status_code == 200


@pytest.mark.usefixtures("changes_nothing")
async def test_the_upload_takes_a_chunked_body_past_the_small_limit(
    service: RunningService, authed: httpx.AsyncClient
) -> None:
    # 200 KiB reaches the form's end: the answer is about its fields, not its size.
    body = form_body([("videos", "a.mp4", b"v" * 200 * 1024), ("variations", None, b"0")])
    response = await authed.post(
        "/api/jobs", content=pieces(body, 65536), headers={"Content-Type": MULTIPART}
    )
    assert_json_error(response, 400, "variations must be a whole number from 1 to 20; got “0”.")


# --- variation counts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("1_0", id="digit-separator"),
        pytest.param("٣", id="arabic-indic-three"),
        pytest.param("\N{FULLWIDTH DIGIT THREE}", id="fullwidth-three"),
        pytest.param("+3", id="plus-sign"),
        pytest.param("-3", id="minus-sign"),
        pytest.param("3.0", id="decimal"),
        pytest.param("1e1", id="exponent"),
        pytest.param("0x3", id="hex"),
        pytest.param("0", id="zero"),
        pytest.param("21", id="above-maximum"),
        pytest.param("9" * 5000, id="five-thousand-digits"),
    ],
)
def test_variations_other_than_ascii_digits_in_range_are_400(raw: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse_variations(raw, 20)
    assert refused.value.code == 400
    assert refused.value.description == (
        f"variations must be a whole number from 1 to 20; got “{raw[:20]}”."
    )


@pytest.mark.parametrize(("raw", "count"), [("1", 1), (" 20 ", 20), ("007", 7), (None, 5)])
def test_variations_in_ascii_digits_are_taken(raw: str | None, count: int) -> None:
    assert parse_variations(raw, 20) == count


@pytest.mark.usefixtures("changes_nothing")
async def test_upload_with_a_non_ascii_count_is_400_and_keeps_nothing(
    service: RunningService, authed: httpx.AsyncClient
) -> None:
    response = await authed.post(
        "/api/jobs",
        data={"variations": "٣"},
        files={"videos": ("a.mp4", b"not a video at all", "video/mp4")},
    )
    assert_json_error(response, 400, "variations must be a whole number from 1 to 20; got “٣”.")
    assert (await authed.get("/api/jobs")).json() == []
    assert list(service.state.paths.root.glob("uploads/*")) == []


# --- headers the download reads -----------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        # Naive once parsed: compared with the archive's aware time it raised (a 500).
        ({"If-Unmodified-Since": "Sun, 06 Nov 1994 08:49:37 -0000"}, 412),
        ({"If-Unmodified-Since": "Fri, 01 Jan 2100 00:00:00 -0000"}, 200),
        ({"If-Unmodified-Since": "Sun, 06 Nov 99999999999999999999 08:49:37 GMT"}, 200),
        ({"If-Unmodified-Since": "not a date"}, 200),
        ({"Range": "bytes=0-9", "If-Range": "Sun, 06 Nov 1994 08:49:37 -0000"}, 200),
        ({"Range": "bytes=0-9", "If-Range": "Sun, 06 Nov 1994 08:49:37 +99999"}, 200),
        ({"Range": "bytes=1_0-20"}, 200),  # int() reads digit separators
        ({"Range": "bytes=+5-10"}, 200),
        ({"Range": "items=0-5"}, 200),
        ({"Range": "bytes=0-1,5-6"}, 200),
        ({"Range": "bytes=" + "9" * 5000 + "-"}, 200),
        ({"Range": "bytes=0-9"}, 206),
        ({"If-Match": '"x", W/"y", *'}, 200),
    ],
    ids=lambda value: repr(value)[:60] if isinstance(value, dict) else str(value),
)
@pytest.mark.usefixtures("changes_nothing")
async def test_odd_download_headers_get_the_archive_or_a_4xx(
    service: RunningService, authed: httpx.AsyncClient, headers: dict[str, str], status: int
) -> None:
    job_id = await finished_job(service)
    response = await authed.get(f"/api/jobs/{job_id}/download", headers=headers)
    assert response.status_code == status, response.text
    if status == 200:
        assert response.headers["content-type"] == "application/zip"
        assert int(response.headers["content-length"]) == len(response.content)


# --- tokens, hosts, paths, methods --------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        # Non-ASCII in a token's payload failed signing with UnicodeEncodeError (a 500).
        pytest.param("Bearer v1.é.AAAA".encode("latin-1"), id="non-ascii-payload"),
        pytest.param("Bearer v1.AAAA.é".encode("latin-1"), id="non-ascii-signature"),
        pytest.param(b"Bearer " + b"A" * 12_000, id="12000-characters"),
        pytest.param(b"Bearer v1.e30.AAAA.AAAA", id="four-parts"),
        pytest.param(b"Bearer \x01\x02", id="control-characters"),
    ],
)
@pytest.mark.usefixtures("changes_nothing")
async def test_odd_bearer_tokens_are_401(client: httpx.AsyncClient, authorization: bytes) -> None:
    response = await client.get("/api/jobs", headers={b"Authorization": authorization})
    assert_json_error(response, 401, INVALID_TOKEN)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("v1.é.AAAA", id="non-ascii-payload"),
        pytest.param("v1.\ud7ff.AAAA", id="hangul-payload"),
        pytest.param("v1." + "A" * 5000 + ".AAAA", id="5000-characters"),
        pytest.param("%ff", id="undecodable"),
    ],
)
@pytest.mark.usefixtures("changes_nothing")
async def test_odd_signed_link_tokens_are_401(
    service: RunningService, client: httpx.AsyncClient, token: str
) -> None:
    job_id = await finished_job(service)
    for route in ("download", "thumbnail", "events"):
        response = await client.get(f"/api/jobs/{job_id}/{route}", params={"token": token})
        assert_json_error(response, 401, INVALID_TOKEN)


@pytest.mark.usefixtures("changes_nothing")
async def test_host_that_cannot_be_routed_is_400_json(client: httpx.AsyncClient) -> None:
    # A 64-character label: IDNA refuses it, and Quart let BadHost out as a bare 500.
    response = await client.get("/api/health", headers={"Host": "a" * 64 + ".example"})
    assert_json_error(response, 400, "The Host header is not a host name this server can route.")


@pytest.mark.usefixtures("changes_nothing")
async def test_static_name_the_file_system_refuses_is_404_json(
    client: httpx.AsyncClient,
) -> None:
    name = "a" * 300  # ENAMETOOLONG from os.stat was a 500
    response = await client.get(f"/static/{name}")
    assert_json_error(response, 404, f"There is nothing at GET /static/{name}.")


@pytest.mark.parametrize("path", ["/", "/static/app.js"])
@pytest.mark.usefixtures("changes_nothing")
async def test_static_file_under_a_failed_if_match_is_412_json(
    client: httpx.AsyncClient, path: str
) -> None:
    # Quart answered 412 with the whole file as its body.
    response = await client.get(path, headers={"If-Match": '"not-this-one"'})
    assert_json_error(response, 412, "This file has changed since the version named in If-Match.")


@pytest.mark.usefixtures("changes_nothing")
async def test_static_range_beyond_the_file_is_416_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/static/app.js", headers={"Range": "bytes=99999999-"})
    assert response.status_code == 416
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"error"}


@pytest.mark.parametrize(
    "job",
    [
        pytest.param("%00", id="nul"),
        pytest.param("%ff%fe", id="invalid-utf-8"),
        pytest.param("%ed%a0%80", id="encoded-surrogate"),
        pytest.param("%E2%98%83", id="snowman"),
        pytest.param("%2e%2e", id="dot-dot"),
        pytest.param("a" * 5000, id="5000-characters"),
        pytest.param("'%20OR%201=1--", id="sql"),
    ],
)
@pytest.mark.usefixtures("changes_nothing")
async def test_job_paths_with_odd_characters_are_404_json(
    authed: httpx.AsyncClient, job: str
) -> None:
    for method, path in [
        ("GET", "/api/jobs/{}"),
        ("DELETE", "/api/jobs/{}"),
        ("POST", "/api/jobs/{}/cancel"),
        ("GET", "/api/jobs/{}/download"),
        ("GET", "/api/jobs/{}/thumbnail"),
        ("GET", "/api/jobs/{}/events"),
    ]:
        response = await authed.request(method, path.format(job))
        assert_json_error(response, 404, "There is no such job; it may have been deleted.")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/jobs"),
        ("PATCH", "/api/auth"),
        ("GET", "/api/auth"),
        ("POST", "/api/health"),
        ("POST", "/api/jobs/x/download"),
        ("TRACE", "/api/jobs"),
        ("BREW", "/"),
    ],
)
@pytest.mark.usefixtures("changes_nothing")
async def test_methods_not_allowed_are_405_json(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path)
    assert_json_error(response, 405, f"{method} is not allowed on {path}.")
    assert response.headers["allow"]


@pytest.mark.usefixtures("changes_nothing")
async def test_a_small_body_that_never_arrives_is_408_not_a_held_connection(
    service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(patches, "SMALL_BODY_TIMEOUT_S", 0.5)
    host, port = service.url.removeprefix("http://").split(":")
    with trio.fail_after(10):
        sock = trio.socket.socket()
        await sock.connect((host, int(port)))
        # A login that declares a body and sends three bytes of it, then nothing.
        await sock.send(
            b"POST /api/auth HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"p'
        )
        answer = b""
        while chunk := await sock.recv(65536):
            answer += chunk
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"error"' in answer


# --- resumable uploads, jobs by reference, retries ------------------------------------


@pytest.mark.parametrize(
    "offset", ["abc", "-5", "1.5", "9" * 40, "0x10", "+3", "1_0"], ids=lambda raw: repr(raw)
)
@pytest.mark.usefixtures("changes_nothing")
async def test_a_patch_with_an_odd_offset_is_400_and_keeps_nothing(
    authed: httpx.AsyncClient, offset: str
) -> None:
    location = (await declare(authed, 100)).headers["Location"]
    response = await authed.patch(
        location, content=b"x" * 10,
        headers={**TUS, "Upload-Offset": offset,
                 "Content-Type": "application/offset+octet-stream"},
    )  # fmt: skip
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("Upload-Offset must be a whole number of bytes")
    assert await offset_of(authed, location) == 0


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.usefixtures("changes_nothing")
async def test_a_patch_past_the_declared_length_keeps_only_what_fits(
    authed: httpx.AsyncClient, chunked: bool
) -> None:
    location = (await declare(authed, 1000)).headers["Location"]
    body = b"z" * 200_000
    response = await authed.patch(
        location, content=pieces(body, 8192) if chunked else body,
        headers={**TUS, "Upload-Offset": "0",
                 "Content-Type": "application/offset+octet-stream"},
    )  # fmt: skip
    assert response.status_code == 413, response.text
    assert response.json()["error"]
    assert await offset_of(authed, location) in (0, 1000)  # declared: refused whole


@pytest.mark.usefixtures("changes_nothing")
async def test_resumable_routes_refuse_odd_requests_with_json(authed: httpx.AsyncClient) -> None:
    location = (await declare(authed, 100)).headers["Location"]
    wrong_type = await authed.patch(
        location, content=b"x", headers={**TUS, "Upload-Offset": "0", "Content-Type": "text/plain"}
    )
    assert wrong_type.status_code == 415
    for odd in ("../../etc/passwd", "%00", "a" * 5000, "0" * 32, location.rsplit("/", 1)[1] + "x"):
        assert (await authed.head(f"/api/uploads/{odd}", headers=TUS)).status_code in (404, 405)
        response = await authed.delete(f"/api/uploads/{odd}", headers=TUS)
        assert response.status_code in (404, 405), response.text
    async with httpx.AsyncClient(base_url=str(authed.base_url)) as anonymous:
        refused = await anonymous.patch(location, content=b"x" * 10, headers=TUS)
    assert refused.status_code == 401
    huge = await authed.post(
        "/api/jobs", content=b'{"uploads": ["' + b"a" * 100_000 + b'"]}',
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert huge.status_code == 413
    for body in (b"[", b'{"uploads": ' + b"[" * 5000, b"\xff\xfe"):
        broken = await authed.post(
            "/api/jobs", content=body, headers={"Content-Type": "application/json"}
        )
        assert_json_error(broken, 400, "The body is not JSON in UTF-8.")
    retry = await authed.post("/api/jobs/%00/files/%ff%fe/retry")
    assert retry.status_code == 404
    assert retry.json()["error"]
