"""What `pip install .` gives a new user, and what the Docker image builds, hold every
file the service serves or opens, and the installed service works: the page, a job, its
ZIP. Run from outside the work tree, against a venv holding a wheel of the tracked files.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import zipfile
from pathlib import Path
from typing import Any

import pytest
import trio
from playwright.sync_api import Page, Request, Response, expect

from tests.installed.conftest import (
    PACKAGES,
    REPOSITORY,
    Installed,
    build_wheel,
    package_files,
    tracked_files,
)
from tests.support.browser import chromium, drop_files, new_page
from tests.support.clips import Clips
from tests.support.process import running_service, stop_gracefully

pytestmark = pytest.mark.slow


def test_the_installed_wheel_holds_every_tracked_file_of_the_packages(
    installed: Installed,
) -> None:
    expected = package_files()
    assert any(name.startswith("web/static/js/") for name in expected)
    got = {name for name in installed.installed_files() if name.split("/", 1)[0] in PACKAGES}
    assert sorted(expected - got) == [], "tracked but not installed"
    assert sorted(got - expected) == [], "installed but not tracked"


def test_the_console_script_is_the_one_the_image_and_procfile_run(installed: Installed) -> None:
    script = installed.venv / "bin" / "video-refresher"
    assert script.is_file()
    dockerfile = (REPOSITORY / "Dockerfile").read_text()
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert cmd.startswith('["video-refresher", "serve"'), cmd
    procfile = (REPOSITORY / "Procfile").read_text()
    for line in procfile.splitlines():
        if line.strip():
            assert shlex.split(line.split(":", 1)[1])[0] == "video-refresher", line


def dockerfile_build_stage() -> tuple[str, list[tuple[list[str], str]], str]:
    """The image's first stage: its WORKDIR, its COPY lines as (sources, destination),
    and the command that builds the wheel."""
    stages = re.split(r"^FROM ", (REPOSITORY / "Dockerfile").read_text(), flags=re.MULTILINE)
    build = stages[1]
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", build, re.MULTILINE)
    copies = []
    for line in re.findall(r"^COPY (.+)$", build, re.MULTILINE):
        *sources, destination = shlex.split(line)
        assert not any(source.startswith("--") for source in sources), line
        copies.append((sources, destination))
    (wheel_command,) = re.findall(r"^RUN (pip wheel .+)$", build, re.MULTILINE)
    return workdir, copies, wheel_command


def test_the_image_build_stage_makes_the_wheel_a_user_installs(
    installed: Installed, tmp_path: Path
) -> None:
    """The Dockerfile's build stage, done by hand as Docker would on a clean clone: copy
    what its COPY lines name, then build the wheel there."""
    workdir, copies, wheel_command = dockerfile_build_stage()
    assert wheel_command.endswith(" ."), wheel_command
    context = tracked_files()
    source = tmp_path / workdir.lstrip("/")
    for sources, destination in copies:
        target = source / destination
        for name in sources:
            below = [file for file in context if file.startswith(name.rstrip("/") + "/")]
            if below:  # a folder: its contents go to the destination
                for file in below:
                    copied = target / file[len(name.rstrip("/")) + 1 :]
                    copied.parent.mkdir(parents=True, exist_ok=True)
                    copied.write_bytes((REPOSITORY / file).read_bytes())
            else:
                assert name in context, f"the Dockerfile copies {name}, which is not tracked"
                copied = target / Path(name).name if destination.endswith("/") else target
                copied.parent.mkdir(parents=True, exist_ok=True)
                copied.write_bytes((REPOSITORY / name).read_bytes())
    wheel = build_wheel(source, tmp_path / "wheels")
    with zipfile.ZipFile(wheel) as archive:
        in_image = {name for name in archive.namelist() if ".dist-info/" not in name}
    user = {name for name in installed.installed_files() if ".dist-info/" not in name}
    assert sorted(user - in_image) == [], "what a user installs but the image leaves out"
    assert sorted(in_image - user) == []


def watch_requests(page: Page, url: str) -> list[str]:
    """Record every request to the service at `url` that fails or is answered 4xx/5xx.
    (The page's own `blob:` URLs, which it revokes once it has read a file, are not.)"""
    failures: list[str] = []

    def answered(response: Response) -> None:
        if response.url.startswith(url) and response.status >= 400:
            failures.append(f"{response.status} {response.url}")

    def failed(request: Request) -> None:
        if request.url.startswith(url):
            failures.append(f"failed {request.url}: {request.failure}")

    page.on("response", answered)
    page.on("requestfailed", failed)
    return failures


def drive_the_installed_page(url: str, password: str, clip: Path) -> dict[str, Any]:
    """Open the page, log in, make a one-variation job of `clip` and download its ZIP."""
    with chromium() as browser:
        _context, page = new_page(browser, url)
        failures = watch_requests(page, url)
        page.goto("/")
        expect(page.locator("#password")).to_be_visible()
        page.wait_for_load_state("networkidle")
        at_login = list(failures)

        page.fill("#password", password)
        page.click("#login button[type=submit]")
        page.wait_for_url("**/#/jobs")
        expect(page.locator("#jobs-empty")).to_be_visible()
        page.click("nav >> text=New job")
        drop_files(page, "#drop-zone", [clip])
        expect(page.locator("#file-list")).to_contain_text(clip.name)
        expect(page.locator("#file-list")).not_to_contain_text("checking…")
        page.fill("#variations", "1")
        page.click("#upload-button")
        page.wait_for_url("**/#/jobs/*")
        expect(page.locator(".detail-head .badge")).to_have_text("Completed", timeout=120_000)
        with page.expect_download() as download_info:
            page.click("#download-zip")
        archive = Path(download_info.value.path()).read_bytes()
        return {"at_login": at_login, "failures": failures, "archive": archive}


async def test_the_installed_service_serves_the_page_runs_a_job_and_its_zip(
    installed: Installed, clips: Clips, tmp_path: Path
) -> None:
    """The README's last step, `.venv/bin/video-refresher serve`, from the fresh copy with
    its defaults (data in `./data`, the password generated and printed)."""
    with trio.fail_after(300):
        async with running_service(
            None, command=installed.serve, cwd=installed.clone, PYTHONPATH=""
        ) as service:
            result = await trio.to_thread.run_sync(
                drive_the_installed_page, service.url, service.password, clips.mp4
            )
            await stop_gracefully(service)
    assert result["at_login"] == []
    assert result["failures"] == []
    with zipfile.ZipFile(io.BytesIO(result["archive"])) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == ["manifest.json", "creative/creative_var1.mp4"]
        # Measured by the installed measuring process (`python -m` of the installed wheel).
        [variation] = json.loads(archive.read("manifest.json"))["variations"]
        assert variation["measured"]["pdqMatchedShare"] is not None
    assert (installed.clone / "data" / "auth_password").read_text().strip() == service.password
