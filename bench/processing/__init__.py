"""Processing benchmark: variations per minute and distinctness at each strength, and the
original's method against ours at `subtle`.

    python -m bench.processing [--variations 10] [--seconds 12]
                               [--strengths subtle,standard,strong] [--keep DIR]

The source is natural footage (`tests.support.footage`: a 1280x720 pan across photographs,
with sound), not a test pattern: perceptual hashes and x264 both behave differently on
synthetic pictures. For each strength asked for, `--variations` variations of it are made
by the service's own core (`refresher.media.variations`, which `refresher.jobs.batches`
runs before recording): in FFmpeg runs of `variations_per_encode` variations, each
writing the source's 1-fps samples beside its outputs, then every output sampled and
measured on two threads (PDQ to the source and to its siblings, SSIM to the source's samples, the
comparison stills); at `standard` and `strong` a variation still matched to its source or
to a sibling is drawn again, up to `MAX_ATTEMPTS` tries.

At `subtle` each of our FFmpeg runs takes turns with the original's method making the same
variations (one FFmpeg per variation, one after another, `rotate`+`eq`, its exact x264
arguments), so that load from elsewhere falls on both; every output of both is then
compared with the source by FFmpeg's `ssim` filter over the whole video ("All").

Prints, per strength: variations per minute (wall, measuring included), the share of
the time per variation spent measuring (from FFmpeg's end to the measures: decoding the
1-fps samples, PDQ, SSIM, stills; writing the source's samples and the keyframes they
need happens inside FFmpeg and counts as its time), the draws used, and the minimum,
median and maximum of each measure (pdqMedian, pdqMatchedShare, ssim, nearestSiblingPdq), how many
variations are not matched to the source and how many pairs are matched to each other.
Then the rules, each PASS or FAIL: at `subtle`, ours >= 5x the original's variations per
minute and our lowest SSIM no lower than the original's lowest; at `standard` and
`strong`, >= 3x; at every strength,
measuring <= 15 % of the time per variation; at `strong`, at least 9 in 10 not matched
to the source and no two matched to each other; at `standard`, at least 7 in 10 not
matched. Exits 1 if a rule fails.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from collections.abc import Sequence
from pathlib import Path

import trio

from bench.processing.compare import encode_floor, measure_ssim
from bench.processing.original import Result, run_original
from bench.processing.ours import STILLS, StrengthRun, make_strength
from bench.processing.report import Rules, compare_report, strengths_report
from bench.verdict import Row
from refresher.media import encoding, measure
from refresher.media.effects import Strength
from refresher.media.ffmpeg import find_ffmpeg
from refresher.media.probe import probe
from tests.support.footage import make_footage


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
    per_encode = encoding.variations_per_encode(probed.width, probed.height)
    floor = await encode_floor(ffmpeg, source, per_encode)
    print(f"  encode-only floor: {floor:.2f} CPU s per variation ({per_encode} x264 at once)")
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
                source, probed, work_dir, strength, count, before_batch=make_original
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
            runs.append(await make_strength(source, probed, work_dir, strength, count))
    print("")
    print(
        f"{count} variations per strength; wall time includes measuring and any draws made "
        "again; measuring = sampling the outputs after FFmpeg (decode at 1 fps, PDQ, SSIM, "
        "stills) in the measuring process, on two threads"
    )
    strengths_report(runs, count, rules, print, original_rate, floor)
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
