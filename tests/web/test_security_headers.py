"""Security headers on every answer, no caching of tokens and jobs, and the page under its CSP."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from playwright.sync_api import expect, sync_playwright

from refresher.jobs import records
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.http import TEST_PASSWORD, upload
from tests.support.jobs import make_finished_job
from web.app import STATIC_DIR as STATIC
from wiring.service import RunningService

DIRECTIVES = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "frame-ancestors": "'none'",
}


def assert_secured(response: httpx.Response) -> None:
    headers = response.headers
    policy = dict(
        directive.strip().split(" ", 1)
        for directive in headers["content-security-policy"].split(";")
    )
    for name, value in DIRECTIVES.items():
        assert policy[name] == value, name
    assert "unsafe" not in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"


async def job_with_thumbnail(service: RunningService) -> str:
    job_id = await make_finished_job(service.state.db, service.state.paths)
    thumbnail = service.state.paths.job_dir(job_id) / "thumbnail.webp"
    thumbnail.write_bytes(b"RIFF\x00\x00\x00\x00WEBP")
    relative = service.state.paths.relative(thumbnail)
    await service.state.db.write(lambda conn: records.set_thumbnail(conn, job_id, relative))
    return job_id


# (method, path, extra request headers, body, expected status); {job} is a finished job's id.
ANSWERS = {
    "page": ("GET", "/", {}, b"", 200),
    "script": ("GET", "/static/app.js", {}, b"", 200),
    "stylesheet": ("GET", "/static/style.css", {}, b"", 200),
    "missing static file": ("GET", "/static/nothing.js", {}, b"", 404),
    "static file changed": ("GET", "/static/app.js", {"If-Match": '"old"'}, b"", 412),
    "login not json": ("POST", "/api/auth", {}, b"[", 400),
    "health": ("GET", "/api/health", {}, b"", 200),
    "job list": ("GET", "/api/jobs", {}, b"", 200),
    "job detail": ("GET", "/api/jobs/{job}", {}, b"", 200),
    "download": ("GET", "/api/jobs/{job}/download", {}, b"", 200),
    "download head": ("HEAD", "/api/jobs/{job}/download", {}, b"", 200),
    "download range": ("GET", "/api/jobs/{job}/download", {"Range": "bytes=0-9"}, b"", 206),
    "download beyond": ("GET", "/api/jobs/{job}/download", {"Range": "bytes=99999999-"}, b"", 416),
    "download changed": ("GET", "/api/jobs/{job}/download", {"If-Match": '"old"'}, b"", 412),
    "thumbnail": ("GET", "/api/jobs/{job}/thumbnail", {}, b"", 200),
    "events": ("GET", "/api/jobs/{job}/events", {}, b"", 200),
    "unknown job": ("GET", "/api/jobs/nope", {}, b"", 404),
    "unknown route": ("GET", "/api/nothing", {}, b"", 404),
    "method not allowed": ("DELETE", "/api/health", {}, b"", 405),
    "no token": ("GET", "/api/jobs", {"Authorization": "Bearer nope"}, b"", 401),
    "body too large": ("GET", "/api/health", {}, b"x" * 70_000, 413),
    "bad host": ("GET", "/api/health", {"Host": "a" * 64 + ".example"}, b"", 400),
    "preflight": ("OPTIONS", "/api/jobs", {}, b"", 200),
}


@pytest.mark.parametrize("answer", list(ANSWERS))
async def test_every_answer_carries_the_security_headers(
    service: RunningService, authed: httpx.AsyncClient, answer: str
) -> None:
    method, path, headers, body, status = ANSWERS[answer]
    job_id = await job_with_thumbnail(service)
    response = await authed.request(method, path.format(job=job_id), headers=headers, content=body)
    assert response.status_code == status, response.text
    assert_secured(response)


async def test_an_unexpected_error_is_secured_too(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr("web.routes.health.service_version", broken)
    response = await client.get("/api/health")
    assert response.status_code == 500
    assert response.json() == {"error": "Something went wrong on the server; it has been logged."}
    assert response.headers["cache-control"] == "no-store"
    assert_secured(response)


async def test_token_and_job_answers_are_never_stored(
    service: RunningService, client: httpx.AsyncClient, clips: Any
) -> None:
    login = await client.post("/api/auth", json={"password": TEST_PASSWORD})
    client.headers["Authorization"] = f"Bearer {login.json()['token']}"
    created = await upload(client, [clips.long], variations="2")
    assert created.status_code == 202
    job_id = created.json()["jobId"]
    answers = [
        login,
        created,
        await client.get("/api/jobs"),
        await client.get(f"/api/jobs/{job_id}"),
        await client.post(f"/api/jobs/{job_id}/cancel"),
        await client.delete(f"/api/jobs/{job_id}"),
        await client.get("/api/jobs/nope"),  # errors too
    ]
    for response in answers:
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store", response.request.url
        assert_secured(response)
    assert [response.status_code for response in answers] == [200, 202, 200, 200, 200, 200, 404]


async def test_download_and_thumbnail_keep_their_own_caching(
    service: RunningService, authed: httpx.AsyncClient
) -> None:
    job_id = await job_with_thumbnail(service)
    download = await authed.get(f"/api/jobs/{job_id}/download")
    assert download.headers["cache-control"] == "private, no-transform"
    thumbnail = await authed.get(f"/api/jobs/{job_id}/thumbnail")
    directives = {part.strip() for part in thumbnail.headers["cache-control"].split(",")}
    assert {"private", "max-age=3600"} <= directives
    assert "no-store" not in directives


class _InlineCode(HTMLParser):
    """Collect whatever a CSP without 'unsafe-inline' would block in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._tag: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag = tag
        names = {name for name, _ in attrs}
        if tag == "style":
            self.found.append("<style>")
        if tag == "script" and "src" not in names:
            self.found.append("<script> without src")
        self.found += [f"{tag} {name}=" for name in names if name == "style" or name[:2] == "on"]
        self.found += [
            f"{tag} {name}={value}"
            for name, value in attrs
            if value and value.strip().lower().startswith("javascript:")
        ]

    def handle_data(self, data: str) -> None:
        if self._tag == "script" and data.strip():
            self.found.append("inline script text")


async def test_page_has_no_inline_script_style_or_handlers(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    parser = _InlineCode()
    parser.feed(page.text)
    assert parser.found == []
    # Code made from strings, or markup that could carry inline handlers.
    risky = r"\beval\(|new Function\(|innerHTML|outerHTML|insertAdjacentHTML|\.on\w+ ="
    for path in sorted(STATIC.rglob("*.js")):
        script = (await client.get(f"/static/{path.relative_to(STATIC).as_posix()}")).text
        assert re.findall(risky, script) == [], path.name


def drive_page_watching_the_policy(url: str) -> list[str]:
    """Log in and show the job list; return every Content-Security-Policy complaint."""
    complaints: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda message: complaints.append(message.text))
            page.goto(url)
            page.fill("#password", TEST_PASSWORD)
            page.click("#login button[type=submit]")
            expect(page.locator("#jobs-empty")).to_be_visible()
            expect(page.locator("#connection")).to_have_text("Live")
            page.click("nav >> text=New job")
            expect(page.locator("#drop-zone")).to_be_visible()
        finally:
            browser.close()
    return [text for text in complaints if "Content Security Policy" in text]


async def test_page_works_in_chromium_without_breaking_its_policy(
    service: RunningService, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        complaints = await trio.to_thread.run_sync(
            drive_page_watching_the_policy, service.url + "/"
        )
    assert complaints == []
