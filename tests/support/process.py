"""The service as a real process (`python -m wiring serve`), for tests that signal,
kill and restart it on one data directory, and the checks that a restart after a crash
left everything as DESIGN.md §5 promises."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import trio

from refresher.archive.job_archive import MANIFEST_NAME
from refresher.media.ffmpeg import PARTIAL_SUFFIX, find_leftover_encoders
from refresher.storage.paths import Paths

GRACE_S = 3.0
# A janitor pass's log line: when it ended (the local time logging prints) and how long
# it took, so a test can tell when it began.
JANITOR_PASS = (
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO actors\.janitor: janitor pass in ([\d.]+) s"
)


@dataclass
class ServiceProcess:
    process: trio.Process
    url: str
    password: str
    # The lines the service printed and the tests have read so far.
    output: list[str]
    # What was read past the last whole line.
    unread: bytes = b""

    async def wait_for_line(self, pattern: str, *, since: int = 0) -> tuple[int, re.Match[str]]:
        """Read the service's output until one of its lines from the `since`th on matches
        `pattern`; return that line's index and match. The caller bounds the wait; fail if
        the service exits first."""
        regex = re.compile(pattern)
        checked = since
        while True:
            for index in range(checked, len(self.output)):
                if match := regex.search(self.output[index]):
                    return index, match
            checked = max(checked, len(self.output))
            if not await read_lines(self):
                raise AssertionError(f"service exited before {pattern!r}:\n{''.join(self.output)}")


async def read_lines(service: ServiceProcess) -> bool:
    """Read more of the service's output into `service.output`; return False at its end."""
    assert service.process.stdout is not None
    chunk = await service.process.stdout.receive_some()
    if not chunk:
        return False
    *lines, service.unread = (service.unread + chunk).split(b"\n")
    service.output.extend(line.decode() + "\n" for line in lines)
    return True


SERVE = (sys.executable, "-m", "wiring", "serve")
WORKER = (sys.executable, "-m", "wiring", "worker")
# What a worker (which serves no web app) logs once it works.
WORKER_READY = r"worker running"


async def start_service(
    data_dir: Path | None,
    *,
    new_session: bool = False,
    command: Sequence[str] = SERVE,
    cwd: Path | None = None,
    ready: str | None = None,
    **env: str,
) -> ServiceProcess:
    """Start `command` on a free port; return once it listens (or, given `ready`, once it
    logs a line matching that). Stop it with `stop_process`."""
    environ = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": "0",
        "SHUTDOWN_GRACE_S": str(GRACE_S),
        **env,
    }
    environ.pop("AUTH_PASSWORD", None)
    environ.pop("DATA_DIR", None)
    if data_dir is not None:
        environ["DATA_DIR"] = str(data_dir)
    process = await trio.lowlevel.open_process(
        list(command),
        env=environ,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=new_session,
    )
    # Not started yet: what it prints goes here until it says where it listens.
    service = ServiceProcess(process, url="", password="", output=[])
    try:
        with trio.fail_after(60):
            if ready is not None:
                await service.wait_for_line(ready)
                return service
            while not service.url:
                if not await read_lines(service):
                    raise AssertionError("service exited early:\n" + "".join(service.output))
                for text in service.output:
                    if match := re.search(r"login password: (\S+)", text):
                        service.password = match.group(1)
                    if match := re.search(r"listening on (http://\S+?)(,|$)", text.strip()):
                        service.url = match.group(1)
        assert service.password, "".join(service.output)
    except BaseException:
        await stop_process(service)
        raise
    return service


async def stop_process(service: ServiceProcess) -> None:
    """Kill the service's process if it still runs, and reap it."""
    with trio.CancelScope(shield=True):
        if service.process.returncode is None:
            service.process.kill()
        await service.process.wait()


@contextlib.asynccontextmanager
async def running_service(
    data_dir: Path | None,
    *,
    new_session: bool = False,
    command: Sequence[str] = SERVE,
    cwd: Path | None = None,
    **env: str,
) -> AsyncIterator[ServiceProcess]:
    """Start `command` (by default `python -m wiring serve`) on a free port; yield once
    it listens. With no `data_dir`, the service keeps its default (`./data` under `cwd`).

    With `new_session`, the service leads a process group of its own, so a test may
    signal that group (as a terminal or a supervisor does) without hitting pytest.
    """
    service = await start_service(
        data_dir, new_session=new_session, command=command, cwd=cwd, **env
    )
    try:
        yield service
    finally:
        await stop_process(service)


async def drain(service: ServiceProcess) -> str:
    """Read the service's output to its end; return all of it."""
    while await read_lines(service):
        pass
    return "".join(service.output) + service.unread.decode()


@contextlib.asynccontextmanager
async def logged_in(service: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        login = await http.post("/api/auth", json={"password": service.password})
        http.headers["Authorization"] = f"Bearer {login.json()['token']}"
        yield http


async def next_janitor_pass(service: ServiceProcess) -> int:
    """Wait for a janitor pass that begins after this call to end; return how many passes
    the service logged up to it. Run the service with a short `JANITOR_INTERVAL_S`."""
    # Log times have millisecond steps: a pass that began in this millisecond is too early.
    called = time.time() + 0.001
    index = 0
    while True:
        index, match = await service.wait_for_line(JANITOR_PASS, since=index)
        ended = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if ended - float(match.group(2)) >= called:
            return sum(1 for line in service.output[: index + 1] if re.search(JANITOR_PASS, line))
        index += 1


def store_rows(data_dir: Path, sql: str, *parameters: object) -> list[tuple[object, ...]]:
    """Run one query on the service's database, running or not (blocking)."""
    with contextlib.closing(sqlite3.connect(Paths(data_dir).database, timeout=10)) as conn:
        return conn.execute(sql, parameters).fetchall()


@dataclass(frozen=True)
class Archive:
    """A job's ZIP as a client received it."""

    received_bytes: int
    content_length: int
    names: list[str]
    # `ZipFile.testzip()`: the first member whose CRC-32 is wrong, or None.
    bad_member: str | None


async def download_archive(http: httpx.AsyncClient, job_id: str) -> Archive:
    """Download the job's ZIP whole and read it back with `zipfile`."""
    async with http.stream("GET", f"/api/jobs/{job_id}/download") as response:
        assert response.status_code == 200, await response.aread()
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
        content_length = int(response.headers["Content-Length"])

    def read_back() -> tuple[list[str], str | None]:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            return archive.namelist(), archive.testzip()

    names, bad_member = await trio.to_thread.run_sync(read_back)
    return Archive(len(body), content_length, names, bad_member)


@dataclass(frozen=True)
class Recovery:
    """What a restarted service left once it settled: for each crash test's checks."""

    janitor_passes: int
    uploads_left: list[str]
    partials_left: list[str]
    leftover_encoders: list[int]
    archive: Archive


async def settle_after_restart(
    service: ServiceProcess, http: httpx.AsyncClient, data_dir: Path, job_id: str
) -> Recovery:
    """Let a restarted service settle (a whole janitor pass), then gather what is left on
    disk and in the process table, and download the finished job `job_id`."""
    passes = await next_janitor_pass(service)
    paths = Paths(data_dir)

    def on_disk() -> tuple[list[str], list[str]]:
        uploads = sorted(path.name for path in paths.uploads.iterdir())
        partials = sorted(paths.relative(path) for path in paths.jobs.rglob(f"*{PARTIAL_SUFFIX}"))
        return uploads, partials

    uploads, partials = await trio.to_thread.run_sync(on_disk)
    encoders = await trio.to_thread.run_sync(find_leftover_encoders, data_dir)
    archive = await download_archive(http, job_id)
    return Recovery(passes, uploads, partials, encoders, archive)


def assert_recovered(recovery: Recovery, *, variations: int) -> None:
    """Fail unless nothing was left behind and the job's ZIP holds `variations` videos."""
    assert recovery.uploads_left == []
    assert recovery.partials_left == []
    assert recovery.leftover_encoders == []
    archive = recovery.archive
    assert archive.received_bytes == archive.content_length
    assert archive.bad_member is None
    assert archive.names[0] == MANIFEST_NAME
    assert len(archive.names) == 1 + variations, archive.names


async def stop_gracefully(service: ServiceProcess) -> str:
    """SIGTERM the service and fail unless it exits 0; return all it printed."""
    service.process.send_signal(signal.SIGTERM)
    with trio.fail_after(GRACE_S + 10):
        output = await drain(service)
        assert await service.process.wait() == 0, output
    return output


def integrity(data_dir: Path) -> str:
    """SQLite's `PRAGMA integrity_check` of the service's database: "ok" when sound."""
    return "; ".join(str(row[0]) for row in store_rows(data_dir, "PRAGMA integrity_check"))
