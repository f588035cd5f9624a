"""One batch of a source file's variations, from room to rows: the processor's unit of work.

A batch is what one FFmpeg makes from one decode (`refresher.encoding`). Making one asks
for room first (outputs come out about the size of their source: `NoRoom` when even
removing older results cannot make it), runs FFmpeg again when a signal from outside
stopped it, and records every output in one transaction; when the store has no room for
the rows, it removes the outputs instead (files before rows) and fails with
`StorageFull`. So a batch is recorded or gone, and a restart resumes after the last
recorded one, once `remove_leftovers` has cleared what a run that died left.
"""

from __future__ import annotations

import functools
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from refresher import encoding, jobstore
from refresher.db import Database
from refresher.effects import Effects
from refresher.ffmpeg import MediaError, encoder_mark, remove_files, rerun_if_interrupted
from refresher.full_disk import StorageFull, is_storage_full
from refresher.probe import Probe
from refresher.storage import Paths


class NoRoom(MediaError):
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        super().__init__(
            f"There was no room to store {nbytes / 1e6:.0f} MB of variations: the storage "
            "is full even after removing older results."
        )


@dataclass(frozen=True)
class BatchMaker:
    """Makes batches into `paths` and `db`; `request_room(nbytes)` says whether there is room
    for that much more (None: never ask)."""

    db: Database
    paths: Paths
    ffmpeg: str
    now: Callable[[], float]
    threads: int | None = None
    request_room: Callable[[int], Awaitable[bool]] | None = None

    def output_path(self, job_id: str, file_id: str, index: int) -> Path:
        return self.paths.job_dir(job_id) / f"{file_id}_var{index}.mp4"

    def remove_leftovers(self, job_id: str, file_id: str, recorded: set[int]) -> None:
        """Remove the file's outputs but the `recorded` variations: what a run that died
        left (blocking)."""
        keep = {self.output_path(job_id, file_id, index).name for index in recorded}
        for path in self.paths.job_dir(job_id).glob(f"{file_id}_var*"):
            if path.name not in keep:
                path.unlink(missing_ok=True)

    async def make(
        self,
        job_id: str,
        file: jobstore.FileRecord,
        source: Path,
        probed: Probe,
        indices: Sequence[int],
        file_effects: Sequence[Effects],
        *,
        on_progress: Callable[[float], None],
    ) -> None:
        """Make and record the variations `indices` of `file` (`file_effects[index - 1]`
        each), reporting 0..1 to `on_progress`.

        Raise `NoRoom`, `StorageFull` or `MediaError` (the file's reason to fail), leaving
        no output of the batch behind. On cancellation FFmpeg is stopped and its partial
        outputs removed; outputs already finished are still recorded (shielded).
        """
        needed = file.file_size * len(indices)
        if self.request_room is not None and not await self.request_room(needed):
            raise NoRoom(needed)
        variations = [
            encoding.Variation(self.output_path(job_id, file.id, index), file_effects[index - 1])
            for index in indices
        ]
        encoded = await rerun_if_interrupted(
            functools.partial(
                encoding.encode_variations, self.ffmpeg, source, variations, probed=probed,
                on_progress=on_progress, threads=self.threads, env=encoder_mark(self.paths.root),
            ),
            what=f"job={job_id} file={file.id}",
        )  # fmt: skip

        def record(conn: sqlite3.Connection) -> None:
            for index, variation, output in zip(indices, variations, encoded, strict=True):
                jobstore.record_output(
                    conn, output_id=str(uuid.uuid4()), job_id=job_id, file_id=file.id,
                    variation_index=index, path=self.paths.relative(output.path),
                    size=output.size, crc32=output.crc32,
                    effects=variation.effects.as_dict(), now=self.now(),
                )  # fmt: skip

        with trio.CancelScope(shield=True):
            # Shielded: the files are complete, so their rows must be written too; or, when
            # the store has no room for the rows, the files must go.
            try:
                await self.db.write(record)
            except sqlite3.Error as err:
                if not is_storage_full(err):
                    raise
                await trio.to_thread.run_sync(remove_files, [output.path for output in encoded])
                raise StorageFull(
                    "the variations were made, but there was no room to record them"
                ) from err
