"""Every benchmark, one table: `python -m bench` (what `bench/run` runs).

    python -m bench [--quick] [--only download,upload,...] [--json bench/results/latest.json]

Runs, one after the other (never at once: each would take the other's CPU), the
download, upload, resumable upload (cut three times),
mixed-load (API latency and the whole machine's memory), processing, fairness (a small
job behind a big one, fair queue against FIFO), first variation (a 10-file job's first
variation downloaded, against the whole job),
lifecycle, bucket (the ZIP with its outputs in S3) and workers (one worker against two,
sharing PostgreSQL) benchmarks, each against a baseline measured in the same run; prints
one table of every figure (name, ours, the baseline, the ratio, the target, PASS/FAIL or
"report" for figures without a target) and writes it as JSON. `--quick` runs each on
smaller inputs, to check the benchmarks themselves, not the service. Exits 1 if a target
is missed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import (
    bucket,
    download,
    fairness,
    first,
    lifecycle,
    mixed,
    processing,
    resumable,
    upload,
    workers,
)
from bench.verdict import Row, table, write_json

RESULTS = Path(__file__).parent / "results" / "latest.json"

# name -> (full run, quick run)
SUITES: dict[str, tuple[Callable[[], list[Row]], Callable[[], list[Row]]]] = {
    "download": (
        lambda: download.measure(gib=2.0, clients=8, rounds=3),
        lambda: download.measure(gib=0.25, clients=4, rounds=1),
    ),
    "upload": (
        lambda: upload.measure(gib=1.0, rounds=3),
        lambda: upload.measure(gib=0.1, rounds=1),
    ),
    "resumable": (
        lambda: resumable.measure(gib=1.0, cuts=3),
        lambda: resumable.measure(gib=0.1, cuts=3),
    ),
    "mixed": (
        lambda: mixed.measure(seconds=8.0, variations=10, rate=200.0, window_s=20.0),
        lambda: mixed.measure(seconds=2.0, variations=2, rate=50.0, window_s=3.0),
    ),
    "processing": (
        lambda: processing.figures(count=10, seconds=12.0),
        lambda: processing.figures(count=2, seconds=3.0),
    ),
    "fairness": (
        lambda: fairness.measure(seconds=10.0, files=3, variations=10),
        lambda: fairness.measure(seconds=2.0, files=1, variations=6),
    ),
    "first": (
        lambda: first.measure(files=10, seconds=10.0, variations=5),
        lambda: first.measure(files=2, seconds=2.0, variations=2),
    ),
    "lifecycle": (
        lambda: lifecycle.measure(jobs=10_000, evictions=100),
        lambda: lifecycle.measure(jobs=1_000, evictions=10),
    ),
    "bucket": (
        lambda: bucket.measure(gib=1.0, files=8, rounds=3),
        lambda: bucket.measure(gib=0.125, files=2, rounds=1),
    ),
    "workers": (
        lambda: workers.measure(seconds=10.0, variations=20, rounds=3, size="640x360"),
        lambda: workers.measure(seconds=2.0, variations=2, rounds=1, size="320x180"),
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small inputs: check the benches")
    parser.add_argument("--only", help=f"comma-separated, of: {','.join(SUITES)}")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the table")
    options = parser.parse_args(argv)
    chosen = list(SUITES) if not options.only else options.only.split(",")
    unknown = [name for name in chosen if name not in SUITES]
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(unknown)}")
    rows: list[Row] = []
    began = time.monotonic()
    for name in chosen:
        full, quick = SUITES[name]
        started = time.monotonic()
        print(f"\n== {name} ==", flush=True)
        rows += (quick if options.quick else full)()
        print(f"   ({time.monotonic() - started:.0f} s)", flush=True)
    print(f"\nall benchmarks in {time.monotonic() - began:.0f} s\n")
    print("\n".join(table(rows)))
    write_json(rows, options.json)
    print(f"\nwritten to {options.json}")
    missed = [row for row in rows if row.passed is False]
    if missed:
        print(f"{len(missed)} target(s) missed: " + "; ".join(row.name for row in missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
