"""The benchmarks' own parts: the verdict table and its JSON, the open-loop client."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import httpx
import trio

from bench.latency import Latencies, load
from bench.verdict import Row, at_least, below, exactly, table, write_json
from refresher.config import Config
from wiring.service import RunningService


def test_a_row_is_judged_on_its_value_or_its_ratio() -> None:
    ratio_rule = Row("download", "MB/s", 850.0, 1000.0, at_least(0.85, on="ratio"))
    assert ratio_rule.ratio == 0.85
    assert ratio_rule.passed is True
    assert Row("download", "MB/s", 849.0, 1000.0, at_least(0.85, on="ratio")).passed is False
    assert Row("p99", "ms", 25.0, 3.0, below(25)).passed is False  # strictly below
    assert Row("p99", "ms", 24.9, 3.0, below(25)).passed is True
    assert Row("failed", "requests", 0, None, exactly(0)).passed is True
    # No baseline: a rule on the ratio cannot hold; no target: reported, not judged.
    assert Row("x", "MB/s", 1.0, None, at_least(0.5, on="ratio")).passed is False
    assert Row("cpu", "CPU s/GB", 0.4, 0.3).passed is None


def test_the_json_is_a_list_of_the_six_fields(tmp_path: Path) -> None:
    rows = [
        Row("download, 1 client", "MB/s", 2829.8, 3253.4, at_least(0.85, on="ratio")),
        Row("download CPU per GB", "CPU s/GB", 0.404, 0.292),
    ]
    path = tmp_path / "results" / "latest.json"
    write_json(rows, path)
    written = json.loads(path.read_text())
    assert [sorted(item) for item in written] == [
        ["baseline", "name", "pass", "ratio", "target", "value"]
    ] * 2
    assert written[0] == {
        "name": "download, 1 client (MB/s)",
        "value": 2829.8,
        "baseline": 3253.4,
        "ratio": 0.87,
        "target": "ratio >= 0.85",
        "pass": True,
    }
    assert written[1]["target"] is None
    assert written[1]["pass"] is None
    lines = table(rows)
    assert lines[0].split() == ["benchmark", "value", "baseline", "ratio", "target", "result"]
    assert lines[1].endswith("PASS")
    assert lines[2].endswith("report")


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    latencies = Latencies([i / 1000 for i in range(1, 101)], {})  # 1..100 ms
    assert latencies.percentile(0.5) == 50.0
    assert latencies.percentile(0.99) == 99.0
    assert latencies.median_ms == 50.5
    assert math.isinf(Latencies([], {"HTTP 500": 3}).percentile(0.99))


async def test_the_open_loop_client_sends_every_request_on_time(
    service: RunningService, config: Config
) -> None:
    async with httpx.AsyncClient(base_url=service.url) as http:
        login = await http.post("/api/auth", json={"password": config.auth_password})
    token = login.json()["token"]
    result = await load(f"{service.url}/api/jobs", token, rate=40.0, seconds=0.5)
    assert result.failed == 0
    assert len(result.seconds) == 20
    assert result.seconds == sorted(result.seconds)
    # A wrong token: every request answered, every one counted as failed.
    refused = await load(f"{service.url}/api/jobs", "not-a-token", rate=40.0, seconds=0.25)
    assert refused.failed == 10


async def test_a_server_that_stalls_counts_from_the_due_time() -> None:
    """Coordinated omission: requests due while the server stalls (all of it, for 0.3 s)
    are answered only after it, and their latency counts from when each was due, though
    each is answered at once once it gets in. A client that waited to send, or timed
    from its send, would report them all prompt."""
    lock = trio.Lock()
    stalled = False

    async def serve(stream: trio.SocketStream) -> None:
        nonlocal stalled
        while await stream.receive_some(65536):
            async with lock:
                if not stalled:
                    stalled = True
                    await trio.sleep(0.3)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        result = await load(f"http://127.0.0.1:{port}/", "token", rate=100.0, seconds=0.2)
        nursery.cancel_scope.cancel()
    assert result.failed == 0
    assert len(result.seconds) == 20
    # Due at 0, 10, ..., 190 ms; all answered at about 300 ms.
    assert result.seconds[-1] >= 0.3
    assert result.seconds[0] >= 0.1
