"""The page's resumable upload (tus), its Retry of a failed file and its Device badge, in
real headless Chromium against the real service.

Each test drives the page with Playwright's sync API in a worker thread, as
`test_flows.py` does; what the server received is read from its own counters, not from
what the browser says it sent.
"""

from __future__ import annotations

import dataclasses
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from playwright.sync_api import BrowserContext, Page, Request, expect

from refresher import metrics
from refresher.media.ffmpeg import find_ffmpeg
from tests.support.browser import chromium, drop_files, log_in, new_page
from tests.support.clips import Clips, ClipSpec, make_clip
from tests.support.forms import BOUNDARY, form_body
from tests.support.http import TEST_PASSWORD, upload
from tests.web.page.conftest import Server

pytestmark = pytest.mark.slow

# The uplink the cut upload goes through: slow enough that the clip takes seconds, so the
# test can cut it part way; fast enough for the test's budget.
UPLOAD_BYTES_PER_S = 2_000_000
THROTTLED = {
    "offline": False,
    "latency": 0,
    "downloadThroughput": -1,
    "uploadThroughput": UPLOAD_BYTES_PER_S,
}
# 4 s of noise at 640x360: about 12 MB that x264 cannot squeeze, made in well under 1 s;
# more than the page's 8 MiB chunk, so a cut falls in an upload of several requests.
NOISY = ClipSpec(seconds=4.0, width=640, height=360, video_filter="noise=alls=80:allf=t+u")
# What the file's row reads while it uploads: "2.1 MiB of 5.8 MiB · 1.4 MiB/s · about 3 s
# left" (the speed and time left once a fifth of a second has been measured).
UPLOADING = (
    r"^[\d.]+ (bytes|KiB|MiB) of [\d.]+ MiB( · [\d.]+ (bytes|KiB|MiB)/s · about \d+ s left)?$"
)
# The counter of bytes the server kept from PATCHes (`web.routes.resumable`).
RECEIVED = "refresher_resumable_received_bytes_total"
# A 201 to `POST /api/uploads`: an upload declared (the HTTP counter, by route pattern).
DECLARED = (
    "refresher_http_requests_total",
    {"route": "/api/uploads", "method": "POST", "status": "201"},
)


async def in_browser(drive: Callable[..., Any], *args: Any) -> Any:
    with trio.fail_after(120):
        return await trio.to_thread.run_sync(drive, *args)


def counted(name: str, labels: dict[str, str] | None = None) -> float:
    """A counter of the service (it runs in this process), 0 before its first count."""
    return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0


def bearer_fetch(page: Page, path: str, method: str = "GET") -> dict[str, Any]:
    """`path` fetched by the page with its session: {status, body}."""
    answer: dict[str, Any] = page.evaluate(
        """async ([path, method]) => {
            const { token } = JSON.parse(localStorage.getItem('videoRefresherSession'));
            const headers = { Authorization: `Bearer ${token}` };
            const response = await fetch(path, { method, headers });
            return { status: response.status, body: await response.json() };
        }""",
        [path, method],
    )
    return answer


class Network:
    """The page's network as Chromium's DevTools emulate it: an uplink slowed to
    UPLOAD_BYTES_PER_S, which can go offline and come back.

    Playwright's `set_offline` speaks through its own DevTools session, which Chromium
    overrides with the conditions this one set: so going offline is said on both (the
    page's `navigator.onLine` and its requests), and coming back sets the throttle again.
    A request under way as it goes offline is not cut (Chromium lets its throttled bytes
    through at once); the next ones fail. So the cut falls between two of the page's
    8 MiB requests; a reload cuts one part way (the other test)."""

    def __init__(self, context: BrowserContext, page: Page) -> None:
        self.context = context
        self.cdp = context.new_cdp_session(page)
        self.cdp.send("Network.enable")
        self.cdp.send("Network.emulateNetworkConditions", THROTTLED)

    def offline(self) -> None:
        self.context.set_offline(True)
        self.cdp.send("Network.emulateNetworkConditions", {**THROTTLED, "offline": True})

    def online(self) -> None:
        # Requests first, then the page's `online` event (on which it tries again at once).
        self.cdp.send("Network.emulateNetworkConditions", THROTTLED)
        self.context.set_offline(False)


def drive_a_cut_upload(url: str, clip: Path) -> dict[str, Any]:
    with chromium() as browser:
        context, page = new_page(browser, url)
        log_in(page)
        patches: list[int] = []  # the Upload-Offset each PATCH started from

        def sent(request: Request) -> None:
            if request.method == "PATCH" and "/api/uploads/" in request.url:
                patches.append(int(request.headers.get("upload-offset", "-1")))

        page.on("request", sent)
        network = Network(context, page)
        page.click("nav >> text=New job")
        drop_files(page, "#drop-zone", [clip])
        expect(page.locator("#file-list")).not_to_contain_text("checking…")
        page.fill("#variations", "1")
        received_before = counted(RECEIVED)
        declared_before = counted(*DECLARED)
        page.click("#upload-button")
        page.wait_for_function(
            """() => Number(document.querySelector('.file-upload [role=progressbar]')
                ?.getAttribute('aria-valuenow')) >= 20"""
        )
        while_sending = page.locator(".file-progress").text_content()
        network.offline()
        expect(page.locator("#upload-figures")).to_contain_text("The connection was lost")
        shown_offline = page.locator(".file-progress").text_content()
        # Offline for a while, the page keeps trying, though the browser says it is offline
        # (where tus-js-client's own rule gives up), and keeps what it sent.
        page.wait_for_timeout(2000)
        kept_while_offline = counted(RECEIVED) - received_before
        network.online()
        page.wait_for_url("**/#/jobs/*", timeout=60_000)
        job_id = page.url.rsplit("/", 1)[1]
        return {
            "while_sending": while_sending,
            "shown_offline": shown_offline,
            "kept_while_offline": kept_while_offline,
            "received": counted(RECEIVED) - received_before,
            "declared": counted(*DECLARED) - declared_before,
            "patches": patches,
            "job": bearer_fetch(page, f"/api/jobs/{job_id}")["body"],
        }


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clip both uploads send: seconds at the throttled rate, more than a chunk."""
    path = tmp_path_factory.mktemp("noisy") / "noisy spot.mp4"
    make_clip(find_ffmpeg(None), path, NOISY)
    assert path.stat().st_size > 8 * 1024 * 1024
    return path


async def test_an_upload_cut_off_part_way_goes_on_from_where_the_server_has_it(
    server: Server, noisy: Path
) -> None:
    clip, size = noisy, (await trio.Path(noisy).stat()).st_size
    result = await in_browser(drive_a_cut_upload, str(server.url), clip)
    assert re.match(UPLOADING, result["while_sending"]), result["while_sending"]
    assert "connection lost, trying again" in result["shown_offline"]
    # Cut part way: the server kept some bytes, not all.
    assert 0 < result["kept_while_offline"] < size
    # Never started over: one upload declared, sent again from the offset the server had.
    assert result["declared"] == 1
    assert result["patches"][0] == 0
    assert len(result["patches"]) >= 2
    assert result["patches"][-1] > 0
    # Every byte once (the cut loses what was in flight at most): well under 1.5 times.
    assert size <= result["received"] < 1.5 * size
    job = result["job"]
    assert [(file["name"], file["size"]) for file in job["files"]] == [(clip.name, size)]
    assert job["totalVariations"] == 1


def drive_a_reload(url: str, clip: Path) -> dict[str, Any]:
    with chromium() as browser:
        context, page = new_page(browser, url)
        log_in(page)
        patches: list[int] = []  # the Upload-Offset each PATCH started from

        def sent(request: Request) -> None:
            if request.method == "PATCH" and "/api/uploads/" in request.url:
                patches.append(int(request.headers.get("upload-offset", "-1")))

        page.on("request", sent)
        Network(context, page)
        received_before = counted(RECEIVED)
        declared_before = counted(*DECLARED)
        page.click("nav >> text=New job")
        # Chosen from disk (not dropped as a copy made in the page), so the file is the
        # same one after the reload: the same name, size and modification time.
        page.set_input_files("#file-picker", str(clip))
        expect(page.locator("#file-list")).not_to_contain_text("checking…")
        page.fill("#variations", "1")
        page.click("#upload-button")
        page.wait_for_function(
            """() => Number(document.querySelector('.file-upload [role=progressbar]')
                ?.getAttribute('aria-valuenow')) >= 20"""
        )
        page.reload()  # the request under way ends with the page
        sent_before_reload = len(patches)
        page.set_input_files("#file-picker", str(clip))
        expect(page.locator("#file-list")).not_to_contain_text("checking…")
        page.fill("#variations", "1")
        page.click("#upload-button")
        page.wait_for_url("**/#/jobs/*", timeout=60_000)
        job_id = page.url.rsplit("/", 1)[1]
        return {
            "patches": patches,
            "sent_before_reload": sent_before_reload,
            "received": counted(RECEIVED) - received_before,
            "declared": counted(*DECLARED) - declared_before,
            "job": bearer_fetch(page, f"/api/jobs/{job_id}")["body"],
        }


async def test_after_a_reload_the_same_file_chosen_again_goes_on_from_where_it_stopped(
    server: Server, noisy: Path
) -> None:
    size = (await trio.Path(noisy).stat()).st_size
    result = await in_browser(drive_a_reload, str(server.url), noisy)
    # One upload, declared before the reload and found again after it (tus-js-client
    # keeps its address in localStorage), sent on from the bytes the server had kept.
    assert result["declared"] == 1
    before, after = (
        result["patches"][: result["sent_before_reload"]],
        result["patches"][result["sent_before_reload"] :],
    )
    assert before == [0]
    assert after
    assert after[0] > 0
    assert size <= result["received"] < 1.5 * size
    assert [file["size"] for file in result["job"]["files"]] == [size]


# An FFmpeg that fails every encode, as a broken build or a codec fault would; `-version`
# still answers, so the service starts. It fails after a second, as one that meets a
# fault part way does: a failure within milliseconds of the job starting races the page's
# first fetch of the job, whose older answer can land after the failure's event and
# stand (js/live.js refetches once per change and drops a change that comes meanwhile).
FAILING_FFMPEG = """#!/bin/sh
for arg in "$@"; do
  if [ "$arg" = "-version" ]; then exec "{real}" "$@"; fi
done
sleep 1
echo "simulated encoder fault" >&2
exit 1
"""


def drive_a_retry(url: str, clip: Path) -> dict[str, Any]:
    with chromium() as browser:
        _context, page = new_page(browser, url)
        log_in(page)
        retries: list[str] = []  # the retry route, each time the page asked it

        def sent(request: Request) -> None:
            if request.method == "POST" and request.url.endswith("/retry"):
                retries.append(request.url)

        page.on("request", sent)
        page.click("nav >> text=New job")
        drop_files(page, "#drop-zone", [clip])
        expect(page.locator("#file-list")).not_to_contain_text("checking…")
        page.fill("#variations", "1")
        page.click("#upload-button")
        page.wait_for_url("**/#/jobs/*")
        job_id = page.url.rsplit("/", 1)[1]
        expect(page.locator(".file-card .badge")).to_have_text("Failed", timeout=60_000)
        retry = page.locator(".file-card button.retry")
        expect(retry).to_be_visible()
        first = bearer_fetch(page, f"/api/jobs/{job_id}")["body"]["files"][0]
        retry.click()
        expect(page.locator("#toasts")).to_contain_text("is queued again")
        # The same encoder fails it again: the page says so, and offers Retry again.
        expect(page.locator(".file-card .retries")).to_have_text(
            "Failed again after 1 retry.", timeout=60_000
        )
        expect(retry).to_be_visible()
        again = bearer_fetch(page, f"/api/jobs/{job_id}")["body"]["files"][0]
        return {"job_id": job_id, "retries": retries, "first": first, "again": again}


async def test_a_failed_file_offers_retry_which_queues_it_again(
    server: Server, clips: Clips, tmp_path: Path
) -> None:
    failing = tmp_path / "failing-ffmpeg"
    failing.write_text(FAILING_FFMPEG.format(real=find_ffmpeg(None)))
    failing.chmod(failing.stat().st_mode | stat.S_IXUSR)
    await server.stop()
    server.config = dataclasses.replace(server.config, ffmpeg=str(failing))
    await server.start()
    result = await in_browser(drive_a_retry, server.url, clips.mp4)
    first, again = result["first"], result["again"]
    assert (first["status"], first["retryable"], first["retries"]) == ("failed", True, 0)
    assert (again["status"], again["retryable"], again["retries"]) == ("failed", True, 1)
    assert result["retries"] == [
        f"{server.url}/api/jobs/{result['job_id']}/files/{first['id']}/retry"
    ]


def drive_the_jobs_list(url: str) -> dict[str, list[str]]:
    with chromium() as browser:
        _context, page = new_page(browser, url)
        log_in(page)
        expect(page.locator(".job-card")).to_have_count(2)
        return {
            job_id: page.locator(f'[data-job-id="{job_id}"] .badge').all_text_contents()
            for job_id in page.locator(".job-card").evaluate_all(
                "(cards) => cards.map((card) => card.dataset.jobId)"
            )
        }


async def test_a_job_a_device_made_wears_a_device_badge_in_the_list(
    server: Server, clips: Clips
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        login = await http.post("/api/auth", json={"password": TEST_PASSWORD})
        http.headers["Authorization"] = f"Bearer {login.json()['token']}"
        # As the original client's device mode sends it: its sources, then its results.
        sources = b'[{"name": "creative.mp4", "variationCount": 1}]'
        body = form_body(
            [("sourceFiles", None, sources),
             ("results", "creative/creative_var1_1a2b3c4d.mp4", clips.mp4.read_bytes())]
        )  # fmt: skip
        device = await http.post(
            "/api/jobs/device",
            content=body,
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY.decode()}"},
        )
        assert device.status_code == 201, device.text
        uploaded = await upload(http, [clips.mp4], variations="1")
        assert uploaded.status_code == 202, uploaded.text
    badges = await in_browser(drive_the_jobs_list, server.url)
    assert badges[device.json()["jobId"]] == ["Completed", "Device"]
    assert "Device" not in badges[uploaded.json()["jobId"]]
