"""Finished jobs made directly in the store, for tests about what comes after processing."""

from __future__ import annotations

import random
import uuid
import zlib

from refresher import jobstore
from refresher.db import Database
from refresher.storage import Paths

NOW = 1_800_000_000.0


async def make_finished_job(
    db: Database,
    paths: Paths,
    *,
    sources: list[str] | None = None,
    variations: int = 2,
    size: int = 4096,
    now: float = NOW,
    ttl_s: float = 24 * 3600,
    status: str = "completed",
    seed: int = 1,
) -> str:
    """Record a finished job whose outputs are random bytes on disk; return its id."""
    sources = sources or ["ad.mp4"]
    job_id = str(uuid.uuid4())
    rng = random.Random(seed)
    files = [
        jobstore.NewFile(str(uuid.uuid4()), name, f"uploads/{job_id}/{n}.upload", 10, 1.0)
        for n, name in enumerate(sources)
    ]
    job_dir = paths.job_dir(job_id)
    job_dir.mkdir(parents=True)
    outputs = []
    for file in files:
        for index in range(1, variations + 1):
            content = rng.randbytes(size)
            path = job_dir / f"{file.id}_var{index}.mp4"
            path.write_bytes(content)
            outputs.append((file.id, index, path, content))

    def record(conn):  # type: ignore[no-untyped-def]
        jobstore.insert_job(
            conn, job_id=job_id, files=files, variations_per_video=variations, seed=seed,
            now=now, ttl_s=ttl_s,
        )  # fmt: skip
        for file_id, index, path, content in outputs:
            jobstore.record_output(
                conn, output_id=str(uuid.uuid4()), job_id=job_id, file_id=file_id,
                variation_index=index, path=paths.relative(path), size=len(content),
                crc32=zlib.crc32(content), effects={"rotation": index}, now=now,
            )  # fmt: skip
        for file in files:
            jobstore.set_file_state(conn, file.id, status="completed", progress=100.0, now=now)
        jobstore.finish_job(conn, job_id, status=status, error=None, now=now, ttl_s=ttl_s)
        jobstore.clear_uploads(conn, job_id)

    await db.write(record)
    return job_id


def output_bytes(paths: Paths, job_id: str) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(paths.job_dir(job_id).glob("*.mp4"))}
