"""Several processes of the service sharing one PostgreSQL store: web processes (`serve
--role web`) and workers (`worker`). They share one data directory, as on one machine, or
(with a bucket for the bytes) each has its own, as on machines of their own."""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import trio

from tests.support.clock import wait_for
from tests.support.process import (
    SERVE,
    WORKER,
    WORKER_READY,
    ServiceProcess,
    read_lines,
    start_service,
    stop_process,
)

# Fast enough for tests: a dead worker's claim lapses in seconds.
CLAIM_TTL_S = 3.0


@dataclass
class Cluster:
    data_dir: Path
    database_url: str
    env: dict[str, str]
    # Reads every process's output as it comes (a pipe nobody reads stops its writer).
    pumps: trio.Nursery
    # Whether each process has a data directory of its own, under `data_dir`.
    separate: bool = False
    webs: list[ServiceProcess] = field(default_factory=list)
    workers: list[ServiceProcess] = field(default_factory=list)
    data_dirs: list[Path] = field(default_factory=list)
    # Each process's data directory, by its PID.
    dir_of: dict[int, Path] = field(default_factory=dict)

    def _data_dir(self, role: str) -> Path:
        if not self.separate:
            return self.data_dir
        own = self.data_dir / f"{role}-{len(self.data_dirs) + 1}"
        self.data_dirs.append(own)
        return own

    async def start_web(self, data_dir: Path | None = None) -> ServiceProcess:
        """Start a web process (in `data_dir`: again where one ran before)."""
        own = data_dir or self._data_dir("web")
        web = await start_service(own, command=(*SERVE, "--role", "web"), **self.env)
        self.dir_of[web.process.pid] = own
        self.webs.append(web)
        self.pumps.start_soon(_pump, web)
        return web

    async def start_worker(self) -> ServiceProcess:
        own = self._data_dir("worker")
        worker = await start_service(own, command=WORKER, ready=WORKER_READY, **self.env)
        self.dir_of[worker.process.pid] = own
        self.workers.append(worker)
        self.pumps.start_soon(_pump, worker)
        return worker

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Run one statement on the shared store; return its rows, if any (blocking)."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def encoding(self) -> dict[int, list[int]]:
        """Each worker's PID, with the encoders (its child processes) it runs now."""
        return {
            worker.process.pid: children(worker.process.pid)
            for worker in self.workers
            if worker.process.returncode is None
        }


async def _pump(service: ServiceProcess) -> None:
    while await read_lines(service):
        pass


async def logged(service: ServiceProcess, pattern: str, *, timeout_s: float = 30) -> str:
    """Wait until the (pumped) output of `service` has a line matching `pattern`."""

    async def found() -> str:
        return next((line for line in service.output if re.search(pattern, line)), "")

    with trio.fail_after(timeout_s):
        return await wait_for(found, polls=10**6, step_s=0.05)


@contextlib.asynccontextmanager
async def running_cluster(
    data_dir: Path,
    database_url: str,
    *,
    webs: int = 2,
    workers: int = 2,
    separate: bool = False,
    **env: str,
) -> AsyncIterator[Cluster]:
    """Start `webs` web processes, then `workers` workers (each with a data directory of
    its own if `separate`); yield them running; kill whatever still runs at the end."""
    settings = {
        "DATABASE_URL": database_url,
        "CLAIM_TTL_S": str(CLAIM_TTL_S),
        "LOG_LEVEL": "INFO",
        **env,
    }
    async with trio.open_nursery() as pumps:
        cluster = Cluster(data_dir, database_url, settings, pumps, separate)
        try:
            # The first web process makes the shared password; the rest start together.
            if webs:
                await cluster.start_web()
            async with trio.open_nursery() as starting:
                for _ in range(webs - 1):
                    starting.start_soon(cluster.start_web)
                for _ in range(workers):
                    starting.start_soon(cluster.start_worker)
            yield cluster
        finally:
            for service in [*cluster.webs, *cluster.workers]:
                await stop_process(service)
            pumps.cancel_scope.cancel()


def children(pid: int) -> list[int]:
    """The PIDs of the live processes whose parent is `pid` (blocking)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (not gone, not a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class HeldDownload:
    """A download whose client stopped reading after the response's head: its window is a
    few kilobytes, so the server waits, holding the job's lease, until `finish` reads on."""

    sock: trio.socket.SocketType
    status: int
    length: int
    body: bytearray

    async def finish(self) -> bytes:
        """Read the rest of the body; return all of it."""
        while len(self.body) < self.length:
            chunk = await self.sock.recv(65536)
            if not chunk:
                break
            self.body += chunk
        self.sock.close()
        return bytes(self.body)


async def hold_download(url: str, path: str, token: str) -> HeldDownload:
    """GET `path` from the service at `url` with a tiny receive window, and stop reading
    once the response's head is in."""
    where = urlsplit(url)
    sock = trio.socket.socket()
    # Set before connecting, so the window offered stays this small.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((where.hostname, where.port))
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {where.netloc}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    await sock.send(request.encode())
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = await sock.recv(1024)
        assert chunk, received
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:])}
    return HeldDownload(sock, int(lines[0].split()[1]), int(headers["content-length"]),
                        bytearray(body))  # fmt: skip
