"""Debian's headless Chromium, as the page's tests drive it."""

from __future__ import annotations

import shutil

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
]
