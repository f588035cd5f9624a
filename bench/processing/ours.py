"""Our method: a strength's variations of the footage made by the service's own core
(`refresher.media.variations`), in its batches, timed batch by batch."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import trio

from bench.processing.original import Chosen, Result, cpu_s, process_cpu_s, watch_peak
from refresher.media import effects, encoding, measure
from refresher.media.effects import Strength
from refresher.media.ffmpeg import find_ffmpeg
from refresher.media.measurer import Measurer
from refresher.media.probe import Probe
from refresher.media.variations import (
    Draws,
    Encoder,
    Layout,
    Made,
    Timings,
    make_variations,
)

SEED = 20240601
POSITION = 0
STILLS = "stills"
# Strengths whose variations must not match each other.
NO_SIBLING_MATCHES = (Strength.STRONG,)


@dataclass
class StrengthRun:
    """A strength's variations of the footage and where their time went."""

    strength: Strength
    result: Result
    timings: Timings = field(default_factory=Timings)
    kept: dict[int, Made] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)

    @property
    def unmeasured(self) -> int:
        return sum(1 for made in self.kept.values() if made.sample is None)

    def hashes(self) -> dict[int, np.ndarray]:
        return {index: made.sample.hashes for index, made in self.kept.items() if made.sample}

    def final(self) -> dict[int, measure.Measured | None]:
        """Each kept variation measured against its source and all the others (as the
        service records them once the file is done)."""
        hashes = self.hashes()
        return {
            index: made.measured([h for other, h in hashes.items() if other != index])
            for index, made in sorted(self.kept.items())
        }

    def matched_pairs(self) -> list[tuple[int, int]]:
        """The pairs of variations matched to each other, either way round."""
        sampled = sorted(self.hashes().items())
        return [
            (first, second)
            for number, (first, hashes) in enumerate(sampled)
            for second, others in sampled[number + 1 :]
            if measure.siblings(hashes, [others])[1]
        ]


async def make_strength(
    source: Path,
    probed: Probe,
    out_dir: Path,
    strength: Strength,
    count: int,
    *,
    before_batch: Callable[[Chosen], Awaitable[None]] | None = None,
) -> StrengthRun:
    """Make `count` variations at `strength` in the service's batches, timed. At
    `subtle`, `before_batch` gets each batch's first draws before our run of it."""
    run = StrengthRun(strength, Result("ours"))
    name = strength.value
    draws = Draws(
        strength=strength,
        seed=SEED,
        position=POSITION,
        frame=effects.Frame(probed.width, probed.height, probed.fps, probed.has_audio),
        subtle=effects.generate(SEED, count),
    )
    layout = Layout(
        output=lambda index: out_dir / f"{name}_var{index}.mp4",
        still=lambda index: out_dir / STILLS / f"{name}_var{index}.jpg",
        reference=out_dir / f"{name}_reference.mkv",
        source_still=out_dir / STILLS / f"{name}_source.jpg",
    )
    measurer = Measurer()
    encoder = Encoder(find_ffmpeg(None), measurer=measurer)
    try:
        await _make_batches(run, source, probed, count, draws, layout, encoder, before_batch)
    finally:
        await measurer.aclose()
    run.result.outputs = [made.output.path for _, made in sorted(run.kept.items())]
    return run


async def _make_batches(
    run: StrengthRun,
    source: Path,
    probed: Probe,
    count: int,
    draws: Draws,
    layout: Layout,
    encoder: Encoder,
    before_batch: Callable[[Chosen], Awaitable[None]] | None,
) -> None:
    name = run.strength.value
    per_encode = encoding.variations_per_encode(probed.width, probed.height)
    batches = encoding.split_batches(range(1, count + 1), per_encode)
    for number, indices in enumerate(batches, start=1):
        line = f"  batch {number}: {len(indices)} variations"
        if before_batch is not None:
            started = time.monotonic()
            await before_batch([(index, draws.effects(index, 1)) for index in indices])
            line += f", the original's way {time.monotonic() - started:.2f} s"
        encode_s, measure_s = run.timings.encode_s, run.timings.measure_s
        cpu_before, started = cpu_s(), time.monotonic()
        measuring_before = process_cpu_s(encoder.measurer.pid)
        async with trio.open_nursery() as watchers:
            batch = await make_variations(
                encoder, source, probed, indices, draws, layout,
                earlier=list(run.hashes().values()), timings=run.timings,
                on_started=lambda pid: watchers.start_soon(partial(watch_peak, pid, run.result)),
                what=f"{name} batch {number}",
            )  # fmt: skip
        run.result.wall_s += time.monotonic() - started
        # The measuring process is not reaped between batches: its CPU is read from /proc.
        measuring_cpu_s = process_cpu_s(encoder.measurer.pid) - measuring_before
        run.result.cpu_s += cpu_s() - cpu_before + measuring_cpu_s
        run.kept.update(batch.kept)
        run.attempts.update(batch.attempts)
        print(
            f"{line}, ours {sum(batch.attempts.values())} draws: "
            f"FFmpeg {run.timings.encode_s - encode_s:.2f} s, "
            f"measuring {run.timings.measure_s - measure_s:.2f} s",
            flush=True,
        )
