"""One batch of a source file's variations, from room to rows: the processor's unit of work.

A batch is what one FFmpeg makes from one decode (`refresher.media.encoding`). Making one asks
for room first (outputs come out about the size of their source: `NoRoom` when even
removing older results cannot make it), runs FFmpeg again when a signal from outside
stopped it, measures every output against the source and its siblings
(`refresher.media.measure`), makes again those that a strength guarantees to be distinct but
still match (each drawn anew), and records every output with its measures in one
transaction; when the store has no room for the rows, it removes the outputs instead
(files before rows) and fails with `StorageFull`. So a batch is recorded or gone, and a
restart resumes after the last recorded one, once `remove_leftovers` has cleared what a
run that died left.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trio

from refresher import metrics
from refresher.db import Database
from refresher.jobs import outputstore, records
from refresher.media import effects, encoding, measure
from refresher.media.effects import Effects
from refresher.media.ffmpeg import encoder_mark, remove_files, rerun_if_interrupted
from refresher.media.probe import DEFAULT_LIMITS, MediaLimits, Probe
from refresher.storage.full import StorageFull
from refresher.storage.paths import Paths

LOGGER = logging.getLogger(__name__)

# Tries per variation where a strength retries (`Draws.retries`): the first and three more.
MAX_ATTEMPTS = 4
# Where comparison stills go, inside the job's folder.
STILLS = "stills"


@dataclass(frozen=True)
class Draws:
    """How a file's variations are drawn: at `subtle`, from the job's list (`subtle`,
    indexed by variation - 1); above it, one draw per variation and try."""

    strength: effects.Strength
    seed: int
    position: int
    frame: effects.Frame
    subtle: Sequence[Effects]
    mirror: bool = False

    @property
    def retries(self) -> bool:
        """Whether a variation that measures as matched is drawn again."""
        return self.strength != effects.Strength.SUBTLE

    def effects(self, index: int, attempt: int) -> Effects:
        if not self.retries:
            return self.subtle[index - 1]
        return effects.draw(
            self.strength, self.frame, seed=self.seed, position=self.position, index=index,
            attempt=attempt, mirror=self.mirror,
        )  # fmt: skip


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

    def output_path(self, job_id: str, file_id: str, index: int) -> Path:
        return self.paths.job_dir(job_id) / f"{file_id}_var{index}.mp4"

    def still_path(self, job_id: str, file_id: str, index: int) -> Path:
        """Variation `index`'s comparison still."""
        return self.paths.job_dir(job_id) / STILLS / f"{file_id}_var{index}.jpg"

    def remove_leftovers(self, job_id: str, file_id: str, recorded: set[int]) -> None:
        """Remove the file's outputs but the `recorded` variations: what a run that died
        left (blocking)."""
        folder = self.paths.job_dir(job_id)
        keep = {self.output_path(job_id, file_id, index).name for index in recorded}
        keep |= {f"{file_id}_var{index}.jpg" for index in recorded}
        leftovers = [*folder.glob(f"{file_id}_*"), *(folder / STILLS).glob(f"{file_id}_var*")]
        for path in leftovers:
            if path.name not in keep:
                path.unlink(missing_ok=True)

    async def make(
        self,
        job_id: str,
        file: records.FileRecord,
        source: Path,
        probed: Probe,
        indices: Sequence[int],
        draws: Draws,
        *,
        on_progress: Callable[[float], None],
    ) -> None:
        """Make, measure and record the variations `indices` of `file` (drawn by
        `draws`), reporting 0..1 to `on_progress`.

        Where `draws` retries, a variation whose measures match its source or a sibling
        is drawn again (the next try's seed) and made again, up to MAX_ATTEMPTS tries in
        all; the last is kept either way, with its measures. Raise `NoRoom`,
        `StorageFull` or `MediaError` (the file's reason to fail), leaving no output of
        the batch behind. On cancellation FFmpeg is stopped and the batch's outputs are
        removed.
        """
        needed = file.file_size * len(indices)
        if self.request_room is not None and not await self.request_room(needed):
            raise NoRoom(needed)
        began = trio.current_time()
        job_dir = self.paths.job_dir(job_id)
        plan = measure.sampling(probed.duration_s, probed.width, probed.height)
        reference = encoding.Reference(job_dir / f"{file.id}_reference.mkv", plan)
        source_still = job_dir / STILLS / f"{file.id}_source.jpg"
        recorded = await self.db.read(lambda conn: outputstore.siblings(conn, file.id))
        recorded_hashes = [measure.Sampled.unpack(s.pdq_hashes).hashes for s in recorded]
        kept: dict[int, _Made] = {}
        attempts = dict.fromkeys(indices, 1)
        pending = list(indices)
        try:
            while pending:
                made = await self._encode_and_sample(
                    job_id, file, source, probed, reference, source_still,
                    [(index, draws.effects(index, attempts[index])) for index in pending],
                    on_progress=on_progress if len(kept) == 0 and attempts[pending[0]] == 1
                    else _ignore,
                )  # fmt: skip
                again = []
                for candidate in made:
                    others = recorded_hashes + [m.sample.hashes for m in kept.values() if m.sample]
                    if (
                        draws.retries
                        and candidate.matched(others)
                        and attempts[candidate.index] < MAX_ATTEMPTS
                    ):
                        await trio.to_thread.run_sync(remove_files, [candidate.output.path])
                        attempts[candidate.index] += 1
                        again.append(candidate.index)
                    else:
                        kept[candidate.index] = candidate
                pending = again
        except BaseException:
            stills = [self.still_path(job_id, file.id, index) for index in indices]
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(
                    remove_files, [made.output.path for made in kept.values()] + stills
                )
            raise
        await self._record(job_id, file, recorded, recorded_hashes, kept, attempts, source_still)
        metrics.VARIATIONS_ENCODED.inc(len(kept))
        per_variation = (trio.current_time() - began) / len(kept)
        for _ in kept:
            metrics.ENCODE_SECONDS.observe(per_variation)

    async def _encode_and_sample(
        self,
        job_id: str,
        file: records.FileRecord,
        source: Path,
        probed: Probe,
        reference: encoding.Reference,
        source_still: Path,
        chosen: list[tuple[int, Effects]],
        *,
        on_progress: Callable[[float], None],
    ) -> list[_Made]:
        """One FFmpeg run for `chosen` (index, effects), then their samples (None where
        they could not be read: the variation is kept unmeasured)."""
        variations = [
            encoding.Variation(self.output_path(job_id, file.id, index), chosen_effects)
            for index, chosen_effects in chosen
        ]
        try:
            encoded = await rerun_if_interrupted(
                functools.partial(
                    encoding.encode_variations, self.ffmpeg, source, variations, probed=probed,
                    on_progress=on_progress, threads=self.threads,
                    env=encoder_mark(self.paths.root), reference=reference,
                    limits=self.limits,
                ),
                what=f"job={job_id} file={file.id}",
            )  # fmt: skip
            stills = [self.still_path(job_id, file.id, index) for index, _ in chosen]
            wanted = [
                measure.Wanted(output.path, still)
                for output, still in zip(encoded, stills, strict=True)
            ]
            try:
                source_sampled, sampled = await _sample(
                    reference.path, reference.plan, wanted, source_still
                )
            except measure.MeasureFailed as err:
                LOGGER.warning("job=%s file=%s not measured: %s", job_id, file.id, err)
                return [
                    _Made(index, output, variation.effects, None, None, None)
                    for (index, _), output, variation in zip(
                        chosen, encoded, variations, strict=True
                    )
                ]
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(remove_files, [reference.path])
        return [
            _Made(index, output, variation.effects, source_sampled, sample, still)
            for (index, _), output, variation, sample, still in zip(
                chosen, encoded, variations, sampled, stills, strict=True
            )
        ]

    async def _record(
        self,
        job_id: str,
        file: records.FileRecord,
        recorded: list[outputstore.Sibling],
        recorded_hashes: list[np.ndarray],
        kept: dict[int, _Made],
        attempts: dict[int, int],
        source_still: Path,
    ) -> None:
        """Record the kept outputs with their final measures, and bring their recorded
        siblings' nearest sibling up to date (shielded: the files are complete, so their
        rows must be written too; or, with no room for the rows, the files must go)."""
        candidates = [source_still, *(made.still for made in kept.values() if made.still)]
        present = await trio.to_thread.run_sync(lambda: {p for p in candidates if p.exists()})
        new_hashes = {index: made.sample.hashes for index, made in kept.items() if made.sample}
        rows = []
        for index, made in sorted(kept.items()):
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
                    attempts=attempts[index],
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

        def record(conn: sqlite3.Connection) -> None:
            for row in rows:
                outputstore.record_output(
                    conn, job_id=job_id, file_id=file.id, output=row, now=self.now()
                )
            outputstore.update_measured(conn, updates)
            if still is not None:
                outputstore.set_file_still(conn, file.id, still)

        with trio.CancelScope(shield=True):
            try:
                await self.db.write(record)
            except StorageFull as err:
                await trio.to_thread.run_sync(
                    remove_files, [made.output.path for made in kept.values()]
                )
                raise StorageFull(
                    "the variations were made, but there was no room to record them"
                ) from err


@dataclasses.dataclass(frozen=True)
class _Made:
    """A variation made in this batch, with its samples (None: not measured)."""

    index: int
    output: encoding.EncodedOutput
    effects: Effects
    source: measure.Sampled | None
    sample: measure.Sampled | None
    still: Path | None

    def measured(self, others: Sequence[np.ndarray]) -> measure.Measured | None:
        if self.source is None or self.sample is None:
            return None
        return measure.measure(self.source, self.sample, others)

    def matched(self, others: Sequence[np.ndarray]) -> bool:
        measured = self.measured(others)
        return measured is not None and (measured.source_matched or measured.sibling_matched)


def _ignore(_fraction: float) -> None:
    """Progress of a retry: the batch's bar already stands at its end."""


async def _sample(
    reference: Path, plan: measure.Sampling, wanted: list[measure.Wanted], source_still: Path
) -> tuple[measure.Sampled, list[measure.Sampled]]:
    """`measure.sample_batch` on two threads (each reads the source's samples itself)."""
    halves = [wanted[: (len(wanted) + 1) // 2], wanted[(len(wanted) + 1) // 2 :]]
    results: list[tuple[measure.Sampled, list[measure.Sampled]] | None] = [None, None]

    async def run(number: int, still: Path | None) -> None:
        results[number] = await trio.to_thread.run_sync(
            functools.partial(
                measure.sample_batch, reference, plan, halves[number], source_still=still
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, 0, source_still)
        if halves[1]:
            nursery.start_soon(run, 1, None)
    first, second = results
    assert first is not None
    return first[0], first[1] + (second[1] if second else [])
