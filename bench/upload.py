"""Upload benchmark: our `POST /api/jobs` against a raw loopback receiver, same multipart body.

    python -m bench.upload [--gib 1] [--rounds 3]

Makes one real video of exactly `--gib` GiB (a 2 s 320x240 clip, padded with one MP4
`free` box of incompressible bytes, so it still probes as a video) and uploads it with
curl as a multipart form (`videos` plus `variations=1`) to the real service (a
subprocess, as in production) and to a minimal HTTP/1.1 server that writes the body to a
file (`bench.raw receive`, in a process of its own). The two take turns for `--rounds`
rounds; each of our jobs is deleted after its upload. Reports the median throughput of
each (reported, not judged: loopback is far above any internet link) beside the CPU
seconds each spent per GB (ours includes probing the video and queueing the job), the
service's RSS growth during an upload over its memory just before it (target < 32 MiB,
the largest of the rounds), and, reported apart, what earlier rounds' jobs (probing,
queueing, deleting) left in its memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
from pathlib import Path

from bench.raw import RawServer
from bench.service import PeakRss, Service, cpu_seconds, curl, rss_bytes
from bench.verdict import Row, below, table
from refresher.media.ffmpeg import find_ffmpeg
from refresher.media.probe import probe
from tests.support.footage import make_footage

GIB = 1024**3
MIB = 1024**2
BLOCK_BYTES = 8 * MIB
# What `POST /api/jobs` answers when it queued the job (web/uploads.py answers 202 today;
# 201 is taken too, so a change between the two does not fail the benchmark).
QUEUED = {201, 202}


def make_upload(path: Path, size: int) -> None:
    """Write a valid MP4 of exactly `size` bytes: a short clip, then one `free` box."""
    make_footage(find_ffmpeg(None), path, width=320, height=240, seconds=2.0)
    padding = size - path.stat().st_size
    # A 32-bit box size up to 4 GiB; beyond, size 1 and a 64-bit size after the type.
    if padding >= 2**32:
        header = (1).to_bytes(4, "big") + b"free" + padding.to_bytes(8, "big")
    else:
        header = padding.to_bytes(4, "big") + b"free"
    if padding < len(header):
        raise ValueError(f"{size} bytes is too small for the clip and its padding")
    # Random bytes, repeated, so that nothing on the way can compress the padding away.
    block = os.urandom(BLOCK_BYTES)
    with open(path, "ab") as out:
        out.write(header)
        remaining = padding - len(header)
        while remaining > 0:
            remaining -= out.write(block[: min(remaining, len(block))])
    probe(path)  # raises NotAVideo if the padding spoiled it


def curl_upload(url: str, upload: Path, headers: list[str], answer: Path) -> tuple[int, float]:
    """Upload the form with curl; the answer's body goes to `answer`. Return the HTTP
    status and the throughput in MB/s (bytes sent over curl's total time)."""
    written_out = "%{http_code} %{size_upload} %{time_total}"
    args = curl("-o", str(answer), "-w", written_out, headers=["Expect:", *headers])
    args += ["-F", "variations=1", "-F", f"videos=@{upload};type=video/mp4", url]
    written = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    status, sent, seconds = written.split()
    return int(status), int(float(sent)) / float(seconds) / 1e6


def delete_job(service: Service, job_id: str) -> None:
    """Delete the job, retrying while it is still stopping (409) or briefly busy (503)."""
    for _ in range(30):
        try:
            service.request("DELETE", f"/api/jobs/{job_id}")
            return
        except urllib.error.HTTPError as err:
            if err.code not in (409, 503):
                raise
            time.sleep(1.0)
    raise RuntimeError(f"job {job_id} could not be deleted")


def measure(gib: float = 1.0, rounds: int = 3) -> list[Row]:
    size = int(gib * GIB)
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as scratch:
        root = Path(scratch)
        upload, answer, received = root / "upload.mp4", root / "answer.json", root / "raw"
        received.mkdir()
        print(f"upload: making a {gib:g} GiB video ...", flush=True)
        make_upload(upload, size)
        with open(upload, "rb") as file:  # one untimed read, so both start from the cache
            while file.read(BLOCK_BYTES):
                pass
        env = {
            # One file of `size` must pass the per-file limit, and the quota must have
            # room for it at the high watermark (0.85) with margin for a slow delete.
            "MAX_UPLOAD_BYTES": str(size + MIB),
            "STORAGE_QUOTA_BYTES": str(4 * size + GIB),
        }
        rates: dict[str, list[float]] = {"raw": [], "ours": []}
        # CPU seconds each server spent per GB received, by round.
        cpu_per_gb: dict[str, list[float]] = {"raw": [], "ours": []}
        growth = kept = 0
        with RawServer("receive", received) as raw, Service(root / "data", env) as service:
            first = rss_bytes(service.pid)
            for round_number in range(1, rounds + 1):
                print(f"  round {round_number}/{rounds}: raw, then ours", flush=True)
                cpu_before = cpu_seconds(raw.pid)
                status, rate = curl_upload(raw.url, upload, [], answer)
                cpu_per_gb["raw"].append((cpu_seconds(raw.pid) - cpu_before) / (size / 1e9))
                if status != 200:
                    raise RuntimeError(f"the raw server answered {status}")
                rates["raw"].append(rate)
                for path in received.iterdir():
                    path.unlink()
                # Growth during an upload counts from just before it; what the jobs of
                # earlier rounds left behind (probing, queueing) is reported apart.
                before = rss_bytes(service.pid)
                kept = max(kept, before - first)
                cpu_before = cpu_seconds(service.pid)
                with PeakRss(service.pid) as watch:
                    url = f"{service.url}/api/jobs"
                    status, rate = curl_upload(url, upload, service.auth, answer)
                spent = cpu_seconds(service.pid) - cpu_before
                cpu_per_gb["ours"].append(spent / (size / 1e9))
                if status not in QUEUED:
                    raise RuntimeError(f"the service answered {status}: {answer.read_text()}")
                rates["ours"].append(rate)
                growth = max(growth, watch.peak - before)
                delete_job(service, str(json.loads(answer.read_text())["jobId"]))
                print(f"    raw {rates['raw'][-1]:.0f} MB/s, ours {rate:.0f} MB/s", flush=True)
    name = "upload, 1 GiB multipart" if gib == 1 else f"upload, {gib:g} GiB multipart"
    note = f"median of {rounds} rounds, curl -F; ours includes the probe and queueing"
    return [
        # Reported, not judged: loopback is far above what any internet link delivers;
        # what it costs is the CPU per GB beside it (CPU the encoder would have).
        Row(
            name,
            "MB/s",
            statistics.median(rates["ours"]),
            statistics.median(rates["raw"]),
            note=note,
        ),
        Row(
            "upload CPU per GB received",
            "CPU s/GB",
            statistics.median(cpu_per_gb["ours"]),
            statistics.median(cpu_per_gb["raw"]),
            note="ours includes the probe and queueing",
        ),
        Row("service RSS growth during one upload", "MiB", growth / MIB, None, below(32)),
        Row("service RSS kept after earlier uploads' jobs", "MiB", kept / MIB),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args(argv)
    rows = measure(options.gib, options.rounds)
    print("\n".join(table(rows)))
    return 1 if any(row.passed is False for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
