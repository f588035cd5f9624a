"""One batch of a source file's variations, from room to rows: the processor's unit of work.

    ask for room → make and measure (`refresher.media.variations`) → record in one write

Making one asks for room first (outputs come out about the size of their source:
`NoRoom` when even removing older results cannot make it), makes and measures the
variations (drawing again those a strength guarantees distinct but that still match),
and records every output with its measures in one transaction; when the store has no
room for the rows, it removes the outputs instead (files before rows) and fails with
`StorageFull`. So a batch is recorded or gone, and a restart resumes after the last
recorded one, once `remove_leftovers` has cleared what a run that died left.

A batch is made under its worker's claim on the file (`refresher.jobs.claims`): every
name it writes carries the claim's token, and its rows are recorded only while the claim
is still the worker's (`ClaimLost` otherwise, its files removed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import trio
from sqlalchemy import Connection

from refresher import metrics
from refresher.jobs import claims, estimates, outputstore, records
from refresher.jobs.claims import CLAIM_TTL_S, Claim, ClaimLost
from refresher.media import measure, thumbnails
from refresher.media.ffmpeg import encoder_mark
from refresher.media.measurer import Measurer
from refresher.media.probe import DEFAULT_LIMITS, MediaLimits, Probe
from refresher.media.variations import Batch, Draws, Encoder, Layout, make_variations
from refresher.storage.blobs import BlobStore, LocalBlobs, remove_all
from refresher.storage.full import StorageFull
from refresher.storage.paths import Paths
from refresher.store import Database, write_if_room

LOGGER = logging.getLogger(__name__)


class NoRoom(StorageFull):
    """The evictor found no room for a batch, even after removing older results."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.what = f"there was no room to store {nbytes / 1e6:.0f} MB of variations"
        Exception.__init__(
            self,
            f"There was no room to store {nbytes / 1e6:.0f} MB of variations: the storage "
            "is full even after removing older results.",
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
    limits: MediaLimits = DEFAULT_LIMITS
    # How long a claim lasts past each batch recorded (`refresher.jobs.claims`).
    claim_ttl_s: float = CLAIM_TTL_S
    # Where the outputs are kept once made (None: where they are written).
    blobs: BlobStore | None = None

    @functools.cached_property
    def measurer(self) -> Measurer:
        """Measures the batches' outputs in a process of its own (`aclose` ends it)."""
        return Measurer()

    @property
    def kept(self) -> BlobStore:
        return self.blobs if self.blobs is not None else LocalBlobs(self.paths)

    def remove_leftovers(self, job_id: str, file: records.FileRecord) -> None:
        """Remove every file of `file`'s variations that its rows do not name: what a run
        (or a claim) that died left (blocking)."""
        kept = [output.path for output in file.outputs]
        kept += [output.still_path for output in file.outputs if output.still_path]
        kept += [file.still_path] if file.still_path else []
        keep = {self.paths.absolute(stored) for stored in kept}
        blobs, mine = self.kept, f"{file.id}_"
        folders = [self.paths.job_dir(job_id), self.paths.stills(job_id)]
        leftovers = [
            folder / name
            for folder in folders
            for name in sorted(blobs.entries(folder))
            if name.startswith(mine)
        ]
        remove_all(blobs, [path for path in leftovers if path not in keep])

    async def make(
        self,
        claim: Claim,
        source: Path,
        probed: Probe,
        indices: Sequence[int],
        draws: Draws,
        *,
        on_progress: Callable[[float], None],
    ) -> None:
        """Make, measure and record the variations `indices` of the claimed file (drawn by
        `draws`), reporting 0..1 to `on_progress`.

        Raise `NoRoom`, `StorageFull` or `MediaError` (the file's reason to fail), or
        `ClaimLost`, leaving no output of the batch behind. On cancellation FFmpeg is
        stopped and the batch's outputs are removed.
        """
        job_id, file = claim.job.id, claim.file
        needed = file.file_size * len(indices)
        if self.request_room is not None and not await self.request_room(needed):
            raise NoRoom(needed)
        began = trio.current_time()
        recorded = await self.db.read(lambda conn: outputstore.siblings(conn, file.id))
        recorded_hashes = [measure.Sampled.unpack(s.pdq_hashes).hashes for s in recorded]
        encoder = Encoder(
            self.ffmpeg, self.limits, self.threads, encoder_mark(self.paths.root),
            measurer=self.measurer,
        )  # fmt: skip
        layout = Layout(
            output=partial(self.paths.output, job_id, file.id, claim=claim.token),
            still=partial(self.paths.still, job_id, file.id, claim=claim.token),
            reference=self.paths.reference(job_id, file.id, claim=claim.token),
            source_still=self.paths.source_still(job_id, file.id, claim=claim.token),
        )
        batch = await make_variations(
            encoder, source, probed, indices, draws, layout, earlier=recorded_hashes,
            on_progress=on_progress, what=f"job={job_id} file={file.id}",
        )  # fmt: skip
        await self._record(claim, recorded, recorded_hashes, batch, layout.source_still)
        metrics.VARIATIONS_ENCODED.inc(len(batch.kept))
        per_variation = (trio.current_time() - began) / len(batch.kept)
        for _ in batch.kept:
            metrics.ENCODE_SECONDS.observe(per_variation)
        # Shared by every process: what the queue's estimates rest on.
        await write_if_room(
            self.db, lambda conn: estimates.record_speed(conn, per_variation),
            what=f"job={job_id} encode speed",
        )  # fmt: skip

    async def make_thumbnail(self, job_id: str, source: Path) -> None:
        """Make the job's thumbnail from `source`, keep and record it (best effort: a
        job without one shows a placeholder)."""
        output = self.paths.thumbnail(job_id)
        made = await thumbnails.thumbnail_of(
            self.ffmpeg, source, output, limits=self.limits, env=encoder_mark(self.paths.root)
        )
        if not made:
            return
        await trio.to_thread.run_sync(self.kept.keep, output)
        relative = self.paths.relative(output)
        if not await write_if_room(
            self.db,
            lambda conn: records.set_thumbnail(conn, job_id, relative),
            what=f"job={job_id} thumbnail",
        ):
            await trio.to_thread.run_sync(self.kept.remove, output)

    async def _record(
        self,
        claim: Claim,
        recorded: list[outputstore.Sibling],
        recorded_hashes: list[np.ndarray],
        batch: Batch,
        source_still: Path,
    ) -> None:
        """Record the kept outputs with their final measures, and bring their recorded
        siblings' nearest sibling up to date (shielded: the files are complete, so their
        rows must be written too; or, with no room for the rows or no claim, the files
        must go)."""
        job_id, file = claim.job.id, claim.file
        candidates = [source_still, *(made.still for made in batch.kept.values() if made.still)]
        present = await trio.to_thread.run_sync(lambda: {p for p in candidates if p.exists()})
        new_hashes = {
            index: made.sample.hashes for index, made in batch.kept.items() if made.sample
        }
        rows = []
        for index, made in sorted(batch.kept.items()):
            others = recorded_hashes + [
                hashes for other, hashes in new_hashes.items() if other != index
            ]
            measured = made.measured(others)
            rows.append(
                outputstore.NewOutput(
                    output_id=str(uuid.uuid4()), variation_index=index,
                    path=self.paths.relative(made.output.path), size=made.output.size,
                    crc32=made.output.crc32, effects=made.effects.as_dict(),
                    measured=measured.as_json() if measured else None,
                    pdq_hashes=made.sample.packed() if made.sample else None,
                    attempts=batch.attempts[index],
                    still_path=self.paths.relative(made.still)
                    if made.still in present else None,
                )
            )  # fmt: skip
        updates = {}
        for sibling, mine in zip(recorded, recorded_hashes, strict=True):
            before = measure.Measured.from_json(sibling.measured)
            nearest, matched = measure.siblings(mine, list(new_hashes.values()))
            if nearest is None:
                continue
            if before.nearest_sibling_pdq is not None:
                nearest = min(nearest, before.nearest_sibling_pdq)
            updates[sibling.output_id] = dataclasses.replace(
                before, nearest_sibling_pdq=nearest,
                sibling_matched=before.sibling_matched or matched,
            ).as_json()  # fmt: skip
        still = self.paths.relative(source_still) if source_still in present else None

        moment = self.now()

        def record(conn: Connection) -> None:
            claims.hold(conn, file.id, claim.token, self.claim_ttl_s)
            for row in rows:
                outputstore.record_output(
                    conn, job_id=job_id, file_id=file.id, output=row, now=moment
                )
            outputstore.update_measured(conn, updates)
            if still is not None:
                outputstore.set_file_still(conn, file.id, still)

        made_files = [made.output.path for made in batch.kept.values()]
        made_files += [made.still for made in batch.kept.values() if made.still in present]
        made_files += [source_still] if source_still in present else []
        blobs = self.kept
        with trio.CancelScope(shield=True):
            try:
                # Kept before their rows are written: a row always names whole bytes.
                for path in made_files:
                    await trio.to_thread.run_sync(blobs.keep, path)
                await self.db.write(record)
            except ClaimLost:
                await trio.to_thread.run_sync(remove_all, blobs, made_files)
                raise
            except StorageFull as err:
                await trio.to_thread.run_sync(remove_all, blobs, made_files)
                raise StorageFull(
                    "the variations were made, but there was no room to record them"
                ) from err
            except Exception:
                # The storage failed part-way (a bucket that stopped answering): what was
                # kept goes too, if it can, so nothing stays that no row names.
                with contextlib.suppress(Exception):
                    await trio.to_thread.run_sync(remove_all, blobs, made_files)
                raise
