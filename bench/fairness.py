"""Fairness benchmark: how long a small job waits behind a big one, fair queue against FIFO.

    python -m bench.fairness [--seconds 10] [--files 3] [--variations 10]

Makes natural 1280x720 footage (`tests.support.footage`), then, once with the service's
queue in each order (`QUEUE_ORDER=fifo`, then `fair`, each a fresh service on a fresh
data directory): uploads a big job (`--files` copies x `--variations`), waits until it
is being processed, uploads a one-clip, one-variation job and times it from its upload
answered to its completion. Reports the small job's time in the fair queue (target:
within one batch, ≤ 15 s on this machine for 1x1 behind 3x10 of 10 s 720p) beside
FIFO's, measured in the same run, and the big job's variations made meanwhile.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.service import Service, curl
from bench.verdict import Row, below, table
from refresher.media.ffmpeg import find_ffmpeg
from tests.support.footage import make_footage

POLL_S = 0.25


def queue_job(service: Service, sources: list[Path], variations: int) -> str:
    """Upload `sources` as one job with curl; its id."""
    args = [*curl(headers=service.auth), "-F", f"variations={variations}"]
    for source in sources:
        args += ["-F", f"videos=@{source};type=video/mp4"]
    answer = subprocess.run(
        [*args, f"{service.url}/api/jobs"], check=True, capture_output=True, text=True
    ).stdout
    return str(json.loads(answer)["jobId"])


def wait_status(
    service: Service, job_id: str, statuses: set[str], timeout_s: float
) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = service.request("GET", f"/api/jobs/{job_id}")
        if job["status"] in statuses:
            return job
        time.sleep(POLL_S)
    raise TimeoutError(f"job {job_id} not {statuses} within {timeout_s:g} s")


def _small_wait(
    root: Path, order: str, big: list[Path], small: Path, variations: int
) -> tuple[float, int]:
    """The small job's seconds from upload to completion, and the big job's variations
    made by then, with the queue in `order`."""
    with Service(root / f"data-{order}", {"QUEUE_ORDER": order}) as service:
        big_id = queue_job(service, big, variations)
        wait_status(service, big_id, {"processing"}, 120)
        started = time.monotonic()
        small_id = queue_job(service, [small], 1)
        done = wait_status(service, small_id, {"completed", "failed"}, 900)
        waited = time.monotonic() - started
        if done["status"] != "completed":
            raise RuntimeError(f"the small job ended {done['status']}")
        big_now = service.request("GET", f"/api/jobs/{big_id}")
        made = sum(int(file["completedVariations"]) for file in big_now["files"])  # type: ignore[attr-defined]
    return waited, made


def footage_copies(root: Path, seconds: float, files: int, what: str) -> list[Path]:
    """`files` copies of natural 1280x720 footage `seconds` long, under `root`; `what`
    names the benchmark in what is printed."""
    source = root / "footage.mp4"
    print(f"{what}: natural footage, {seconds:g} s 1280x720 ...", flush=True)
    make_footage(find_ffmpeg(None), source, width=1280, height=720, seconds=seconds)
    copies = [source]
    for number in range(1, files):
        copies.append(root / f"footage-{number}.mp4")
        shutil.copyfile(source, copies[-1])
    return copies


def measure(seconds: float = 10.0, files: int = 3, variations: int = 10) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-fairness-") as scratch:
        root = Path(scratch)
        big = footage_copies(root, seconds, files, "fairness")
        source = big[0]
        small = root / "small.mp4"
        shutil.copyfile(source, small)
        waits = {}
        for order in ("fifo", "fair"):
            waits[order] = _small_wait(root, order, big, small, variations)
            print(f"  {order}: the small job took {waits[order][0]:.1f} s; the big one had "
                  f"made {waits[order][1]}", flush=True)  # fmt: skip
    shape = f"1x1 behind {files}x{variations} of {seconds:g} s 720p"
    return [
        Row(
            f"fairness: a small job's wait, {shape}",
            "s",
            waits["fair"][0],
            waits["fifo"][0],
            below(15),
            note="baseline: the same with QUEUE_ORDER=fifo",
        ),
        Row(
            "fairness: the big job's variations made meanwhile",
            "variations",
            waits["fair"][1],
            waits["fifo"][1],
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--variations", type=int, default=10)
    options = parser.parse_args(argv)
    rows = measure(options.seconds, options.files, options.variations)
    print("\n".join(table(rows)))
    return 1 if any(row.passed is False for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
