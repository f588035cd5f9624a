"""Time to first variation: from a 10-file job's upload answered to its first variation
downloaded, beside the time to the whole job.

    python -m bench.first [--files 10] [--seconds 10] [--variations 5]

Makes natural 1280x720 footage (`tests.support.footage`), starts the service on a fresh
data directory, uploads `--files` copies as one job with curl, then polls the job's
detail (as the page does) until a variation carries a link, and downloads it with curl:
the clock stops once its bytes have all arrived. It goes on to the job's end for the
baseline: what a user waited for before variations were playable while their job runs.
Reported, no target.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.fairness import footage_copies, queue_job, wait_status
from bench.service import Service, curl
from bench.verdict import Row, table

POLL_S = 0.1
TIMEOUT_S = 900.0


def _first_link(service: Service, job_id: str) -> dict[str, object]:
    """The first variation of the job that has a link (polled as the page polls)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        job = service.request("GET", f"/api/jobs/{job_id}")
        files: list[dict[str, object]] = job["files"]  # type: ignore[assignment]
        for file in files:
            for output in file["outputs"]:  # type: ignore[attr-defined]
                if output["downloadUrl"]:
                    return dict(output)
        if job["status"] not in ("queued", "processing"):
            raise RuntimeError(f"the job ended {job['status']} with no variation")
        time.sleep(POLL_S)
    raise TimeoutError(f"no variation within {TIMEOUT_S:g} s")


def _download(service: Service, output: dict[str, object]) -> None:
    """Download the variation with curl; raise unless every byte arrived."""
    answer = subprocess.run(
        [*curl("-o", "/dev/null", "-w", "%{http_code} %{size_download}"),
         f"{service.url}{output['downloadUrl']}"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    if answer.split() != ["200", str(output["fileSize"])]:
        raise RuntimeError(f"the first variation did not download: {answer}")


def measure(files: int = 10, seconds: float = 10.0, variations: int = 5) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-first-") as scratch:
        root = Path(scratch)
        sources = footage_copies(root, seconds, files, "first variation")
        with Service(root / "data") as service:
            job_id = queue_job(service, sources, variations)
            answered = time.monotonic()
            _download(service, _first_link(service, job_id))
            first = time.monotonic() - answered
            print(f"  the first variation downloaded {first:.1f} s after the upload's answer",
                  flush=True)  # fmt: skip
            done = wait_status(service, job_id, {"completed", "failed", "cancelled"}, TIMEOUT_S)
            whole = time.monotonic() - answered
            if done["status"] != "completed":
                raise RuntimeError(f"the job ended {done['status']}")
    shape = f"{files} files x {variations} of {seconds:g} s 720p"
    return [
        Row(
            f"time to first variation downloaded, {shape}",
            "s",
            first,
            whole,
            note="baseline: the whole job, upload answered to completed",
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--variations", type=int, default=5)
    options = parser.parse_args(argv)
    print("\n".join(table(measure(options.files, options.seconds, options.variations))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
