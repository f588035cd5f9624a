"""Lifecycle benchmark: one janitor pass and one evictor pass over 10 000 jobs.

    python -m bench.lifecycle [--jobs 10000] [--evictions 100] [--keep DIR]

Builds a data directory whose store holds `--jobs` jobs: 88 % finished and within their
24 hours, 1 % finished and expired, 6 % tombstones (a sixth of them past retention),
4 % queued (a fortieth of those past expiry) and 1 % processing. Every job that has
files has them on disk, as zero-byte files: the passes list directories and compare
names, never read contents, so empty files cost them what full ones would while the
benchmark stays small; the store records 100 kB per output, which is what the evictor
counts. Then, with the real store, download tracker and actors under trio, it times:

- a janitor pass with work to do (expire, fail stale queued jobs, purge, remove their
  uploads) and a second pass with nothing left (the steady state);
- an evictor pass with nothing to evict, and one whose quota and low mark force exactly
  `--evictions` evictions (through `request_room(0)`, i.e. including the inbox hop).

The volume reading is injected (a half-full 100 GiB volume) so the figures do not depend
on this machine's disk. Prints each time against the 0.5 s target (DESIGN.md section 6)
and exits 1 if one misses it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from sqlalchemy import Connection, text

from actors.download_tracker import DownloadTracker
from actors.evictor import Evictor
from actors.janitor import Janitor
from actors.runtime import Supervisor
from bench.verdict import Row, below, table
from refresher.jobs.lifecycle import Lifecycle
from refresher.jobs.status import ACTIVE, FINISHED, JobStatus
from refresher.storage.paths import Paths
from refresher.storage.usage import stored_bytes
from refresher.store import Database
from refresher.store import sqlite as sqlite_store
from refresher.timestamps import iso

TARGET_S = 0.5
HOUR_S = 3600.0
TTL_S = 24 * HOUR_S
OUTPUT_BYTES = 100_000
UPLOAD_BYTES = 1_000_000
VARIATIONS = 2
GIB = 1024**3
VOLUME = (50 * GIB, 100 * GIB)


# The columns of the rows `build` makes, in their order.
JOB_FIELDS = ("id", "status", "created", "updated", "finished", "expires", "variations", "seed",
              "reason")  # fmt: skip
FILE_FIELDS = ("id", "job_id", "name", "upload", "size", "status", "updated")
OUTPUT_FIELDS = ("id", "job_id", "file_id", "variation", "path", "size", "crc", "effects",
                 "created")  # fmt: skip


def build(paths: Paths, jobs: int, now: float) -> dict[str, int]:
    """Write the store and the files; return how many jobs of each kind were made."""
    paths.create()
    counts = {
        "finished": jobs * 88 // 100,
        "expired": jobs // 100,
        "tombstone": jobs * 5 // 100,
        "old_tombstone": jobs // 100,
        "queued": jobs * 39 // 1000,
        "stale_queued": jobs // 1000,
    }
    counts["processing"] = jobs - sum(counts.values())
    job_rows, file_rows, output_rows = [], [], []
    finished_statuses = (JobStatus.COMPLETED,) * 8 + (JobStatus.FAILED, JobStatus.CANCELLED)
    serial = 0
    for kind, count in counts.items():
        for index in range(count):
            serial += 1
            job_id, file_id = str(uuid.uuid4()), str(uuid.uuid4())
            upload_path = None
            status, deleted_reason = JobStatus.QUEUED, None
            created = finished = now - (serial % 1000) * 60 - 3600
            finished_at: str | None = None
            updated = created
            expires = created + TTL_S
            if kind in ("finished", "expired"):
                status = finished_statuses[index % len(finished_statuses)]
                finished = now - (index % 1380) * 60 if kind == "finished" else now - TTL_S - 60
                finished_at = iso(finished)
                updated, expires = finished, finished + TTL_S
            elif kind in ("tombstone", "old_tombstone"):
                status = JobStatus.EXPIRED if index % 2 else JobStatus.EVICTED
                deleted_reason = "Results expired 24 hours after the job finished."
                back = 2 * 24 * HOUR_S if kind == "tombstone" else 8 * 24 * HOUR_S
                finished_at, updated, expires = iso(now - back - TTL_S), now - back, now - back
            elif kind == "stale_queued":
                created, updated, expires = now - TTL_S - 60, now - TTL_S - 60, now - 60
            elif kind == "processing":
                status = JobStatus.PROCESSING
            if status in ACTIVE:
                upload = paths.upload_dir(job_id) / "0.upload"
                upload.parent.mkdir()
                upload.touch()
                upload_path = paths.relative(upload)
            if status in FINISHED or status == JobStatus.PROCESSING:
                job_dir = paths.job_dir(job_id)
                job_dir.mkdir()
                for variation in range(1, VARIATIONS + 1):
                    output = job_dir / f"{file_id}_var{variation}.mp4"
                    output.touch()
                    output_rows.append(
                        (str(uuid.uuid4()), job_id, file_id, variation, paths.relative(output),
                         OUTPUT_BYTES, 0, "{}", iso(finished))
                    )  # fmt: skip
            file_status = status if status in ACTIVE | {JobStatus.FAILED} else JobStatus.COMPLETED
            job_rows.append(
                (job_id, status, iso(created), iso(updated), finished_at, iso(expires),
                 VARIATIONS, serial, deleted_reason)
            )  # fmt: skip
            file_rows.append(
                (file_id, job_id, "ad.mp4", upload_path, UPLOAD_BYTES, file_status, iso(updated))
            )
    with sqlite_store.writing(paths.database) as conn:
        conn.execute(
            text(
                """INSERT INTO jobs (id, status, created_at, updated_at, finished_at, expires_at,
                                     total_videos, variations_per_video, total_variations,
                                     seed, deleted_reason)
                   VALUES (:id, :status, :created, :updated, :finished, :expires, 1,
                           :variations, 2, :seed, :reason)"""
            ),
            [dict(zip(JOB_FIELDS, row, strict=True)) for row in job_rows],
        )
        conn.execute(
            text(
                """INSERT INTO job_files (id, job_id, position, original_name, upload_path,
                                          file_size, status, updated_at)
                   VALUES (:id, :job_id, 0, :name, :upload, :size, :status, :updated)"""
            ),
            [dict(zip(FILE_FIELDS, row, strict=True)) for row in file_rows],
        )
        conn.execute(
            text(
                """INSERT INTO output_files (id, job_id, job_file_id, variation_index, path,
                                             size, crc32, effects_json, created_at)
                   VALUES (:id, :job_id, :file_id, :variation, :path, :size, :crc, :effects,
                           :created)"""
            ),
            [dict(zip(OUTPUT_FIELDS, row, strict=True)) for row in output_rows],
        )
        conn.exec_driver_sql("ANALYZE")
    return counts


async def timed(label: str, action: Callable[[], Awaitable[object]]) -> tuple[str, float, object]:
    began = time.perf_counter()
    result = await action()
    return label, time.perf_counter() - began, result


def count_status(conn: Connection, status: str) -> int:
    found: int = conn.execute(
        text("SELECT count(*) FROM jobs WHERE status = :status"), {"status": status}
    ).scalar_one()
    return found


async def run(paths: Paths, now: float, evictions: int) -> list[tuple[str, float, object]]:
    db = await Database.open(paths.database)
    results = []
    try:
        tracker = DownloadTracker(db, now=lambda: now)
        lifecycle = Lifecycle(db, paths, now=lambda: now, ttl_s=86_400)
        janitor = Janitor(lifecycle, tracker, interval_s=300)
        stored = await db.read(stored_bytes)
        evictor = Evictor(
            lifecycle, tracker, quota_bytes=10 * stored, high=0.85, low=0.75,
            volume_usage=lambda root: VOLUME,
        )  # fmt: skip
        async with trio.open_nursery() as nursery:
            # The janitor is driven by hand; the evictor answers through its inbox.
            await nursery.start(Supervisor([tracker, evictor]).run)
            await evictor.request_room(0)  # let its look on start pass
            results.append(await timed("janitor pass, with work", janitor.sweep))
            results.append(await timed("janitor pass, steady state", janitor.sweep))
            results.append(
                await timed("evictor pass, nothing to evict", lambda: evictor.request_room(0))
            )
            # Usage just over the high mark, and a low mark that exactly `evictions`
            # of the oldest finished jobs (each 2 outputs) bring it under.
            stored = await db.read(stored_bytes)
            job_bytes = VARIATIONS * OUTPUT_BYTES
            evictor.quota_bytes = int(stored / (evictor.high + 0.005))
            evictor.low = (stored - (evictions - 0.5) * job_bytes) / evictor.quota_bytes
            if not 0 < evictor.low < evictor.high:
                raise SystemExit(f"--evictions {evictions} is too many for --jobs")
            before = await db.read(lambda conn: count_status(conn, JobStatus.EVICTED))
            results.append(
                await timed(f"evictor pass, {evictions} evictions", lambda: evictor.request_room(0))
            )
            after = await db.read(lambda conn: count_status(conn, JobStatus.EVICTED))
            results.append(("  evicted", 0.0, after - before))
            nursery.cancel_scope.cancel()
    finally:
        await db.aclose()
    return results


def measure(jobs: int = 10_000, evictions: int = 100, keep: Path | None = None) -> list[Row]:
    now = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        paths = Paths(keep or Path(scratch) / "data")
        print(f"lifecycle: building {jobs} jobs ...", flush=True)
        began = time.perf_counter()
        counts = build(paths, jobs, now)
        print(
            f"  built in {time.perf_counter() - began:.1f} s: "
            + ", ".join(f"{kind} {count}" for kind, count in counts.items())
        )
        results = trio.run(run, paths, now, evictions)
    rows = []
    for label, seconds, result in results:
        if label.startswith(" "):
            print(f"  {label.strip()}: {result}")
            continue
        summary = getattr(result, "summary", None)
        if callable(summary):
            print(f"  {label}: {summary()}")
        rows.append(
            Row(f"{label}, {jobs} jobs", "ms", seconds * 1000, None, below(TARGET_S * 1000))
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--evictions", type=int, default=100)
    parser.add_argument("--keep", type=Path, help="build the data directory here and keep it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = measure(args.jobs, args.evictions, args.keep)
    print("\n".join(table(rows)))
    return 1 if any(row.passed is False for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
