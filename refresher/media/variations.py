"""Making a source's variations, measured, without a database: the core the processor's
batches (`refresher.jobs.batches`) and the processing benchmark both run.

    draw effects → one FFmpeg (decoding once, writing the source's samples beside)
                 → sample every output in the measuring process (PDQ, SSIM, stills)
                 → at standard and strong, draw again those still matched, up to
                   MAX_ATTEMPTS tries; keep the last either way

An FFmpeg stopped by a signal from outside runs again (`rerun_if_interrupted`); measuring
never fails a variation that was made (it is kept unmeasured). What is not kept is
removed, and on any failure or cancellation nothing of the batch is left.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trio

from refresher.media import effects, encoding, measure
from refresher.media.effects import Effects
from refresher.media.ffmpeg import remove_files, rerun_if_interrupted
from refresher.media.measurer import Measurer
from refresher.media.probe import DEFAULT_LIMITS, MediaLimits, Probe

LOGGER = logging.getLogger(__name__)

# Tries per variation where a strength retries (`Draws.retries`): the first and three more.
MAX_ATTEMPTS = 4


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


@dataclass(frozen=True)
class Encoder:
    """How FFmpeg is run: which one, under which limits, threads and environment; and
    what measures its outputs."""

    ffmpeg: str
    limits: MediaLimits = DEFAULT_LIMITS
    threads: int | None = None
    # Added to FFmpeg's environment (the mark that finds encoders a crash left).
    env: Mapping[str, str] | None = None
    measurer: Measurer = field(kw_only=True)


@dataclass(frozen=True)
class Layout:
    """Where a batch writes: each variation's output and still, the source's samples
    and still."""

    output: Callable[[int], Path]
    still: Callable[[int], Path]
    reference: Path
    source_still: Path


@dataclass
class Timings:
    """Where a batch's time went: FFmpeg, and measuring after it (seconds)."""

    encode_s: float = 0.0
    measure_s: float = 0.0


@dataclass(frozen=True)
class Made:
    """A variation made, with its samples and the source's (None: not measured)."""

    index: int
    output: encoding.EncodedOutput
    effects: Effects
    source: measure.Sampled | None
    sample: measure.Sampled | None
    still: Path | None

    def measured(self, others: Sequence[np.ndarray]) -> measure.Measured | None:
        """Its measures against its source and `others` (siblings' hashes)."""
        if self.source is None or self.sample is None:
            return None
        return measure.measure(self.source, self.sample, others)

    def matched(self, others: Sequence[np.ndarray]) -> bool:
        measured = self.measured(others)
        return measured is not None and (measured.source_matched or measured.sibling_matched)


@dataclass
class Batch:
    """The variations kept, by index, and how many draws each took."""

    kept: dict[int, Made] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)

    def hashes(self) -> list[np.ndarray]:
        return [made.sample.hashes for made in self.kept.values() if made.sample]


def _ignore(_fraction: float) -> None:
    """Progress of a retry: the batch's bar already stands at its end."""


async def make_variations(
    encoder: Encoder,
    source: Path,
    probed: Probe,
    indices: Sequence[int],
    draws: Draws,
    layout: Layout,
    *,
    earlier: Sequence[np.ndarray] = (),
    on_progress: Callable[[float], None] = _ignore,
    on_started: Callable[[int], None] | None = None,
    timings: Timings | None = None,
    what: str = "variations",
) -> Batch:
    """Make, measure and keep the variations `indices` of `source` (drawn by `draws`),
    reporting 0..1 of the first run to `on_progress`; `earlier` holds the hashes of
    siblings made before, which a new one must not match either.

    Where `draws` retries, a variation whose measures match its source or a sibling is
    drawn again (the next try's seed) and made again, up to MAX_ATTEMPTS tries in all;
    the last is kept either way. Raise what encoding raises (`StorageFull`,
    `MediaError`), leaving nothing of the batch; on cancellation FFmpeg is stopped and
    the batch's outputs removed. `what` names the batch in the log.
    """
    batch = Batch(attempts=dict.fromkeys(indices, 1))
    pending = list(indices)
    try:
        while pending:
            chosen = [(index, draws.effects(index, batch.attempts[index])) for index in pending]
            first = not batch.kept and batch.attempts[pending[0]] == 1
            made = await encode_and_sample(
                encoder, source, probed, chosen, layout,
                on_progress=on_progress if first else _ignore, on_started=on_started,
                timings=timings, what=what,
            )  # fmt: skip
            again = []
            for candidate in made:
                others = [*earlier, *batch.hashes()]
                if (
                    draws.retries
                    and candidate.matched(others)
                    and batch.attempts[candidate.index] < MAX_ATTEMPTS
                ):
                    await trio.to_thread.run_sync(remove_files, [candidate.output.path])
                    batch.attempts[candidate.index] += 1
                    again.append(candidate.index)
                else:
                    batch.kept[candidate.index] = candidate
            pending = again
    except BaseException:
        stills = [layout.still(index) for index in indices]
        outputs = [made.output.path for made in batch.kept.values()]
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(remove_files, outputs + stills)
        raise
    return batch


async def encode_and_sample(
    encoder: Encoder,
    source: Path,
    probed: Probe,
    chosen: Sequence[tuple[int, Effects]],
    layout: Layout,
    *,
    on_progress: Callable[[float], None] = _ignore,
    on_started: Callable[[int], None] | None = None,
    timings: Timings | None = None,
    what: str = "variations",
) -> list[Made]:
    """One FFmpeg run for `chosen` (index, effects), with the source's samples beside, then
    every output sampled (a variation that cannot be read is kept unmeasured)."""
    plan = measure.sampling(probed.duration_s, probed.width, probed.height)
    reference = encoding.Reference(layout.reference, plan)
    variations = [
        encoding.Variation(layout.output(index), chosen_effects) for index, chosen_effects in chosen
    ]
    began = trio.current_time()
    try:
        encoded = await rerun_if_interrupted(
            functools.partial(
                encoding.encode_variations, encoder.ffmpeg, source, variations, probed=probed,
                on_progress=on_progress, threads=encoder.threads, on_started=on_started,
                env=encoder.env, reference=reference, limits=encoder.limits,
            ),
            what=what,
        )  # fmt: skip
        sampled_at = trio.current_time()
        stills = [layout.still(index) for index, _ in chosen]
        wanted = [
            measure.Wanted(output.path, still)
            for output, still in zip(encoded, stills, strict=True)
        ]
        try:
            source_sampled, sampled = await encoder.measurer.sample(
                reference.path, plan, wanted, layout.source_still
            )
        except measure.MeasureFailed as err:
            LOGGER.warning("%s not measured: %s", what, err)
            return [
                Made(index, output, variation.effects, None, None, None)
                for (index, _), output, variation in zip(chosen, encoded, variations, strict=True)
            ]
        finally:
            if timings is not None:
                timings.encode_s += sampled_at - began
                timings.measure_s += trio.current_time() - sampled_at
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(remove_files, [reference.path])
    return [
        Made(index, output, variation.effects, source_sampled, sample, still)
        for (index, _), output, variation, sample, still in zip(
            chosen, encoded, variations, sampled, stills, strict=True
        )
    ]
