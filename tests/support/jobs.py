"""Jobs made directly in the store, for tests of what happens around processing."""

from __future__ import annotations

import random
import re
import shutil
import uuid
import zlib
from pathlib import Path

import trio
from sqlalchemy import Connection

from refresher.config import Config
from refresher.jobs import claims, outputstore, records, transitions
from refresher.jobs.status import JobStatus
from refresher.storage.blobs import BlobStore, LocalBlobs
from refresher.storage.paths import Paths
from refresher.store import Database
from tests.support.clock import DAY_S, wait_for
from tests.support.store import sql
from web.state import AppState

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
    status: JobStatus = JobStatus.COMPLETED,
    seed: int = 1,
    blobs: BlobStore | None = None,
) -> str:
    """Record a finished job whose outputs are random bytes kept in `blobs` (default: on
    disk); return its id."""
    sources = sources or ["ad.mp4"]
    job_id = str(uuid.uuid4())
    rng = random.Random(seed)
    files = [
        transitions.NewFile(str(uuid.uuid4()), name, f"uploads/{job_id}/{n}.upload", 10, 1.0)
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
            if blobs is not None:
                await trio.to_thread.run_sync(blobs.keep, path)
            outputs.append((file.id, index, path, content))

    def record(conn):  # type: ignore[no-untyped-def]
        transitions.insert_job(
            conn, job_id=job_id, files=files, variations_per_video=variations, seed=seed,
            now=now, ttl_s=ttl_s,
        )  # fmt: skip
        for file_id, index, path, content in outputs:
            outputstore.record_output(
                conn, job_id=job_id, file_id=file_id, now=now,
                output=outputstore.NewOutput(
                    output_id=str(uuid.uuid4()), variation_index=index,
                    path=paths.relative(path), size=len(content), crc32=zlib.crc32(content),
                    effects={"rotation": index},
                ),
            )  # fmt: skip
        for file in files:
            records.set_file_state(
                conn, file.id, status=JobStatus.COMPLETED, progress=100.0, now=now
            )
        transitions.finish_job(conn, job_id, status=status, error=None, now=now, ttl_s=ttl_s)
        records.clear_uploads(conn, job_id)

    await db.write(record)
    return job_id


async def make_unfinished_job(
    db: Database,
    paths: Paths,
    *,
    processing: bool = False,
    upload_bytes: int = 10,
    output_bytes: int = 0,
    now: float = NOW,
    ttl_s: float = DAY_S,
) -> str:
    """A queued job whose upload is on disk; return its id.

    With `processing`, it is the job the processor claimed, and with `output_bytes`, one
    of its two variations is done (an output of that many bytes on disk).
    """
    job_id = str(uuid.uuid4())
    upload = paths.upload_dir(job_id) / "0.upload"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"u" * upload_bytes)
    new_file = transitions.NewFile(
        str(uuid.uuid4()), "ad.mp4", paths.relative(upload), upload_bytes, 1.0
    )
    output = paths.job_dir(job_id) / f"{new_file.id}_var1.mp4"
    if processing and output_bytes:
        output.parent.mkdir(parents=True)
        output.write_bytes(b"o" * output_bytes)

    def record(conn: Connection) -> None:
        transitions.insert_job(
            conn, job_id=job_id, files=[new_file], variations_per_video=2, seed=1, now=now,
            ttl_s=ttl_s,
        )  # fmt: skip
        if not processing:
            return
        claimed = claims.claim_next(conn, worker="test", token="test", ttl_s=DAY_S, now=now)
        assert claimed is not None
        assert claimed.job.id == job_id
        if output_bytes:
            outputstore.record_output(
                conn, job_id=job_id, file_id=new_file.id, now=now,
                output=outputstore.NewOutput(
                    output_id=str(uuid.uuid4()), variation_index=1,
                    path=paths.relative(output), size=output_bytes, crc32=0, effects={},
                ),
            )  # fmt: skip

    await db.write(record)
    return job_id


def output_bytes(paths: Paths, job_id: str, blobs: BlobStore | None = None) -> dict[str, bytes]:
    """The bytes of a job's kept outputs, by file name (blocking)."""
    kept = blobs if blobs is not None else LocalBlobs(paths)
    folder = paths.job_dir(job_id)
    return {
        name: kept.load(folder / name)
        for name in sorted(kept.entries(folder))
        if name.endswith(".mp4")
    }


def leftovers(config: Config) -> list[str]:
    """Everything under uploads/, jobs/ and resumable/ in the data dir, as relative paths."""
    root = config.data_dir
    return sorted(
        str(path.relative_to(root))
        for folder in ("uploads", "jobs", "resumable")
        for path in (root / folder).rglob("*")
    )


async def queue_files_job(
    db: Database,
    paths: Paths,
    sources: list[Path],
    variations: int,
    *,
    now: float = NOW,
    ttl_s: float = DAY_S,
    seed: int = 5,
) -> str:
    """Queue a job whose uploads are copies of `sources`, as the upload route leaves them
    (without its checks, and without ringing the processor); return its id."""
    job_id = str(uuid.uuid4())
    upload_dir = paths.upload_dir(job_id)
    upload_dir.mkdir(parents=True)
    files = []
    for number, source in enumerate(sources):
        upload = upload_dir / f"{number}.upload"
        shutil.copyfile(source, upload)
        files.append(
            transitions.NewFile(
                str(uuid.uuid4()), source.name, paths.relative(upload), upload.stat().st_size, 1.0
            )
        )
    await db.write(
        lambda conn: transitions.insert_job(
            conn, job_id=job_id, files=files, variations_per_video=variations, seed=seed,
            now=now, ttl_s=ttl_s,
        )
    )  # fmt: skip
    return job_id


async def lease_count(state: AppState) -> int:
    """How many download leases the service's store holds now."""
    count: int = await state.db.read(
        lambda conn: sql(conn, "SELECT count(*) FROM leases").scalar_one()
    )
    return count


async def wait_for_leases(state: AppState, count: int, *, polls: int = 2000) -> None:
    """Wait until the store holds `count` leases (released from threads: no event)."""

    async def reached() -> bool:
        return await lease_count(state) == count

    await wait_for(reached, polls=polls)


def made_variations(folder: Path, file_id: str, extension: str = "mp4") -> list[int]:
    """The variations of the source file `file_id` in `folder` (`{file}_var{n}_{claim}.{ext}`),
    sorted; any other name of the file's there fails the test."""
    found = []
    for path in folder.glob(f"{file_id}_var*.{extension}"):
        match = re.fullmatch(rf"{re.escape(file_id)}_var(\d+)_[0-9a-f]+\.{extension}", path.name)
        assert match, path.name
        found.append(int(match[1]))
    return sorted(found)
