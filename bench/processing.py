"""Processing benchmark: variations per minute and distinctness at each strength, and the
original's method against ours at `subtle`.

    python -m bench.processing [--variations 10] [--seconds 12]
                               [--strengths subtle,standard,strong] [--keep DIR]

The source is natural footage (`bench.footage`: a 1280x720 pan across photographs, with
sound), not a test pattern: perceptual hashes and x264 both behave differently on
synthetic pictures. For each strength asked for, `--variations` variations of it are made
the way the service makes a file's (`refresher.jobs.batches.BatchMaker.make`, without the
database): in FFmpeg runs of `variations_per_encode` variations, each writing the
source's 1-fps samples beside its outputs, then every output sampled and measured on two
threads (PDQ to the source and to its siblings, SSIM to the source's samples, the
comparison stills); at `standard` and `strong` a variation still matched to its source or
to a sibling is drawn again, up to `MAX_ATTEMPTS` tries.

At `subtle` each of our FFmpeg runs takes turns with the original's method making the same
variations (one FFmpeg per variation, one after another, `rotate`+`eq`, its exact x264
arguments), so that load from elsewhere falls on both; every output of both is then
compared with the source by FFmpeg's `ssim` filter over the whole video ("All").

Prints, per strength: variations per minute (wall, measuring included), the share of
the time per variation spent measuring (from FFmpeg's end to the measures: decoding the
1-fps samples, PDQ, SSIM, stills; writing the source's samples and the keyframes they
need happens inside FFmpeg and counts as its time), the draws used, and the minimum, median and
maximum of each measure (pdqMedian, pdqMatchedShare, ssim, nearestSiblingPdq), how many
variations are not matched to the source and how many pairs are matched to each other.
Then the rules, each PASS or FAIL: at `subtle`, ours >= 3x the original's variations per
minute and our lowest SSIM no lower than the original's lowest; at every strength,
measuring <= 15 % of the time per variation; at `strong`, at least 9 in 10 not matched
to the source and no two matched to each other; at `standard`, at least 7 in 10 not
matched. Exits 1 if a rule fails.
"""

from __future__ import annotations

import argparse
import functools
import math
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from bench.footage import make_footage
from bench.verdict import Row, at_least, at_most, exactly
from refresher.jobs import batches
from refresher.media import effects, encoding, measure
from refresher.media.effects import Effects, Strength
from refresher.media.ffmpeg import find_ffmpeg, remove_files
from refresher.media.probe import Probe, probe

SEED = 20240601
POSITION = 0
TARGET_RATIO = 3.0
# Measuring's share of the time per variation, at most.
MAX_MEASURE_SHARE = 0.15
# Not matched to their source, at least, per strength (of the variations made).
MIN_UNMATCHED_SHARE = {Strength.STANDARD: 0.7, Strength.STRONG: 0.9}
# Strengths whose variations must not match each other.
NO_SIBLING_MATCHES = (Strength.STRONG,)
# /proc polling interval for peak memory; VmHWM is the kernel's own high-water mark, so
# sampling only has to happen before the process exits.
PEAK_POLL_S = 0.05
SSIM_CONCURRENCY = 2
STILLS = "stills"

Chosen = list[tuple[int, Effects]]


@dataclass
class Result:
    """One method's run: time, CPU (FFmpeg's and, for ours, the measuring threads'),
    outputs and their whole-video SSIM, and the peak RSS of any one FFmpeg."""

    name: str
    wall_s: float = 0.0
    cpu_s: float = 0.0
    outputs: list[Path] = field(default_factory=list)
    peak_rss_kib: int = 0
    ssim: list[float] = field(default_factory=list)


@dataclass
class Made:
    """A variation made and sampled (`sample` None: it could not be measured)."""

    index: int
    path: Path
    effects: Effects
    source: measure.Sampled | None
    sample: measure.Sampled | None

    def measured(self, others: Sequence[measure.Sampled]) -> measure.Measured | None:
        if self.source is None or self.sample is None:
            return None
        return measure.measure(self.source, self.sample, [other.hashes for other in others])


@dataclass
class StrengthRun:
    """A strength's variations of the footage and where their time went."""

    strength: Strength
    result: Result
    encode_s: float = 0.0
    measure_s: float = 0.0
    kept: dict[int, Made] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    unmeasured: int = 0

    def final(self) -> dict[int, measure.Measured | None]:
        """Each kept variation measured against its source and all the others (as the
        service records them once the file is done)."""
        sampled = {index: made.sample for index, made in self.kept.items() if made.sample}
        return {
            index: made.measured([s for other, s in sampled.items() if other != index])
            for index, made in sorted(self.kept.items())
        }

    def matched_pairs(self) -> list[tuple[int, int]]:
        """The pairs of variations matched to each other, either way round."""
        sampled = sorted(
            (index, made.sample) for index, made in self.kept.items() if made.sample is not None
        )
        return [
            (first, second)
            for number, (first, hashes) in enumerate(sampled)
            for second, others in sampled[number + 1 :]
            if measure.siblings(hashes.hashes, [others.hashes])[1]
        ]


def original_command(ffmpeg: str, source: Path, output: Path, chosen: Effects) -> list[str]:
    """The original service's command for one variation, verbatim but for the values."""
    video_filter = (
        f"rotate={chosen.rotation_rad}:fillcolor=black@0,"
        f"eq=brightness={chosen.brightness}:contrast={chosen.contrast}"
        f":saturation={chosen.saturation}"
    )
    return [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(source),
        "-vf", video_filter, "-r", "29.97", "-b:v", "2000k", "-bufsize", "4000k",
        "-maxrate", "2500k", "-preset", "ultrafast", "-crf", "23", "-threads", "4",
        "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-map_metadata", "-1", str(output),
    ]  # fmt: skip


def _cpu_s() -> float:
    """CPU seconds of this process (the measuring threads) and its reaped children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


async def _watch_peak(pid: int, result: Result) -> None:
    status = trio.Path(f"/proc/{pid}/status")
    while True:
        try:
            text = await status.read_text()
        except OSError:
            return
        match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
        if match is None:  # a zombie: exited, not yet reaped
            return
        result.peak_rss_kib = max(result.peak_rss_kib, int(match.group(1)))
        await trio.sleep(PEAK_POLL_S)


async def run_original(
    ffmpeg: str, source: Path, out_dir: Path, chosen: Chosen, result: Result
) -> None:
    """Make `chosen` (variation index, effects) the original's way, one after another,
    adding to `result`."""
    cpu_before, started = _cpu_s(), time.monotonic()
    async with trio.open_nursery() as nursery:
        for index, variation in chosen:
            output = out_dir / f"original_var{index}.mp4"
            process = await trio.lowlevel.open_process(
                original_command(ffmpeg, source, output, variation)
            )
            nursery.start_soon(_watch_peak, process.pid, result)
            if await process.wait() != 0:
                raise SystemExit(f"the original's command failed for variation {index}")
            result.outputs.append(output)
    result.wall_s += time.monotonic() - started
    result.cpu_s += _cpu_s() - cpu_before


async def encode_and_sample(
    ffmpeg: str,
    source: Path,
    probed: Probe,
    out_dir: Path,
    run: StrengthRun,
    chosen: Chosen,
) -> list[Made]:
    """One FFmpeg run for `chosen` with the source's samples beside, then every output
    sampled on two threads, as `BatchMaker` does; the two timed apart."""
    name = run.strength.value
    plan = measure.sampling(probed.duration_s, probed.width, probed.height)
    reference = encoding.Reference(out_dir / f"{name}_reference.mkv", plan)
    variations = [
        encoding.Variation(out_dir / f"{name}_var{index}.mp4", chosen_effects)
        for index, chosen_effects in chosen
    ]
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        encoded = await encoding.encode_variations(
            ffmpeg,
            source,
            variations,
            probed=probed,
            on_progress=lambda fraction: None,
            on_started=lambda pid: nursery.start_soon(_watch_peak, pid, run.result),
            reference=reference,
        )
    sampled_at = time.monotonic()
    run.encode_s += sampled_at - started
    wanted = [
        measure.Wanted(output.path, still=out_dir / STILLS / f"{name}_var{index}.jpg")
        for output, (index, _) in zip(encoded, chosen, strict=True)
    ]
    try:
        # The service's own split of the sampling over two threads.
        source_sampled, sampled = await batches._sample(
            reference.path, plan, wanted, out_dir / STILLS / f"{name}_source.jpg"
        )
        samples: list[tuple[measure.Sampled | None, measure.Sampled | None]] = [
            (source_sampled, sample) for sample in sampled
        ]
    except measure.MeasureFailed as err:
        print(f"  not measured: {err}", flush=True)
        samples = [(None, None)] * len(chosen)
    finally:
        await trio.to_thread.run_sync(remove_files, [reference.path])
    run.measure_s += time.monotonic() - sampled_at
    return [
        Made(index, output.path, variation.effects, source_sample, sample)
        for (index, _), output, variation, (source_sample, sample) in zip(
            chosen, encoded, variations, samples, strict=True
        )
    ]


async def make_batch(
    ffmpeg: str,
    source: Path,
    probed: Probe,
    out_dir: Path,
    run: StrengthRun,
    indices: Sequence[int],
    draws: batches.Draws,
) -> None:
    """Make the variations `indices` with `BatchMaker.make`'s rule: where `draws` retries,
    one matched to its source, to an earlier batch's or to one kept so far is drawn again
    (the next try's seed), up to MAX_ATTEMPTS tries; the last is kept either way."""
    recorded = [made.sample for made in run.kept.values() if made.sample is not None]
    kept: dict[int, Made] = {}
    for index in indices:
        run.attempts[index] = 1
    pending = list(indices)
    while pending:
        chosen = [(index, draws.effects(index, run.attempts[index])) for index in pending]
        made = await encode_and_sample(ffmpeg, source, probed, out_dir, run, chosen)
        again = []
        for candidate in made:
            others = recorded + [k.sample for k in kept.values() if k.sample is not None]
            measured = candidate.measured(others)
            matched = measured is not None and (measured.source_matched or measured.sibling_matched)
            if draws.retries and matched and run.attempts[candidate.index] < batches.MAX_ATTEMPTS:
                await trio.to_thread.run_sync(remove_files, [candidate.path])
                run.attempts[candidate.index] += 1
                again.append(candidate.index)
            else:
                kept[candidate.index] = candidate
        pending = again
    run.kept.update(kept)
    run.unmeasured += sum(1 for made in kept.values() if made.sample is None)


async def make_strength(
    ffmpeg: str,
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
    draws = batches.Draws(
        strength=strength,
        seed=SEED,
        position=POSITION,
        frame=effects.Frame(probed.width, probed.height, probed.fps, probed.has_audio),
        subtle=effects.generate(SEED, count),
    )
    per_encode = encoding.variations_per_encode(probed.width, probed.height)
    for number, indices in enumerate(
        encoding.split_batches(range(1, count + 1), per_encode), start=1
    ):
        line = f"  batch {number}: {len(indices)} variations"
        if before_batch is not None:
            started = time.monotonic()
            await before_batch([(index, draws.effects(index, 1)) for index in indices])
            line += f", the original's way {time.monotonic() - started:.2f} s"
        encode_s, measure_s = run.encode_s, run.measure_s
        cpu_before, started = _cpu_s(), time.monotonic()
        await make_batch(ffmpeg, source, probed, out_dir, run, indices, draws)
        run.result.wall_s += time.monotonic() - started
        run.result.cpu_s += _cpu_s() - cpu_before
        draws_made = sum(run.attempts[index] for index in indices)
        print(
            f"{line}, ours {draws_made} draws: FFmpeg {run.encode_s - encode_s:.2f} s, "
            f"measuring {run.measure_s - measure_s:.2f} s",
            flush=True,
        )
    run.result.outputs = [made.path for _, made in sorted(run.kept.items())]
    return run


async def ssim(ffmpeg: str, output: Path, source: Path, width: int, height: int) -> float:
    graph = f"[0:v]scale={width}:{height}[variation];[variation][1:v]ssim"
    completed = await trio.run_process(
        [
            ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-threads", "1",
            "-i", str(output), "-threads", "1", "-i", str(source),
            "-lavfi", graph, "-f", "null", "-",
        ],
        capture_stderr=True,
        capture_stdout=True,
    )  # fmt: skip
    match = re.search(r"All:([0-9.]+)", completed.stderr.decode())
    if match is None:
        raise SystemExit(f"no SSIM for {output.name}")
    return float(match.group(1))


async def measure_ssim(ffmpeg: str, source: Path, probed: Probe, results: list[Result]) -> None:
    limiter = trio.CapacityLimiter(SSIM_CONCURRENCY)
    for result in results:
        result.ssim = [0.0] * len(result.outputs)

    async def one(result: Result, index: int) -> None:
        async with limiter:
            result.ssim[index] = await ssim(
                ffmpeg, result.outputs[index], source, probed.width, probed.height
            )

    async with trio.open_nursery() as nursery:
        for result in results:
            for index in range(len(result.outputs)):
                nursery.start_soon(one, result, index)


class Rules:
    """The rules checked, each printed with PASS or FAIL, and every figure as a `Row`."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.passed = True
        self.rows: list[Row] = []

    def check(self, holds: bool, text: str) -> None:
        self.passed = self.passed and holds
        self.lines.append(f"{'PASS' if holds else 'FAIL'}  {text}")

    def add(self, row: Row, text: str) -> None:
        """Record `row`; when it has a target, check it, described by `text`."""
        self.rows.append(row)
        if row.passed is not None:
            self.check(row.passed, text)


def compare_report(
    original: Result, ours: Result, count: int, rules: Rules, print_line: Callable[[str], None]
) -> None:
    print_line(
        f"{'method':<10}{'variations':>11}{'wall s':>9}{'var/min':>9}{'CPU s/var':>11}"
        f"{'SSIM min':>10}{'SSIM max':>10}{'peak RSS MB':>13}"
    )
    for result in (original, ours):
        print_line(
            f"{result.name:<10}{count:>11}{result.wall_s:>9.2f}{60 * count / result.wall_s:>9.1f}"
            f"{result.cpu_s / count:>11.2f}{min(result.ssim):>10.4f}{max(result.ssim):>10.4f}"
            f"{result.peak_rss_kib / 1024:>13.0f}"
        )
    print_line(f"per variation SSIM, original: {' '.join(f'{s:.4f}' for s in original.ssim)}")
    print_line(f"per variation SSIM, ours:     {' '.join(f'{s:.4f}' for s in ours.ssim)}")
    ratio = original.wall_s / ours.wall_s
    rules.add(
        Row(
            "processing, subtle: variations per minute (measuring included)",
            "var/min",
            60 * count / ours.wall_s,
            60 * count / original.wall_s,
            at_least(TARGET_RATIO, on="ratio"),
        ),
        f"subtle: ours (measuring included) {ratio:.2f}x the original's variations per "
        f"minute, >= {TARGET_RATIO:.0f}x",
    )
    rules.add(
        Row(
            "processing, subtle: lowest whole-video SSIM",
            "SSIM",
            min(ours.ssim),
            min(original.ssim),
            at_least(1.0, on="ratio"),
        ),
        f"subtle: our lowest SSIM {min(ours.ssim):.4f} >= the original's lowest "
        f"{min(original.ssim):.4f} (FFmpeg ssim, whole video)",
    )


def _spread(values: Sequence[float | None], digits: int) -> str:
    present = [value for value in values if value is not None]
    if not present:
        return "-"
    low, middle, high = min(present), statistics.median(present), max(present)
    return f"{low:.{digits}f} / {middle:.{digits}f} / {high:.{digits}f}"


def strengths_report(
    runs: list[StrengthRun],
    count: int,
    rules: Rules,
    print_line: Callable[[str], None],
    original_rate: float | None = None,
) -> None:
    """The table of each strength's figures; `original_rate` (the original's variations
    per minute, when measured) is the baseline of every strength's."""
    print_line(
        f"{'strength':<10}{'var/min':>9}{'s/var':>8}{'encode s/var':>14}{'measure s/var':>15}"
        f"{'measuring':>11}{'draws':>7}{'CPU s/var':>11}{'peak RSS MB':>13}"
    )
    for run in runs:
        total = run.encode_s + run.measure_s
        print_line(
            f"{run.strength.value:<10}{60 * count / run.result.wall_s:>9.1f}"
            f"{run.result.wall_s / count:>8.2f}{run.encode_s / count:>14.2f}"
            f"{run.measure_s / count:>15.2f}{100 * run.measure_s / total:>10.1f}%"
            f"{sum(run.attempts.values()):>7}{run.result.cpu_s / count:>11.2f}"
            f"{run.result.peak_rss_kib / 1024:>13.0f}"
        )
    print_line("")
    print_line(
        "measures of the variations kept, min / median / max (each against its source's "
        "1-fps samples and all its siblings):"
    )
    print_line(
        f"{'strength':<10}{'pdqMedian':>22}{'pdqMatchedShare':>22}{'ssim':>26}"
        f"{'nearestSiblingPdq':>20}{'not matched':>13}{'matched pairs':>15}"
    )
    for run in runs:
        final = list(run.final().values())
        measured = [m for m in final if m is not None]
        unmatched = sum(1 for m in measured if not m.source_matched)
        pairs = run.matched_pairs()
        print_line(
            f"{run.strength.value:<10}"
            f"{_spread([m.pdq_median for m in measured], 1):>22}"
            f"{_spread([m.pdq_matched_share for m in measured], 2):>22}"
            f"{_spread([m.ssim for m in measured], 4):>26}"
            f"{_spread([m.nearest_sibling_pdq for m in measured], 1):>22}"
            f"{f'{unmatched}/{count}':>13}{len(pairs):>15}"
        )
        if pairs:
            every = len(pairs) == count * (count - 1) // 2
            print_line(
                f"  {run.strength.value}: matched to each other: "
                + ("every pair" if every else ", ".join(f"{a}~{b}" for a, b in pairs))
            )
        again = {index: tries for index, tries in sorted(run.attempts.items()) if tries > 1}
        if again:
            print_line(
                f"  {run.strength.value}: drawn again: "
                + ", ".join(f"variation {index} ({tries} tries)" for index, tries in again.items())
            )
        if run.unmeasured:
            print_line(f"  {run.strength.value}: {run.unmeasured} variations not measured")
    for run in runs:
        name = f"processing, {run.strength.value}"
        if run.strength != Strength.SUBTLE:  # subtle's is compared above
            rules.add(
                Row(
                    f"{name}: variations per minute (measuring included)",
                    "var/min",
                    60 * count / run.result.wall_s,
                    original_rate,
                ),
                "",
            )
        share = run.measure_s / (run.encode_s + run.measure_s)
        rules.add(
            Row(f"{name}: measuring's share of the time", "%", 100 * share, None,
                at_most(100 * MAX_MEASURE_SHARE)),
            f"{run.strength.value}: measuring {100 * share:.1f} % of the time per variation, "
            f"<= {100 * MAX_MEASURE_SHARE:.0f} %",
        )  # fmt: skip
        final = list(run.final().values())
        unmatched = sum(1 for m in final if m is not None and not m.source_matched)
        minimum = MIN_UNMATCHED_SHARE.get(run.strength)
        if minimum is not None:
            needed = math.ceil(minimum * count - 1e-9)
            rules.add(
                Row(f"{name}: not matched to the source (of {count})", "variations",
                    unmatched, None, at_least(needed)),
                f"{run.strength.value}: {unmatched}/{count} not matched to the source, "
                f">= {needed}/{count}",
            )  # fmt: skip
        if run.strength in NO_SIBLING_MATCHES:
            matched = len(run.matched_pairs())
            rules.add(
                Row(f"{name}: pairs matched to each other", "pairs", matched, None, exactly(0)),
                f"{run.strength.value}: {matched} pairs matched to each other, none",
            )


async def run(count: int, seconds: float, strengths: list[Strength], work_dir: Path) -> Rules:
    ffmpeg = find_ffmpeg(None)
    source = work_dir / "footage.mp4"
    (work_dir / STILLS).mkdir(exist_ok=True)
    print(f"ffmpeg: {ffmpeg}")
    print(f"natural footage, {seconds:g} s 1280x720 with sound ...", flush=True)
    await trio.to_thread.run_sync(
        lambda: make_footage(ffmpeg, source, width=1280, height=720, seconds=seconds)
    )
    probed = await trio.to_thread.run_sync(probe, source)
    plan = measure.sampling(probed.duration_s, probed.width, probed.height)
    print(
        f"  {probed.duration_s:.2f} s {probed.width}x{probed.height} {probed.fps:g} fps, "
        f"{plan.count} samples at {plan.width}x{plan.height}; "
        f"{encoding.variations_per_encode(probed.width, probed.height)} variations per FFmpeg"
    )
    rules = Rules()
    runs: list[StrengthRun] = []
    original_rate = None
    for strength in strengths:
        if strength == Strength.SUBTLE:
            print(
                f"subtle: the original's method and ours (measuring included), {count} "
                "variations each ...",
                flush=True,
            )

            original = Result("original")
            make_original = functools.partial(
                run_original, ffmpeg, source, work_dir, result=original
            )
            subtle = await make_strength(
                ffmpeg, source, probed, work_dir, strength, count, before_batch=make_original
            )
            print("  SSIM of every output against the source (whole video) ...", flush=True)
            await measure_ssim(ffmpeg, source, probed, [original, subtle.result])
            print("")
            compare_report(original, subtle.result, count, rules, print)
            original_rate = 60 * count / original.wall_s
            print("")
            runs.append(subtle)
        else:
            print(f"{strength.value}: {count} variations ...", flush=True)
            runs.append(await make_strength(ffmpeg, source, probed, work_dir, strength, count))
    print("")
    print(
        f"{count} variations per strength; wall time includes measuring and any draws made "
        "again; measuring = sampling the outputs after FFmpeg (decode at 1 fps, PDQ, SSIM, "
        "stills) on two threads"
    )
    strengths_report(runs, count, rules, print, original_rate)
    print("")
    for line in rules.lines:
        print(line)
    return rules


def figures(
    count: int = 10, seconds: float = 12.0, strengths: Sequence[Strength] = tuple(Strength)
) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-processing-") as work_dir:
        return trio.run(run, count, seconds, list(strengths), Path(work_dir)).rows


def parse_strengths(text: str) -> list[Strength]:
    try:
        chosen = [Strength(name.strip()) for name in text.split(",") if name.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    if not chosen:
        raise argparse.ArgumentTypeError("name at least one strength")
    return [strength for strength in Strength if strength in chosen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--variations", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument(
        "--strengths",
        type=parse_strengths,
        default=list(Strength),
        help="comma-separated: subtle,standard,strong",
    )
    parser.add_argument("--keep", type=Path, help="write the clips here and keep them")
    args = parser.parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        rules = trio.run(run, args.variations, args.seconds, args.strengths, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-processing-") as work_dir:
            rules = trio.run(run, args.variations, args.seconds, args.strengths, Path(work_dir))
    return 0 if rules.passed else 1


if __name__ == "__main__":
    sys.exit(main())
