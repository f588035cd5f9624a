"""Signed links: each opens one thing of one job, for a short while, and never a login."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trio

from refresher.config import Config
from refresher.jobs import records
from tests.support.clock import WallClock
from tests.support.jobs import make_finished_job
from tests.support.sse import open_stream, receive_until
from web import links
from wiring.service import RunningService

INVALID_TOKEN = "That token is not valid; log in again."
LINK_EXPIRED = "This link has expired; reload the page for a fresh one."
LOGIN_IN_LINK = "A login token is not accepted in a link; use the Authorization header."
# Signed links work the same whether the bytes are files or objects in a bucket.
pytestmark = pytest.mark.both_blob_stores

THUMBNAIL = b"RIFF\x00\x00\x00\x00WEBP"
HOUR_S = 3600.0


async def job_with_thumbnail(service: RunningService) -> str:
    blobs = service.state.lifecycle.blobs
    job_id = await make_finished_job(service.state.db, service.state.paths, blobs=blobs)
    thumbnail = service.state.paths.job_dir(job_id) / "thumbnail.webp"
    thumbnail.write_bytes(THUMBNAIL)
    await trio.to_thread.run_sync(blobs.keep, thumbnail)
    relative = service.state.paths.relative(thumbnail)
    await service.state.db.write(lambda conn: records.set_thumbnail(conn, job_id, relative))
    return job_id


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def assert_refused(response: httpx.Response, message: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == {"error": message}
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.fixture
async def anonymous(service: RunningService) -> AsyncIterator[httpx.AsyncClient]:
    """A client without any header, like an `<img>`, a `<video>` or an EventSource."""
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        yield http


async def test_a_bare_img_loads_the_thumbnail_from_its_url(
    service: RunningService, authed: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    job_id = await job_with_thumbnail(service)
    listed = (await authed.get("/api/jobs")).json()[0]["thumbnailUrl"]
    shown = (await authed.get(f"/api/jobs/{job_id}")).json()["thumbnailUrl"]
    assert listed == shown
    assert shown.startswith(f"/api/jobs/{job_id}/thumbnail?token=")
    response = await anonymous.get(shown)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/webp"
    assert response.content == THUMBNAIL
    directives = {part.strip() for part in response.headers["cache-control"].split(",")}
    assert directives == {"private", "max-age=3600"}
    assert_refused(
        await anonymous.get(f"/api/jobs/{job_id}/thumbnail"),
        "Log in first: this needs a bearer token.",
    )


async def test_thumbnail_url_stays_the_same_within_the_hour_and_works_an_hour_at_least(
    service: RunningService,
    authed: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    wall_clock: WallClock,
) -> None:
    job_id = await job_with_thumbnail(service)

    async def thumbnail_url() -> str:
        url: str = (await authed.get(f"/api/jobs/{job_id}")).json()["thumbnailUrl"]
        return url

    # The clock starts on a whole hour, H. Minted during (H, H + 1 h], a link lasts until
    # H + 2 h: one URL all that while.
    wall_clock.advance(1)
    first = await thumbnail_url()
    wall_clock.advance(HOUR_S - 1)
    assert await thumbnail_url() == first
    wall_clock.advance(1)
    second = await thumbnail_url()
    assert second != first
    # The first link still works after the next one appeared...
    assert (await anonymous.get(first)).status_code == 200
    # ...until H + 2 h, at least an hour after it was last handed out.
    wall_clock.advance(HOUR_S - 1)
    assert_refused(await anonymous.get(first), LINK_EXPIRED)
    assert (await anonymous.get(second)).status_code == 200


async def test_a_login_token_in_a_url_is_refused_on_every_route_that_takes_links(
    nursery: trio.Nursery,
    service: RunningService,
    authed: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    token: str,
    wall_clock: WallClock,
) -> None:
    job_id = await job_with_thumbnail(service)
    output_id = (await authed.get(f"/api/jobs/{job_id}")).json()["files"][0]["outputs"][0]["id"]
    routes = [
        ("GET", f"/api/jobs/{job_id}/download"),
        ("HEAD", f"/api/jobs/{job_id}/download"),
        ("GET", f"/api/jobs/{job_id}/thumbnail"),
        ("GET", f"/api/jobs/{job_id}/events"),
        ("GET", f"/api/jobs/{job_id}/outputs/{output_id}"),
        ("HEAD", f"/api/jobs/{job_id}/outputs/{output_id}"),
        ("GET", "/api/events"),
    ]
    for method, path in routes:
        response = await anonymous.request(method, path, params={"token": token})
        assert response.status_code == 401, (method, path)
        if method == "GET":
            assert_refused(response, LOGIN_IN_LINK)
    # An expired login token is still a login token: the same answer.
    wall_clock.advance(2 * 24 * HOUR_S)
    assert_refused(await anonymous.get("/api/events", params={"token": token}), LOGIN_IN_LINK)


async def test_a_link_opens_only_its_own_purpose_job_and_variation(
    service: RunningService, authed: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    job_a = await job_with_thumbnail(service)
    job_b = await job_with_thumbnail(service)
    a = (await authed.get(f"/api/jobs/{job_a}")).json()
    b = (await authed.get(f"/api/jobs/{job_b}")).json()
    a_first, a_second = a["files"][0]["outputs"]
    b_first = b["files"][0]["outputs"][0]
    all_jobs = (await authed.post("/api/events/link")).json()["url"]
    # Every link works where it belongs...
    for url in (a["downloadUrl"], a["thumbnailUrl"], a_first["url"], a_first["downloadUrl"]):
        assert (await anonymous.get(url)).status_code == 200, url
    # ...and nowhere else.
    a_paths = {
        "download": f"/api/jobs/{job_a}/download",
        "thumbnail": f"/api/jobs/{job_a}/thumbnail",
        "events": f"/api/jobs/{job_a}/events",
        "output": f"/api/jobs/{job_a}/outputs/{a_first['id']}",
    }
    a_tokens = {
        "download": token_of(a["downloadUrl"]),
        "thumbnail": token_of(a["thumbnailUrl"]),
        "events": token_of(a["eventsUrl"]),
        "output": token_of(a_first["url"]),
    }
    for purpose, path in a_paths.items():
        for other, value in a_tokens.items():
            if other != purpose:
                response = await anonymous.get(path, params={"token": value})
                assert_refused(response, INVALID_TOKEN)
        assert_refused(
            await anonymous.get(path, params={"token": token_of(all_jobs)}), INVALID_TOKEN
        )
    crossings = [
        # Job A's links on job B.
        f"/api/jobs/{job_b}/download?token={a_tokens['download']}",
        f"/api/jobs/{job_b}/thumbnail?token={a_tokens['thumbnail']}",
        f"/api/jobs/{job_b}/events?token={a_tokens['events']}",
        f"/api/jobs/{job_b}/outputs/{b_first['id']}?token={a_tokens['output']}",
        # One variation's link on its sibling, and on the same variation under job B.
        f"/api/jobs/{job_a}/outputs/{a_second['id']}?token={a_tokens['output']}",
        f"/api/jobs/{job_b}/outputs/{a_first['id']}?token={a_tokens['output']}",
        # A job's event link on the stream of every job.
        f"/api/events?token={a_tokens['events']}",
    ]
    for url in crossings:
        assert_refused(await anonymous.get(url), INVALID_TOKEN)


async def test_a_job_events_link_opens_its_stream_without_a_header(
    nursery: trio.Nursery,
    service: RunningService,
    authed: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
) -> None:
    job_id = await make_finished_job(
        service.state.db, service.state.paths, blobs=service.state.lifecycle.blobs
    )
    detail = (await authed.get(f"/api/jobs/{job_id}")).json()
    assert detail["eventsUrl"].startswith(f"/api/jobs/{job_id}/events?token=")
    items = await open_stream(nursery, anonymous, detail["eventsUrl"])
    (kind, data), _ = await receive_until(items, lambda item: item[0] == "status")
    assert (kind, data["jobId"], data["status"]) == ("status", job_id, "completed")
    assert [item async for item in items] == []  # a finished job: the stream ends


EVENTS_LINK_S = Config().events_link_ttl_s


@pytest.mark.parametrize(
    ("link", "lifetime_s"),
    [
        pytest.param("eventsUrl", EVENTS_LINK_S + links.EVENTS_BUCKET_S, id="job events"),
        pytest.param("all events", EVENTS_LINK_S + links.EVENTS_BUCKET_S, id="all events"),
        pytest.param("thumbnailUrl", 2 * HOUR_S, id="thumbnail"),
        pytest.param("url", 2 * HOUR_S, id="player"),
    ],
)
async def test_an_expired_link_is_refused_saying_so(
    service: RunningService,
    authed: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    wall_clock: WallClock,
    link: str,
    lifetime_s: float,
) -> None:
    job_id = await job_with_thumbnail(service)
    wall_clock.advance(1)  # past the whole hour: each link gets its longest life
    detail = (await authed.get(f"/api/jobs/{job_id}")).json()
    urls: dict[str, Any] = {
        "eventsUrl": detail["eventsUrl"],
        "all events": (await authed.post("/api/events/link")).json()["url"],
        "thumbnailUrl": detail["thumbnailUrl"],
        "url": detail["files"][0]["outputs"][0]["url"],
    }
    url = urls[link]
    # A minute short of its end it still opens (the streams are closed at once).
    wall_clock.advance(lifetime_s - 61)
    async with anonymous.stream("GET", url) as response:
        assert response.status_code == 200
    wall_clock.advance(60)
    assert_refused(await anonymous.get(url), LINK_EXPIRED)


async def test_the_download_link_lasts_until_the_results_expire(
    service: RunningService,
    authed: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    wall_clock: WallClock,
) -> None:
    job_id = await make_finished_job(
        service.state.db, service.state.paths, blobs=service.state.lifecycle.blobs,
        now=wall_clock(),
    )  # fmt: skip
    url = (await authed.get(f"/api/jobs/{job_id}")).json()["downloadUrl"]
    wall_clock.advance(23 * HOUR_S)  # the results last 24 hours
    assert (await authed.get(f"/api/jobs/{job_id}")).json()["downloadUrl"] == url
    assert (await anonymous.head(url)).status_code == 200
