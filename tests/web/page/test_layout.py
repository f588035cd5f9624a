"""Every view of the page at 375 px and at 1440 px: it fits, keeps words whole, shows its
images, passes axe-core, and leaves a screenshot for the README."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
from playwright.sync_api import expect

from tests.support.browser import SCREENSHOTS, check_view, chromium, drop_files, log_in, new_page
from tests.support.clips import Clips
from tests.support.http import finished, upload, wait_for_job
from tests.web.page.conftest import SCROLL_THROUGH_STILLS, STILLS_LOADED
from wiring.service import RunningService

pytestmark = pytest.mark.slow

# Names as people give them: long, with spaces, and one word longer than a phone is wide.
LONG_NAME = "Spring campaign 2026 - final final v3 (approved by legal) 1080x1920 story.mp4"
ONE_WORD = "summer_sale_hero_creative_vertical_1080x1920_v12_FINAL_approved.mov"


def visit_every_view(
    url: str, width: int, scheme: str, clips: Clips, job_id: str, measured_id: str
) -> None:
    with chromium() as browser:
        _context, page = new_page(browser, url, width, scheme)
        page.goto("/")
        expect(page.locator("#password")).to_be_focused()
        check_view(page, "login")
        log_in(page)
        expect(page.locator(".job-card")).to_have_count(3)
        check_view(page, "jobs")

        page.goto(f"/#/jobs/{job_id}")
        expect(page.locator(".output")).to_have_count(4)
        # Two sources, two variations each: every one a still, loaded once scrolled to.
        expect(page.locator("#compare img.still")).to_have_count(6)
        page.evaluate(SCROLL_THROUGH_STILLS)
        page.wait_for_function(STILLS_LOADED)
        page.locator(".output details summary").first.click()
        page.locator(".play").first.click()
        page.wait_for_function("() => document.querySelector('#player-video')?.readyState >= 2")
        check_view(page, "job")

        # Natural footage, measured at strong: a verdict's numbers shown by its focus.
        page.goto(f"/#/jobs/{measured_id}")
        expect(page.locator("#compare img.still")).to_have_count(4)
        page.evaluate(SCROLL_THROUGH_STILLS)
        page.wait_for_function(STILLS_LOADED)
        page.locator(".output .verdict").last.focus()
        check_view(page, "job-measured")
        # The README shows the comparison alone.
        suffix = "-light" if scheme == "light" else ""
        page.locator("#compare").screenshot(path=str(SCREENSHOTS / f"compare-{width}{suffix}.png"))

        page.click("nav >> text=New job")
        drop_files(page, "#drop-zone", [clips.mp4, clips.mov])
        expect(page.locator("#file-list li")).to_have_count(2)
        expect(page.locator("#file-list")).not_to_contain_text("checking…")
        check_view(page, "new-job")

        # The keyboard reaches the drop zone and the upload, with a visible focus.
        page.keyboard.press("Tab")
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none"


# Dark is the page's own scheme; light is what `prefers-color-scheme: light` gets.
@pytest.mark.parametrize(("width", "scheme"), [(375, "dark"), (1440, "dark"), (1440, "light")])
async def test_every_view_fits_keeps_words_whole_and_passes_axe(
    service: RunningService,
    authed: httpx.AsyncClient,
    clips: Clips,
    teaser: Path,
    width: int,
    scheme: str,
) -> None:
    made = await upload(authed, [clips.mp4, clips.mov], variations="2", names=[LONG_NAME, ONE_WORD])
    assert made.status_code == 202, made.text
    job_id = made.json()["jobId"]
    await wait_for_job(authed, job_id, finished)
    second = await upload(authed, [clips.mp4], names=["cutdown 6s.mp4"], variations="1")
    await wait_for_job(authed, second.json()["jobId"], finished)
    measured = await authed.post(
        "/api/jobs",
        files=[("videos", (teaser.name, await trio.Path(teaser).read_bytes(), "video/mp4"))],
        data={"variations": "3", "strength": "strong"},
    )
    assert measured.status_code == 202, measured.text
    measured_id = measured.json()["jobId"]
    await wait_for_job(authed, measured_id, finished, timeout_s=120)
    with trio.fail_after(240):
        await trio.to_thread.run_sync(
            visit_every_view, service.url, width, scheme, clips, job_id, measured_id
        )
