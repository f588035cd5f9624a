"""The page as a person uses it, in real headless Chromium against the real service.

Each test drives the page with Playwright's sync API in a worker thread; the service runs
in the test's Trio loop, and a test that must restart it calls back into the loop.
"""

from __future__ import annotations

import dataclasses
import io
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from playwright.sync_api import Page, expect

from refresher.media.ffmpeg import find_ffmpeg
from tests.support.browser import BROKEN_IMAGES, chromium, drop_files, log_in, new_page
from tests.support.clips import Clips, ClipSpec, make_clip
from tests.web.page.conftest import SCROLL_THROUGH_STILLS, STILLS_LOADED, Server

pytestmark = pytest.mark.slow


async def in_browser(drive: Callable[..., Any], *args: Any) -> Any:
    with trio.fail_after(240):
        return await trio.to_thread.run_sync(drive, *args)


def upload_in_page(page: Page, files: list[Path], variations: int) -> str:
    """Drop `files`, set `variations`, upload; return the new job's id from the URL."""
    page.click("nav >> text=New job")
    drop_files(page, "#drop-zone", files)
    expect(page.locator("#file-list li")).to_have_count(len(files))
    for path in files:
        expect(page.locator("#file-list")).to_contain_text(path.name)
    expect(page.locator("#file-list")).not_to_contain_text("checking…")
    page.fill("#variations", str(variations))
    page.click("#upload-button")
    page.wait_for_url("**/#/jobs/*")
    return page.url.rsplit("/", 1)[1]


def drive_the_whole_flow(url: str, files: list[Path]) -> dict[str, Any]:
    with chromium() as browser:
        _context, page = new_page(browser, url)
        page.goto("/")
        expect(page).to_have_url(f"{url}/#/login")
        page.fill("#password", "not the password")
        page.click("#login button[type=submit]")
        expect(page.locator("#login-message")).to_have_text("That password is not right.")
        log_in(page)
        expect(page.locator("#jobs-empty")).to_be_visible()

        job_id = upload_in_page(page, files, variations=2)
        page.evaluate("window.__sameDocument = true")
        # Record the overall progress bar as it moves, without reloading anything.
        page.evaluate(
            """() => { window.__seen = []; setInterval(() => {
                const bar = document.querySelector('[aria-label="Overall progress"]');
                if (bar) window.__seen.push(Number(bar.getAttribute('aria-valuenow')));
            }, 50); }"""
        )
        expect(page.locator(".detail-head .badge")).to_have_text("Completed", timeout=120_000)
        expect(page.locator("#connection")).to_have_text("Live")
        seen = page.evaluate("window.__seen")
        same_document = page.evaluate("window.__sameDocument === true")
        expect(page.locator(".output")).to_have_count(4)

        page.locator(".play").first.click()
        page.wait_for_function(
            """() => { const v = document.querySelector('#player-video');
                return v && v.readyState >= 2 && v.videoWidth > 0 && v.currentTime > 0.2; }"""
        )
        played = page.evaluate(
            "() => { const v = document.querySelector('#player-video'); "
            "return [v.videoWidth, v.videoHeight, v.error]; }"
        )

        with page.expect_download() as download_info:
            page.click("#download-zip")
        download = download_info.value
        archive = Path(download.path()).read_bytes()

        page.click("text=All jobs")
        card = page.locator(f'[data-job-id="{job_id}"]')
        expect(card.locator(".badge")).to_have_text("Completed")
        return {
            "seen": seen,
            "same_document": same_document,
            "played": played,
            "archive": archive,
            "name": download.suggested_filename,
        }


async def test_log_in_drop_two_clips_watch_them_finish_play_one_download_all(
    server: Server, clips: Clips
) -> None:
    result = await in_browser(drive_the_whole_flow, server.url, [clips.mp4, clips.mov])
    assert result["same_document"]
    assert result["seen"][-1] == 100
    assert min(result["seen"]) < 100  # seen while it ran, not only once done
    assert result["played"] == [320, 240, None]
    assert result["name"].endswith(".zip")
    with zipfile.ZipFile(io.BytesIO(result["archive"])) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
    assert names[0] == "manifest.json"
    assert sorted(names[1:]) == [
        "creative/creative_var1.mp4",
        "creative/creative_var2.mp4",
        "spot/spot_var1.mp4",
        "spot/spot_var2.mp4",
    ]


def drive_cancel_and_delete(url: str, slow: Path, quick: Path) -> dict[str, str]:
    with chromium() as browser:
        _context, page = new_page(browser, url)
        log_in(page)
        upload_in_page(page, [quick], variations=1)
        expect(page.locator(".detail-head .badge")).to_have_text("Completed", timeout=120_000)
        page.click("#delete-job")
        page.click("dialog >> text=Delete job")
        page.wait_for_url("**/#/jobs")
        expect(page.locator("#toasts")).to_contain_text("Job deleted.")
        expect(page.locator(".job-card")).to_have_count(0)

        upload_in_page(page, [slow], variations=3)
        expect(page.locator(".detail-head .badge")).to_have_text("Processing", timeout=60_000)
        page.click("#cancel-job")
        page.click("dialog >> text=Keep it")  # asked first: nothing happens
        expect(page.locator(".detail-head .badge")).to_have_text("Processing")
        page.click("#cancel-job")
        page.click("dialog >> text=Cancel job")
        expect(page.locator(".detail-head .badge")).to_have_text("Cancelled", timeout=60_000)
        return {"hash": page.url.rsplit("#", 1)[1]}


async def test_cancel_a_running_job_and_delete_a_finished_one(
    server: Server, clips: Clips, tmp_path: Path
) -> None:
    # Long enough at 1280x720 that it still runs when the page cancels it.
    slow = await trio.to_thread.run_sync(
        make_clip,
        find_ffmpeg(None),
        tmp_path / "slow.mp4",
        ClipSpec(seconds=20.0, width=1280, height=720),
    )
    result = await in_browser(drive_cancel_and_delete, server.url, slow, clips.mp4)
    assert result["hash"].startswith("/jobs/")


def drive_session_ends(
    url: str, stop: Callable[[], None], start: Callable[[], None]
) -> dict[str, Any]:
    with chromium() as browser:
        _context, page = new_page(browser, url)
        log_in(page)
        expect(page.locator("#connection")).to_have_text("Live")
        stop()  # the service goes away: the page says so and offers to retry, no logout
        expect(page.locator("#connection")).not_to_have_text("Live")
        page.click("nav >> text=New job")
        page.click("nav >> text=Jobs")
        expect(page.locator("[role=alert]")).to_contain_text("cannot be reached")
        while_down = page.url
        start()  # and comes back on the same port with the same data
        page.click("text=Try again")
        expect(page.locator("[role=alert]")).to_be_hidden()
        expect(page.locator("#connection")).to_have_text("Live", timeout=60_000)
        after_restart = page.url

        # A token the server does not accept: the next request answers 401.
        page.evaluate(
            """() => { const saved = JSON.parse(localStorage.getItem('videoRefresherSession'));
                saved.token = saved.token.slice(0, -4) + 'AAAA';
                localStorage.setItem('videoRefresherSession', JSON.stringify(saved)); }"""
        )
        page.reload()
        page.wait_for_url("**/#/login")
        invalid = page.locator("#login-message").text_content()
        log_in(page)
        # A session that ran out while the tab was closed.
        page.evaluate(
            """() => { const saved = JSON.parse(localStorage.getItem('videoRefresherSession'));
                saved.expiresAt = '2000-01-01T00:00:00Z';
                localStorage.setItem('videoRefresherSession', JSON.stringify(saved)); }"""
        )
        page.reload()
        page.wait_for_url("**/#/login")
        expired = page.locator("#login-message").text_content()
        return {
            "while_down": while_down,
            "after": after_restart,
            "invalid": invalid,
            "expired": expired,
        }


async def test_a_restart_keeps_the_session_and_a_401_sends_the_person_to_log_in(
    server: Server,
) -> None:
    def stop() -> None:
        trio.from_thread.run(server.stop)

    def start() -> None:
        trio.from_thread.run(server.start)

    result = await in_browser(drive_session_ends, server.url, stop, start)
    assert result["while_down"].endswith("#/jobs")
    assert result["after"].endswith("#/jobs")
    assert result["invalid"] == "That token is not valid; log in again."
    assert result["expired"] == "Your session has expired; log in again."


def drive_hidden_tab(url: str, clip: Path) -> list[dict[str, str]]:
    with chromium() as browser:
        _context, page = new_page(browser, url)
        log_in(page)
        expect(page.locator("#notify-toggle")).to_be_checked()
        # Turned off, it stays off after a reload; turned on again, it stays on.
        page.uncheck("#notify-toggle")
        page.reload()
        expect(page.locator("#notify-toggle")).not_to_be_checked()
        page.check("#notify-toggle")
        page.reload()
        expect(page.locator("#notify-toggle")).to_be_checked()
        upload_in_page(page, [clip], variations=1)
        page.evaluate("window.__setHidden(true)")
        expect(page.locator(".detail-head .badge")).to_have_text("Completed", timeout=120_000)
        page.wait_for_function("() => window.__notifications.length > 0")
        notifications: list[dict[str, str]] = page.evaluate("window.__notifications")
        return notifications


async def test_a_notification_fires_when_a_job_ends_while_the_tab_is_hidden(
    server: Server, clips: Clips
) -> None:
    notifications = await in_browser(drive_hidden_tab, server.url, clips.mp4)
    assert notifications == [
        {"title": "Video Refresher: creative.mp4", "body": "1 variation is ready to download."}
    ]


def drive_refusals(url: str, files: list[Path], fake: Path) -> dict[str, Any]:
    with chromium() as browser:
        _context, page = new_page(browser, url)
        log_in(page)
        page.click("nav >> text=New job")
        drop_files(page, "#drop-zone", files)
        expect(page.locator("#file-list li")).to_have_count(len(files))
        expect(page.locator("#file-list")).not_to_contain_text("checking…")
        refused = page.locator("#file-list .file-reason").all_text_contents()
        total = page.locator("#variations-total").text_content()
        # A file the browser cannot judge goes to the server, whose sentence is shown.
        for button in page.locator("#file-list button").all()[::-1]:
            button.click()
        expect(page.locator("#upload-button")).to_be_disabled()
        page.set_input_files("#file-picker", str(fake))
        expect(page.locator("#file-list")).not_to_contain_text("checking…")
        page.click("#upload-button")
        expect(page.locator("#upload-message")).not_to_be_empty()
        return {
            "refused": refused,
            "total": total,
            "server": page.locator("#upload-message").text_content(),
            "hash": page.url.rsplit("#", 1)[1],
        }


async def test_wrong_and_oversize_files_are_refused_before_sending_and_the_server_is_quoted(
    server: Server, clips: Clips, tmp_path: Path
) -> None:
    await server.stop()
    server.config = dataclasses.replace(server.config, max_upload_bytes=300_000)
    await server.start()
    notes = tmp_path / "brief.txt"
    notes.write_text("not a video")
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\0" * 4096)
    assert clips.long.stat().st_size > 300_000
    files = [clips.mp4, notes, clips.long]
    result = await in_browser(drive_refusals, server.url, files, fake)
    wrong_type, too_big = result["refused"]
    assert wrong_type == "Refused: Not an MP4 or MOV video."
    assert too_big.startswith("Refused: It is ")
    assert too_big.endswith(" KiB; the largest accepted is 293 KiB.")
    assert result["total"] == "5 variations in all"
    assert result["server"] == "“fake.mp4” is not a video file. Upload MP4 or MOV videos."
    assert result["hash"] == "/new"


VERDICTS = {
    "Distinct from the source",
    "Looks the same to a perceptual hash",
    "Distinct from the source, but close to another variation",
}
# What the numbers behind a verdict read, e.g. "PDQ median 47 of 256 · 0 % of frames matched
# · SSIM 0.912 · nearest sibling 52 · 2 draws" (a median of an even count may be a half).
MEASURED = (
    r"^PDQ median \d+(\.5)? of 256 · \d+ % of frames matched · SSIM [01]\.\d{3}"
    r"( · nearest sibling \d+(\.5)?)? · \d+ draws?$"
)


def drive_strength_verdicts_and_stills(url: str, teaser: Path) -> dict[str, Any]:
    with chromium() as browser:
        _context, page = new_page(browser, url)
        log_in(page)
        config = page.evaluate("fetch('/api/config').then((response) => response.json())")
        page.click("nav >> text=New job")
        checked = page.locator("input[name=strength]:checked")
        first_choice = checked.get_attribute("value")
        # By keyboard: the arrows move through the group; mirroring needs standard or strong.
        page.check("#strength-subtle")
        expect(page.locator("#mirror")).to_be_disabled()
        page.focus("#strength-subtle")
        page.keyboard.press("ArrowDown")
        expect(checked).to_have_attribute("value", "standard")
        expect(page.locator("#mirror")).to_be_enabled()
        page.keyboard.press("ArrowDown")
        expect(checked).to_have_attribute("value", "strong")
        page.check("#mirror")
        page.reload()  # both choices are kept
        expect(page.locator("#strength-strong")).to_be_checked()
        expect(page.locator("#mirror")).to_be_checked()
        page.click("nav >> text=Jobs")

        job_id = upload_in_page(page, [teaser], variations=2)
        expect(page.locator(".detail-head .badge")).to_have_text("Completed", timeout=120_000)
        sent = page.evaluate(
            """(id) => fetch(`/api/jobs/${id}`, { headers: { Authorization: 'Bearer ' +
                JSON.parse(localStorage.getItem('videoRefresherSession')).token } })
                .then((response) => response.json())""",
            job_id,
        )
        verdicts = page.locator(".output .verdict")
        expect(verdicts).to_have_count(2)
        words = page.locator(".output .verdict-words").all_text_contents()
        numbers = [verdict.get_attribute("title") for verdict in verdicts.all()]
        # The numbers show beneath a verdict while it has the keyboard's focus (a screen
        # reader has them all along, in a box clipped to one pixel).
        width = "(numbers) => numbers.getBoundingClientRect().width"
        shown = page.locator(".output .verdict-numbers").first
        unfocused = shown.evaluate(width)
        verdicts.first.focus()
        focused = shown.evaluate(width)

        compare = page.locator("#compare")
        expect(compare.locator(".compare-item")).to_have_count(3)  # the source and two
        captions = compare.locator("figcaption strong").all_text_contents()
        page.evaluate(SCROLL_THROUGH_STILLS)
        page.wait_for_function(STILLS_LOADED)
        stills = compare.locator("img.still").count()

        # A still that fails to load leaves a placeholder, never a broken image.
        page.route("**/stills/source-*", lambda route: route.fulfill(status=404))
        page.reload()
        page.evaluate(SCROLL_THROUGH_STILLS)
        expect(compare.locator(".still-placeholder")).to_have_text(["Still unavailable"])
        page.wait_for_function(STILLS_LOADED)
        return {
            "config": config,
            "first_choice": first_choice,
            "sent": {"strength": sent["strength"], "mirror": sent["mirror"]},
            "strength": page.locator("#job-strength").text_content(),
            "words": words,
            "numbers": numbers,
            "widths": (unfocused, focused),
            "captions": captions,
            "stills": stills,
            "after_failure": (compare.locator("img.still").count(), page.evaluate(BROKEN_IMAGES)),
        }


async def test_choose_strong_and_mirror_remembered_then_see_a_verdict_and_stills_side_by_side(
    server: Server, teaser: Path
) -> None:
    result = await in_browser(drive_strength_verdicts_and_stills, server.url, teaser)
    config = result["config"]
    assert [strength["value"] for strength in config["strengths"]] == [
        "subtle",
        "standard",
        "strong",
    ]
    assert result["first_choice"] == config["defaultStrength"]
    assert result["sent"] == {"strength": "strong", "mirror": True}
    strong = next(item["label"] for item in config["strengths"] if item["value"] == "strong")
    assert result["strength"] == f"Strength: {strong} · mirrored"
    assert len(result["words"]) == 2
    assert set(result["words"]) <= VERDICTS
    for numbers in result["numbers"]:
        assert re.match(MEASURED, numbers), numbers
    unfocused, focused = result["widths"]
    assert unfocused <= 1 < focused
    assert result["captions"] == ["Source", "Variation 1", "Variation 2"]
    assert result["stills"] == 3  # every still loaded: none replaced by a placeholder
    assert result["after_failure"] == (2, [])
