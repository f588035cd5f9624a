"""The benchmarks' own parts: the verdict table and its JSON, the open-loop client."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import trio

from bench import resumable
from bench.__main__ import SUITES
from bench.bucket import curl_objects, make_bucket_job, storage_pid
from bench.latency import Latencies, load
from bench.verdict import Row, at_least, below, exactly, table, write_json
from bench.workers import Timed, machine_busy_seconds, pin, tree_cpu_seconds
from refresher.config import Config
from refresher.storage.paths import Paths
from tests.support.s3 import S3Server
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


def test_the_bucket_and_workers_suites_have_a_full_and_a_quick_run() -> None:
    for name in ("bucket", "workers"):
        full, quick = SUITES[name]
        assert callable(full)
        assert callable(quick)
        assert full is not quick


def test_the_bucket_job_is_all_in_the_bucket(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.fresh_bucket()
    try:
        paths = Paths(tmp_path / "data")
        _, keys = make_bucket_job(paths, 2 * 1024**2, 2, s3_server.env(bucket, "bench"))
        # Kept under their names below the prefix; no local copy left.
        assert [key.split("/")[:2] for key in keys] == [["bench", "jobs"]] * 2
        assert [path for path in paths.jobs.rglob("*") if path.is_file()] == []
        client = s3_server.client()
        urls = [
            client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
            for key in keys
        ]
        got, seconds = curl_objects(urls)
        assert got == 2 * 1024**2
        assert seconds > 0
        pid = storage_pid(s3_server)
        assert pid is not None
        assert Path(f"/proc/{pid}/exe").resolve().name == "weed"
    finally:
        s3_server.drop_bucket(bucket)


def test_a_worker_is_pinned_thread_by_thread() -> None:
    """Every thread of the process, not only its main one: FFmpegs and measuring threads
    inherit the affinity of the thread that starts them."""
    script = (
        "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); "
        "print(flush=True); time.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        child.stdout.readline()  # its second thread runs
        tasks = list(Path(f"/proc/{child.pid}/task").iterdir())
        assert len(tasks) >= 2
        core = max(os.sched_getaffinity(0))
        pin(child.pid, core)
        assert {frozenset(os.sched_getaffinity(int(task.name))) for task in tasks} == {
            frozenset({core})
        }
        assert tree_cpu_seconds(child.pid) > 0
    finally:
        child.kill()
        child.wait()
    assert tree_cpu_seconds(child.pid) == 0.0  # gone
    assert 0 < machine_busy_seconds() <= machine_busy_seconds()


def test_workers_figures_are_medians_and_shares() -> None:
    two = Timed(2, 20, wall_s=[30.0, 20.0, 24.0], worker_cpu_s=[54.0, 36.0, 45.0])
    two.service_cpu_s, two.rest_cpu_s = [3.0, 2.0, 2.4], [0.0, 1.0, 0.0]
    assert two.rates == [40.0, 60.0, 50.0]
    assert two.per_minute == 50.0
    assert math.isclose(two.busy, 135.0 / (2 * 74.0))
    assert math.isclose(two.service_cores, 7.4 / 74.0)
    assert math.isclose(two.rest_cores, 1.0 / 74.0)


def test_the_resumable_bench_cuts_resumes_and_finds_the_bytes_whole() -> None:
    """Three cuts of a 48 MiB upload: each cut leaves the service with less than the
    client sent, and the bytes kept are the file's (the bench checks them)."""
    rows = resumable.measure(gib=48 / 1024, cuts=3)
    resent = next(row for row in rows if "sent again" in row.name)
    assert 0 <= resent.value < 48
