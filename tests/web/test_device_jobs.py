"""The original client's device mode: variations made in the browser, kept as a job here.

Every request is shaped as the original client sends it (akleads/video-refresher:
`views/device-progress.js` builds the form, `lib/device-processing/worker-pool.js` names
the results): a `sourceFiles` field, JSON `[{"name", "variationCount"}]`, then each
result in `results`, named `<base>/<base>_var<N>_<8 hex>.mp4`; the answer it reads is
`201 {jobId, status, totalVideos, totalVariations, source}`.
"""

from __future__ import annotations

import io
import json
import re
import unicodedata
import zipfile
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from refresher.config import Config
from refresher.jobs.device import (
    DeviceResultsRefused,
    ResultMatch,
    SourceFile,
    match_results,
    parse_source_files,
)
from tests.support.clips import Clips
from tests.support.clock import wait_for
from tests.support.forms import BOUNDARY, chunks, form_body
from tests.support.http import TEST_PASSWORD, StartService
from tests.support.jobs import leftovers
from tests.support.s3 import S3Server
from wiring.service import RunningService

MULTIPART = f"multipart/form-data; boundary={BOUNDARY.decode()}"
ROUTE = "/api/jobs/device"
# Stands for a real clip's bytes in a parametrized form (the clips are a fixture).
CLIP = b"<clip>"


def device_form(sources: object, results: list[tuple[str, bytes]]) -> bytes:
    """The body the original client sends: `sourceFiles` (JSON unless given as text),
    then each result."""
    listed = sources if isinstance(sources, str) else json.dumps(sources, ensure_ascii=False)
    parts: list[tuple[str, str | None, bytes]] = [("sourceFiles", None, listed.encode())]
    return form_body(parts + [("results", name, content) for name, content in results])


async def post_form(http: httpx.AsyncClient, body: bytes, *, chunked: bool = False) -> Any:
    content = chunks(body, [64 * 1024] * (len(body) // (64 * 1024) + 1)) if chunked else body
    return await http.post(ROUTE, content=content, headers={"Content-Type": MULTIPART})


async def log_in(http: httpx.AsyncClient) -> None:
    answer = await http.post("/api/auth", json={"password": TEST_PASSWORD})
    http.headers["Authorization"] = f"Bearer {answer.json()['token']}"


async def read_response(stream: trio.SocketStream) -> tuple[int, str, Any]:
    """One HTTP/1.1 response with a Content-Length: status, header block, JSON body."""
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
        assert data, "the connection closed in the body"
        body += data
    return int(head.split(b" ", 2)[1]), head.decode("latin-1").lower(), json.loads(body)


def assert_nothing_left(config: Config) -> None:
    assert leftovers(config) == []


@pytest.mark.both_blob_stores
async def test_device_results_become_a_completed_job_whose_zip_holds_them(
    service: RunningService, authed: httpx.AsyncClient, clips: Clips, config: Config
) -> None:
    sent = {
        "creative/creative_var1_1a2b3c4d.mp4": clips.mp4.read_bytes(),
        "creative/creative_var2_5e6f7a8b.mp4": clips.mute.read_bytes(),
        "spot/spot_var1_9c0d1e2f.mp4": clips.portrait.read_bytes(),
    }
    body = device_form(
        [{"name": "creative.mp4", "variationCount": 2}, {"name": "spot.mov", "variationCount": 1}],
        list(sent.items()),
    )
    answer = await post_form(authed, body)
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["jobId"]
    assert answer.json() == {
        "jobId": job_id,
        "status": "completed",
        "totalVideos": 2,
        "totalVariations": 3,
        "source": "device",
    }

    [listed] = (await authed.get("/api/jobs")).json()
    assert (listed["id"], listed["status"], listed["source"]) == (job_id, "completed", "device")
    assert listed["fileNames"] == ["creative.mp4", "spot.mov"]
    assert listed["thumbnailUrl"]
    thumbnail = await authed.get(listed["thumbnailUrl"])
    assert thumbnail.status_code == 200
    assert thumbnail.headers["content-type"] == "image/webp"
    detail = (await authed.get(f"/api/jobs/{job_id}")).json()
    assert [file["status"] for file in detail["files"]] == ["completed", "completed"]
    assert [file["completedVariations"] for file in detail["files"]] == [2, 1]
    assert detail["overallProgress"] == 100

    download = await authed.get(f"/api/jobs/{job_id}/download")
    assert download.status_code == 200
    assert len(download.content) == detail["downloadBytes"]
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == [
            "manifest.json",
            "creative/creative_var1.mp4",
            "creative/creative_var2.mp4",
            "spot/spot_var1.mp4",
        ]
        for name, content in sent.items():
            folder, _, file = name.partition("/")
            zipped = f"{folder}/{file.rsplit('_', 1)[0]}.mp4"
            assert archive.read(zipped) == content, zipped
        manifest = json.loads(archive.read("manifest.json"))
    assert {json.dumps(v["effects"]) for v in manifest["variations"]} == {'{"madeOn": "device"}'}
    # Kept: the received copies are gone, and in a bucket so are the local ones.
    assert not [name for name in leftovers(config) if name.startswith("uploads/")]
    if service.state.lifecycle.blobs.remote:
        assert list(service.state.paths.job_dir(job_id).glob("*.mp4")) == []
    # The route's path is never taken for a job's id.
    assert (await authed.get(ROUTE)).status_code == 404


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
@pytest.mark.parametrize("authorization", [None, "Bearer v1.forged.token"], ids=["none", "forged"])
async def test_a_body_without_a_valid_session_is_refused_before_it_is_read(
    service: RunningService, config: Config, chunked: bool, authorization: str | None
) -> None:
    """50 MB announced, 64 KiB sent: the 401 comes back while the rest was never sent."""
    address = urlsplit(service.url)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {50 * 10**6}"
    head = f"POST {ROUTE} HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: {MULTIPART}\r\n"
    head += f"Authorization: {authorization}\r\n" if authorization else ""
    first = b"\0" * 65536
    sent = f"{len(first):x}\r\n".encode() + first + b"\r\n" if chunked else first
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(address.hostname or "", address.port or 0)
        async with stream:
            await stream.send_all(f"{head}{framing}\r\n\r\n".encode() + sent)
            status, headers, answer = await read_response(stream)
    assert status == 401
    assert answer["error"]
    assert "connection: close" in headers  # the rest of the body is not waited for
    assert_nothing_left(config)


async def test_a_body_declared_past_the_limit_is_413_at_once(
    service: RunningService, token: str, config: Config
) -> None:
    """A terabyte announced, nothing sent: refused on the length alone."""
    address = urlsplit(service.url)
    head = (
        f"POST {ROUTE} HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {MULTIPART}\r\nContent-Length: {10**12}\r\n\r\n"
    )
    with trio.fail_after(10):
        async with await trio.open_tcp_stream(address.hostname or "", address.port or 0) as stream:
            await stream.send_all(head.encode())
            status, _, answer = await read_response(stream)
    assert status == 413
    assert answer == {
        "error": "The results add up to more than 10 videos of 500 MiB, the most one device "
        "job may send."
    }
    assert_nothing_left(config)


async def test_a_chunked_body_is_bounded_in_all(
    start_service: StartService, config: Config
) -> None:
    """Each result under its own limit, but more bytes in all than one job may send (10
    files of 32 KiB and the form's 1 MiB): 413 as the bytes pass the limit, where a body
    within it would be probed (and refused as no video, 415)."""
    service = await start_service(max_upload_bytes=32 * 1024)
    sources = [{"name": f"ad{n}.mp4", "variationCount": 20} for n in range(3)]
    results = [(f"ad{n // 20}_var{n % 20 + 1}_{n:08x}.mp4", b"\0" * (30 * 1024)) for n in range(60)]
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        await log_in(http)
        answer = await post_form(http, device_form(sources, results), chunked=True)
    # This route's own count or Quart's (MAX_CONTENT_LENGTH, on what it holds) comes first.
    assert answer.status_code == 413
    assert answer.json()["error"]
    assert_nothing_left(config)


def _results(*names: str) -> list[tuple[str, bytes]]:
    return [(name, CLIP) for name in names]


AD = [{"name": "ad.mp4", "variationCount": 2}]
REFUSED = {
    "name-not-shaped": (AD, _results("ad/ad-v1.mp4"), 400, "is not named"),
    "no-such-source": (AD, _results("other/other_var1_1a2b3c4d.mp4"), 400, "matches none"),
    "variation-out-of-range": (AD, _results("ad/ad_var3_1a2b3c4d.mp4"), 400, "variations 1 to 2"),
    "variation-twice": (
        AD,
        _results("ad/ad_var1_1a2b3c4d.mp4", "ad/ad_var1_5e6f7a8b.mp4"),
        400,
        "Variation 1 of “ad.mp4” was sent twice",
    ),
    "variation-count-over-limit": (
        [{"name": "ad.mp4", "variationCount": 21}],
        _results("ad/ad_var1_1a2b3c4d.mp4"),
        400,
        "must be a whole number from 1 to 20; got 21",
    ),
    "variation-count-as-text": (
        [{"name": "ad.mp4", "variationCount": "2"}],
        _results("ad/ad_var1_1a2b3c4d.mp4"),
        400,
        "must be a whole number",
    ),
    "too-many-sources": (
        [{"name": f"ad{n}.mp4", "variationCount": 1} for n in range(11)],
        _results("ad0/ad0_var1_1a2b3c4d.mp4"),
        400,
        "At most 10 videos per job",
    ),
    "bases-alike": (
        [{"name": "ad.mp4", "variationCount": 1}, {"name": "ad.mov", "variationCount": 1}],
        _results("ad/ad_var1_1a2b3c4d.mp4"),
        400,
        "cannot be told apart",
    ),
    "traversal-in-a-source": (
        [{"name": "../../etc/ad.mp4", "variationCount": 1}],
        _results("ad/ad_var1_1a2b3c4d.mp4"),
        400,
        "names a folder",
    ),
    "control-character-in-a-source": (
        [{"name": "ad\u0007.mp4", "variationCount": 1}],
        _results("ad/ad_var1_1a2b3c4d.mp4"),
        400,
        "control characters",
    ),
    "absurdly-long-source-name": (
        [{"name": "a" * 5000 + ".mp4", "variationCount": 1}],
        _results("a/a_var1_1a2b3c4d.mp4"),
        400,
        "The field “sourceFiles” is too long.",
    ),
    "source-files-not-json": ("[{", _results("ad/ad_var1_1a2b3c4d.mp4"), 400, "is not JSON"),
    "source-files-nested-deep": ("[" * 3000, _results("ad/ad_var1_1a2b3c4d.mp4"), 400, "not JSON"),
    "source-files-missing": ("", _results("ad/ad_var1_1a2b3c4d.mp4"), 400, "in sourceFiles"),
    "no-results": (AD, [], 400, "Send at least one result"),
    "more-than-200-results": (
        [{"name": "ad.mp4", "variationCount": 20}],
        [(f"ad/ad_var{n % 20 + 1}_{n:08x}.mp4", b"x") for n in range(201)],
        400,
        "At most 200",
    ),
    "not-a-video": (
        AD,
        [
            ("ad/ad_var1_1a2b3c4d.mp4", CLIP),
            ("ad/ad_var2_5e6f7a8b.mp4", b"just some text, no video"),
        ],
        415,
        "“ad_var2_5e6f7a8b.mp4” is not a video file. Upload MP4 or MOV videos.",
    ),
}


@pytest.mark.parametrize(("sources", "results", "status", "words"), REFUSED.values(), ids=REFUSED)
async def test_a_form_that_breaks_a_rule_is_refused_and_leaves_nothing(
    authed: httpx.AsyncClient, clips: Clips, config: Config,
    sources: object, results: list[tuple[str, bytes]], status: int, words: str,
) -> None:  # fmt: skip
    clip = clips.mp4.read_bytes()
    body = device_form(sources, [(name, clip if c == CLIP else c) for name, c in results])
    answer = await post_form(authed, body)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]
    assert_nothing_left(config)
    assert (await authed.get("/api/jobs")).json() == []


@pytest.mark.parametrize("blobs_kind", ["s3"], indirect=True)
async def test_a_refusal_leaves_nothing_in_the_bucket_either(
    authed: httpx.AsyncClient, clips: Clips, config: Config, s3_server: S3Server,
    storage_url: str,
) -> None:  # fmt: skip
    body = device_form(AD, [("ad/ad_var1_1a2b3c4d.mp4", clips.mp4.read_bytes()), ("b", b"x")])
    assert (await post_form(authed, body)).status_code == 400
    bucket = storage_url.removeprefix("s3://").split("/")[0]
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert_nothing_left(config)


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
async def test_a_result_over_the_file_limit_is_413(
    start_service: StartService, config: Config, chunked: bool
) -> None:
    service = await start_service(max_upload_bytes=32 * 1024)
    body = device_form(AD, [("ad/ad_var1_1a2b3c4d.mp4", b"\0" * (256 * 1024))])
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        await log_in(http)
        answer = await post_form(http, body, chunked=chunked)
    assert answer.status_code == 413
    assert answer.json() == {
        "error": "“ad_var1_1a2b3c4d.mp4” is larger than the 32 KiB per-file limit."
    }
    assert_nothing_left(config)


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
async def test_results_with_no_room_are_507(
    start_service: StartService, config: Config, chunked: bool
) -> None:
    service = await start_service(storage_quota_bytes=256 * 1024)
    body = device_form(AD, [("ad/ad_var1_1a2b3c4d.mp4", b"\0" * (512 * 1024))])
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        await log_in(http)
        answer = await post_form(http, body, chunked=chunked)
    assert answer.status_code == 507
    assert "no room" in answer.json()["error"]
    assert_nothing_left(config)


async def test_a_client_that_leaves_mid_form_leaves_nothing(
    service: RunningService, token: str, config: Config, clips: Clips
) -> None:
    address = urlsplit(service.url)
    body = device_form(AD, [("ad/ad_var1_1a2b3c4d.mp4", clips.mp4.read_bytes() * 4)])
    head = (
        f"POST {ROUTE} HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {MULTIPART}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with trio.fail_after(10):
        async with await trio.open_tcp_stream(address.hostname or "", address.port or 0) as stream:
            await stream.send_all(head + body[: len(body) // 2])

            async def receiving() -> bool:
                return any(name.endswith(".upload") for name in leftovers(config))

            await wait_for(receiving)

        async def cleaned() -> bool:
            return leftovers(config) == []

        await wait_for(cleaned)


async def test_folders_in_a_result_name_are_dropped_never_followed(
    authed: httpx.AsyncClient, clips: Clips, config: Config
) -> None:
    names = ["../../../ad_var1_1a2b3c4d.mp4", "..\\..\\ad_var2_5e6f7a8b.mp4"]
    body = device_form(AD, [(name, clips.mp4.read_bytes()) for name in names])
    answer = await post_form(authed, body)
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["jobId"]
    kept = leftovers(config)
    assert len([name for name in kept if name.endswith(".mp4")]) == 2
    assert all(name.startswith(f"jobs/{job_id}") for name in kept)
    assert sorted(path.name for path in config.data_dir.parent.iterdir()) == ["data"]


# --- the matching itself (no HTTP) ----------------------------------------------------


def test_results_match_their_source_by_the_clients_own_base_name() -> None:
    nfd = unicodedata.normalize("NFD", "café.v2.mp4")  # as a Mac names it
    sources = [SourceFile("ad_var9.mp4", 3), SourceFile(nfd, 2), SourceFile("plain", 1)]
    sources.append(SourceFile('say "hi".mov', 1))  # a browser sends `"` as %22
    names = ["ad_var9_var3_abcd1234.mp4", "café.v2_var2_0f.mp4", "plain_var1.mp4"]
    names.append("say %22hi%22_var1_5e6f7a8b.mp4")
    assert match_results(sources, names) == [
        ResultMatch(0, 3),
        ResultMatch(1, 2),
        ResultMatch(2, 1),
        ResultMatch(3, 1),
    ]


def test_source_files_parse_as_the_client_sends_them() -> None:
    raw = '[{"name": "ad.mp4", "variationCount": 5, "extra": true}]'
    assert parse_source_files(raw, max_files=10, max_variations=20) == [SourceFile("ad.mp4", 5)]
    for bad in ("{}", "[]", "[1]", '[{"name": "ad.mp4", "variationCount": true}]'):
        with pytest.raises(DeviceResultsRefused):
            parse_source_files(bad, max_files=10, max_variations=20)


def test_a_result_named_only_dots_is_refused() -> None:
    with pytest.raises(DeviceResultsRefused, match=r"^The result “\.\.” is not named"):
        match_results([SourceFile("ad.mp4", 1)], [".."])
