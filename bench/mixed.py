"""Mixed-load benchmark: API latency and the whole machine's memory while the service
encodes, serves a download and answers the page's polling, all at once.

    python -m bench.mixed [--seconds 8] [--variations 10] [--rate 200] [--window 20]

The service (a subprocess, as in production, with the production `Dockerfile`'s
`MALLOC_ARENA_MAX=2`) holds a finished 2 GiB job. First, idle, `GET /api/jobs/:id` of
that job at a steady `--rate` requests per second for `--window` seconds
(`bench.latency`: open loop, latency counted from each request's due time, so a stall
is never hidden). Then the same load again while:

- a job of two 1080x1920 sources (natural footage with sound, `--seconds` long) makes
  `--variations` variations of each: uploaded with curl, encoded by the service's FFmpegs;
- the 2 GiB ZIP streams to curl, again and again at full speed, until the job is done.

The peak memory of the service and every process it runs (its FFmpegs and its measuring
process), sampled every 50 ms from the upload until the job is done, is the figure a
512 MB machine must stay under: their PSS added up, which counts each page they hold
once, as the machine does (read near the peak of their RSS added up, which counts the
libraries the service and its measuring process share twice, and is reported beside,
as an upper bound). Targets: p99
< 25 ms under load; peak PSS < 400 MiB. The idle p99 is the baseline: what the route
costs with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.download import make_job
from bench.latency import Latencies, measure_latency
from bench.service import PeakRss, Service, curl, tree_pss_bytes, tree_rss_bytes
from bench.verdict import Row, below, exactly, table
from refresher.media.ffmpeg import find_ffmpeg
from refresher.storage.paths import Paths
from tests.support.footage import make_footage

MIB = 1024**2
GIB = 1024**3


def download_loop(url: str, headers: list[str], stop: threading.Event) -> int:
    """Download `url` with curl again and again until `stop`; the number of full passes.
    A pass under way when `stop` is set is ended."""
    args = curl("-o", "/dev/null", headers=headers)
    passes = 0
    while not stop.is_set():
        process = subprocess.Popen([*args, url])
        while process.poll() is None:
            if stop.wait(0.1):
                process.kill()
                process.wait()
                return passes
        passes += 1
    return passes


def upload(service: Service, sources: list[Path], variations: int) -> str:
    args = curl("-w", "\n%{http_code}", "-F", f"variations={variations}", headers=service.auth)
    for source in sources:
        args += ["-F", f"videos=@{source};type=video/mp4"]
    out = subprocess.run([*args, f"{service.url}/api/jobs"], capture_output=True, text=True)
    body, _, status = out.stdout.rpartition("\n")
    if status not in ("201", "202"):
        raise RuntimeError(f"the upload was refused: {status} {body}")
    return str(json.loads(body)["jobId"])


def measure(
    seconds: float = 8.0, variations: int = 10, rate: float = 200.0, window_s: float = 20.0
) -> list[Row]:
    ffmpeg = find_ffmpeg(None)
    with tempfile.TemporaryDirectory(prefix="bench-mixed-") as scratch:
        work = Path(scratch)
        sources = [work / f"portrait-{index}.mp4" for index in (1, 2)]
        print(f"mixed: two {seconds:g} s 1080x1920 sources and a 2 GiB job ...", flush=True)
        for source in sources:
            make_footage(ffmpeg, source, width=1080, height=1920, seconds=seconds)
        paths = Paths(work / "data")
        big_job, _ = make_job(paths, 2 * GIB)
        env = {"STORAGE_QUOTA_BYTES": str(8 * GIB)}
        with Service(paths.root, env=env) as service:
            route = f"{service.url}/api/jobs/{big_job}"
            idle_rss, idle_pss = tree_rss_bytes(service.pid), tree_pss_bytes(service.pid)
            print(f"  idle: {rate:g} requests/s for {window_s:g} s", flush=True)
            idle = measure_latency(route, service.token, rate, window_s)
            stop = threading.Event()
            passes: list[int] = []
            with PeakRss(service.pid, tree=True, interval_s=0.05) as peak:
                started = time.monotonic()
                job_id = upload(service, sources, variations)
                downloads = threading.Thread(
                    target=lambda: passes.append(
                        download_loop(f"{route}/download", service.auth, stop)
                    )
                )
                downloads.start()
                print(f"  loaded: {rate:g} requests/s for {window_s:g} s", flush=True)
                loaded = measure_latency(route, service.token, rate, window_s)
                state = service.request("GET", f"/api/jobs/{job_id}")
                still_encoding = state["status"] in ("queued", "processing")
                finished = service.wait_finished(job_id)
                stop.set()
                downloads.join()
                took = time.monotonic() - started
            if finished["status"] != "completed":
                raise RuntimeError(f"the mixed job ended {finished['status']}: {finished}")
    print(
        f"  the job took {took:.0f} s; {passes[0]} full 2 GiB downloads meanwhile; "
        + ("it was still encoding when the loaded window ended" if still_encoding else
           "WARNING: it finished before the loaded window ended")
    )  # fmt: skip
    if loaded.failures:
        print(f"  failed under load: {loaded.failures}")
    return _rows(idle, loaded, (peak.peak, peak.peak_pss), (idle_rss, idle_pss), variations)


def _rows(
    idle: Latencies,
    loaded: Latencies,
    peak: tuple[int, int],
    at_idle: tuple[int, int],
    variations: int,
) -> list[Row]:
    """`peak` and `at_idle`: (RSS added up, PSS added up) of the service and its children."""
    load = f"under load (encoding 2x{variations} at 1080x1920, 2 GiB ZIP streaming)"
    return [
        Row(f"GET /api/jobs/:id p50 {load}", "ms", loaded.percentile(0.5), idle.percentile(0.5)),
        Row(
            f"GET /api/jobs/:id p99 {load}",
            "ms",
            loaded.percentile(0.99),
            idle.percentile(0.99),
            below(25),
        ),
        Row("GET /api/jobs/:id failed under load", "requests", loaded.failed, None, exactly(0)),
        Row(
            "peak memory, service + FFmpeg + measuring, mixed load, whole machine (PSS)",
            "MiB",
            peak[1] / MIB,
            at_idle[1] / MIB,
            below(400),
            note="each page once, however many of them map it",
        ),
        Row(
            "peak memory, the same, each process's RSS added up",
            "MiB",
            peak[0] / MIB,
            at_idle[0] / MIB,
            note="an upper bound: a shared library counts once per process",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--variations", type=int, default=10)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--window", type=float, default=20.0)
    options = parser.parse_args(argv)
    rows = measure(options.seconds, options.variations, options.rate, options.window)
    print("\n".join(table(rows)))
    return 1 if any(row.passed is False for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
