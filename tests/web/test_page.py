"""The web page in real headless Chromium: log in, upload, watch the job finish, download."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from playwright.sync_api import expect, sync_playwright

from refresher.main import RunningService
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.http import TEST_PASSWORD


def drive_page(url: str, video: Path, screenshot: Path) -> dict[str, Any]:
    """Use the page as a person would; return what the download link served."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.fill("#password", "wrong password")
            page.click("#login button[type=submit]")
            expect(page.locator("#login-error")).to_have_text("That password is not right.")
            page.fill("#password", TEST_PASSWORD)
            page.click("#login button[type=submit]")
            expect(page.locator("#jobs-empty")).to_be_visible()
            page.set_input_files("#videos", str(video))
            page.fill("#variations", "2")
            page.click("#upload-button")
            expect(page.locator("#upload-status")).to_have_text("Queued 2 variations.")
            job = page.locator(".job").first
            expect(job.locator(".job-names")).to_have_text(video.name)
            expect(job.locator(".job-status")).to_contain_text("completed", timeout=60_000)
            expect(job.locator(".job-progress")).to_have_attribute("value", "100")
            link = job.locator(".job-download")
            expect(link).to_be_visible()
            href = link.get_attribute("href")
            assert href is not None
            response = page.request.get(url.rstrip("/") + href)
            page.screenshot(path=str(screenshot), full_page=True)
            return {
                "status": response.status,
                "type": response.headers["content-type"],
                "bytes": len(response.body()),
                "length": int(response.headers["content-length"]),
            }
        finally:
            browser.close()


async def test_page_logs_in_uploads_and_offers_the_zip(
    service: RunningService, clips: Any, tmp_path: Path
) -> None:
    with trio.fail_after(120):
        served = await trio.to_thread.run_sync(
            drive_page, service.url + "/", clips.mp4, tmp_path / "page.png"
        )
    assert served["status"] == 200
    assert served["type"] == "application/zip"
    assert served["bytes"] == served["length"] > 0
