"""An open-loop HTTP load: GET one path at a steady rate, each latency counted from the
moment the request was due, not from when it went out.

    python -m bench.latency URL TOKEN RATE SECONDS

A closed-loop client (send, wait, send again) waits for a slow answer before sending the
next request, so a stall of the server delays the requests that would have measured it:
coordinated omission. Here request i is due at start + i / RATE whatever happened to
the others; it takes an idle keep-alive connection (or opens one), and its latency is
the time from its due moment to the last byte of its answer. A client late to send
(its own process starved of CPU) therefore counts against the server, never for it.

Runs in a process of its own (`measure_latency`), so the benchmark's other threads do
not share its interpreter; prints one JSON object: latencies in seconds, sorted, and the
failed requests by kind (connection errors, statuses other than 200).
"""

from __future__ import annotations

import gc
import json
import math
import statistics
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True)
class Latencies:
    """The sorted latencies (seconds) of the requests answered, and the failures by kind
    (an exception's name, or "HTTP <status>" for an answer other than 200)."""

    seconds: list[float]
    failures: dict[str, int]

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def percentile(self, share: float) -> float:
        """The nearest-rank percentile, in milliseconds."""
        if not self.seconds:
            return math.inf
        rank = max(1, math.ceil(share * len(self.seconds)))
        return 1000 * self.seconds[rank - 1]

    @property
    def median_ms(self) -> float:
        return 1000 * statistics.median(self.seconds) if self.seconds else math.inf


async def _read_answer(stream: trio.SocketStream) -> int:
    """Read one response with a Content-Length body; return its status."""
    data = b""
    while HEAD_END not in data:
        more = await stream.receive_some(65536)
        if not more:
            raise ConnectionError("closed mid-answer")
        data += more
    head, _, body = data.partition(HEAD_END)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        more = await stream.receive_some(65536)
        if not more:
            raise ConnectionError("closed mid-body")
        body += more
    return status


async def load(url: str, token: str, rate: float, seconds: float) -> Latencies:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    idle: list[trio.SocketStream] = []
    latencies: list[float] = []
    failures: Counter[str] = Counter()

    async def ask(stream: trio.SocketStream) -> int:
        await stream.send_all(request)
        return await _read_answer(stream)

    async def one(due: float) -> None:
        await trio.sleep_until(due)
        stream = None
        try:
            while idle and stream is None:
                # A kept connection the server has since closed (its keep-alive timeout)
                # fails at once: a browser sends again on a new one, and so does this.
                stream = idle.pop()
                try:
                    status = await ask(stream)
                except (OSError, trio.BrokenResourceError, ConnectionError):
                    await stream.aclose()
                    stream = None
            if stream is None:
                stream = await trio.open_tcp_stream(host, port)
                status = await ask(stream)
        except (OSError, trio.BrokenResourceError, ConnectionError) as error:
            failures[type(error).__name__] += 1
            if stream is not None:
                await stream.aclose()
            return
        latencies.append(trio.current_time() - due)
        if status != 200:
            failures[f"HTTP {status}"] += 1
        idle.append(stream)

    start = trio.current_time() + 0.2
    async with trio.open_nursery() as nursery:
        for index in range(int(rate * seconds)):
            nursery.start_soon(one, start + index / rate)
    for stream in idle:
        await stream.aclose()
    return Latencies(sorted(latencies), dict(failures))


def measure_latency(url: str, token: str, rate: float, seconds: float) -> Latencies:
    """Run the load in a process of its own; its latencies."""
    argv = [sys.executable, "-m", "bench.latency", url, token, str(rate), str(seconds)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    found = json.loads(out)
    return Latencies(found["seconds"], found["failures"])


def main(argv: list[str]) -> None:
    url, token, rate, seconds = argv
    # The instrument's own pauses must not count against the server: its cyclic garbage
    # collector, run as thousands of request tasks come and go, stopped it for 10-25 ms
    # at a time, and latency counted from each request's due time put them on the server.
    # A load of a minute or less holds its garbage easily.
    gc.disable()
    result = trio.run(load, url, token, float(rate), float(seconds))
    print(json.dumps({"seconds": result.seconds, "failures": result.failures}))


if __name__ == "__main__":
    main(sys.argv[1:])
