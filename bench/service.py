"""The real service in a subprocess, as in production, and what benchmarks read of it.

`Service` starts `python -m wiring serve` on a free loopback port with a data
directory of the benchmark's, logs in, and reads the memory and CPU time of the service
and of its FFmpeg children from /proc.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PASSWORD = "benchmark-password"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """The resident memory of one process; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) * 1024 if match else 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """The direct children of a process (the service's FFmpegs)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def pss_bytes(pid: int) -> int:
    """The proportional set size of one process: its resident pages, each shared page
    divided among the processes that map it; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def tree_pids(pid: int) -> list[int]:
    """A process and all its descendants."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            pending += children(current)
        except FileNotFoundError:
            continue
    return found


def tree_rss_bytes(pid: int) -> int:
    """The RSS of a process and all its descendants, added up: an upper bound, as a page
    they share counts once per process."""
    return sum(rss_bytes(one) for one in tree_pids(pid))


def tree_pss_bytes(pid: int) -> int:
    """The PSS of a process and all its descendants, added up: what the machine holds for
    them, each page they share counted once in all."""
    return sum(pss_bytes(one) for one in tree_pids(pid))


class PeakRss:
    """The largest resident memory of a process while the block runs, sampled every
    `interval_s`. With `tree`, of it and all its descendants: `peak` their RSS added up,
    `peak_pss` their PSS added up, read at each new high of that RSS (at most every
    PSS_EVERY_S): reading PSS walks the processes' page tables under their memory map's
    lock, and doing it at every sample slowed the service it measured (p50 7-9 ms under
    the mixed load became 11-15)."""

    PSS_EVERY_S = 0.5

    def __init__(self, pid: int, *, tree: bool = False, interval_s: float = 0.02) -> None:
        self.pid, self.peak, self.peak_pss = pid, 0, 0
        self._tree = tree
        self._interval_s = interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        pss_read = -math.inf
        while not self._done.is_set():
            if not self._tree:
                self.peak = max(self.peak, rss_bytes(self.pid))
            else:
                pids = tree_pids(self.pid)
                rss = sum(rss_bytes(one) for one in pids)
                high, self.peak = rss >= self.peak, max(self.peak, rss)
                if high and time.monotonic() - pss_read >= self.PSS_EVERY_S:
                    self.peak_pss = max(self.peak_pss, sum(pss_bytes(one) for one in pids))
                    pss_read = time.monotonic()
            time.sleep(self._interval_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def curl(*options: str, headers: list[str] | None = None) -> list[str]:
    """A quiet curl command line with `options` and each of `headers` as an `-H`."""
    return ["curl", "-sS", *options, *[arg for header in headers or [] for arg in ("-H", header)]]


def curl_many(url: str, clients: int, headers: list[str] | None = None) -> tuple[int, float]:
    """Download `url` with `clients` curls at once; return total bytes and wall seconds."""
    args = curl("-o", "/dev/null", "-w", "%{size_download}\n", headers=headers)
    started = time.perf_counter()
    procs = [subprocess.Popen([*args, url], stdout=subprocess.PIPE) for _ in range(clients)]
    total = sum(int(proc.communicate()[0]) for proc in procs)
    return total, time.perf_counter() - started


@dataclass
class Service:
    """The service running on `data_dir`, with `env` on top of the benchmark defaults."""

    data_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[str] | None = None
    url: str = ""
    token: str = ""

    def __enter__(self) -> Service:
        env = {
            **os.environ,
            "DATA_DIR": str(self.data_dir),
            "HOST": "127.0.0.1",
            "PORT": "0",
            "AUTH_PASSWORD": PASSWORD,
            "LOG_LEVEL": "WARNING",
            # As in production (Dockerfile): fewer malloc arenas keep the chunks that
            # worker threads read from piling up in per-thread arenas (129 -> 43 MiB for
            # 8 clients).
            "MALLOC_ARENA_MAX": "2",
            **self.env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wiring", "serve", "--log-level", "INFO"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if match := re.search(r"listening on (http://\S+)", line):
                self.url = match.group(1).rstrip(",")
                break
        else:
            raise RuntimeError("the service did not start")
        # Read the rest of its log and drop it, so a full pipe never blocks the service.
        stdout = self.process.stdout
        threading.Thread(target=lambda: all(True for _ in stdout), daemon=True).start()
        self.token = str(self.request("POST", "/api/auth", {"password": PASSWORD})["token"])
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def auth(self) -> list[str]:
        """The login as curl `-H` headers."""
        return [f"Authorization: Bearer {self.token}"]

    def request(self, method: str, path: str, body: object = None) -> dict[str, object]:
        """A JSON request to the service; its JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            answer: dict[str, object] = json.loads(response.read() or b"{}")
            return answer

    def wait_finished(self, job_id: str, timeout_s: float = 600.0) -> dict[str, object]:
        """Poll the job until it is no longer queued or processing; its last state."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.request("GET", f"/api/jobs/{job_id}")
            if job["status"] not in ("queued", "processing"):
                return job
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} did not finish in {timeout_s:g} s")
