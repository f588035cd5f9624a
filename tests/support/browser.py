"""Debian's headless Chromium, as the page's tests drive it, and what they check on a page."""

from __future__ import annotations

import base64
import mimetypes
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.support.http import TEST_PASSWORD

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless as root in a sandbox with no network beyond loopback: no sandbox, no GPU, and
# none of the background connections Chromium would otherwise keep trying.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
# The README shows one of these; every view at both widths is written here.
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WIDTHS = (375, 1440)
HEIGHT = 900
# Notifications the page shows are kept in `window.__notifications`, and the test can
# hide the tab: `window.__setHidden(true)` (headless Chromium's tabs are never hidden).
PAGE_HOOKS = """
window.__notifications = [];
if (window.Notification) {
  const Real = window.Notification;
  window.Notification = class extends Real {
    constructor(title, options) {
      super(title, options);
      window.__notifications.push({ title, body: options && options.body });
    }
  };
  Object.defineProperty(window.Notification, "permission", { get: () => Real.permission });
  window.Notification.requestPermission = (...args) => Real.requestPermission(...args);
}
let hidden = false;
Object.defineProperty(document, "visibilityState", { get: () => (hidden ? "hidden" : "visible") });
Object.defineProperty(document, "hidden", { get: () => hidden });
window.__setHidden = (value) => {
  hidden = value;
  document.dispatchEvent(new Event("visibilitychange"));
};
"""


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(
    browser: Browser, url: str, width: int = 1440, scheme: Literal["dark", "light"] = "dark"
) -> tuple[BrowserContext, Page]:
    """A fresh profile at `width` px preferring `scheme`, with notifications allowed, on
    the service's origin."""
    context = browser.new_context(
        base_url=url,
        viewport={"width": width, "height": HEIGHT},
        color_scheme=scheme,
        accept_downloads=True,
        permissions=["notifications"],
    )
    context.add_init_script(PAGE_HOOKS)
    page = context.new_page()
    page.set_default_timeout(30_000)
    return context, page


def log_in(page: Page, password: str = TEST_PASSWORD) -> None:
    page.goto("/")
    page.fill("#password", password)
    page.click("#login button[type=submit]")
    page.wait_for_url("**/#/jobs")


def drop_files(page: Page, selector: str, files: list[Path]) -> None:
    """Drop `files` on `selector` as a person dragging them from a file manager would."""
    payload = [
        {
            "name": path.name,
            "type": mimetypes.guess_type(path.name)[0] or "",
            "data": base64.b64encode(path.read_bytes()).decode(),
        }
        for path in files
    ]
    transfer = page.evaluate_handle(
        """(files) => {
            const transfer = new DataTransfer();
            for (const file of files) {
                const bytes = Uint8Array.from(atob(file.data), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], file.name, { type: file.type }));
            }
            return transfer;
        }""",
        payload,
    )
    page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


# Every text node whose lines outnumber its words has a word broken across lines (a
# column squeezed narrower than a word); text cut with an ellipsis on one line is fine.
SQUEEZED_TEXT = """() => {
  const found = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.textContent.trim();
    const element = node.parentElement;
    if (!text || !element || !element.getClientRects().length) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    const rects = [...range.getClientRects()].filter((r) => r.width > 0);
    const lines = new Set(rects.map((r) => Math.round(r.top)));
    const words = text.split(/\\s+/).length;
    if (lines.size > words) found.push(`${element.tagName}: ${text.slice(0, 60)}`);
  }
  return found;
}"""
BROKEN_IMAGES = """() => [...document.images]
  .filter((img) => img.getClientRects().length && !(img.complete && img.naturalWidth > 0))
  .map((img) => img.currentSrc || img.src)"""
OVERFLOW = "() => document.documentElement.scrollWidth - window.innerWidth"


def check_view(page: Page, name: str) -> None:
    """The view fits its width, keeps words whole, shows every image, passes axe-core's
    serious and critical rules; and its screenshot is written for the README."""
    page.wait_for_load_state("networkidle")
    width = page.viewport_size["width"] if page.viewport_size else 0
    scheme = page.evaluate("matchMedia('(prefers-color-scheme: light)').matches")
    assert page.evaluate(OVERFLOW) <= 0, f"{name} at {width} px scrolls sideways"
    assert page.evaluate(SQUEEZED_TEXT) == [], f"{name} at {width} px breaks words"
    assert page.evaluate(BROKEN_IMAGES) == [], f"{name} at {width} px has broken images"
    results = Axe().run(page)
    serious = [
        violation
        for violation in results.response["violations"]
        if violation["impact"] in ("serious", "critical")
    ]
    assert serious == [], f"{name} at {width} px:\n{results.generate_report()}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    suffix = "-light" if scheme else ""
    page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}{suffix}.png"), full_page=True)
