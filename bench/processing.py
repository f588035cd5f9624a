"""Processing benchmark: variations per minute of the original's method against ours.

    python -m bench.processing [--variations 10] [--seconds 10] [--grain 3] [--keep DIR]

Generates a 720p clip with audio (cloud-like Perlin texture over moving colour
gradients, a Game of Life panel, a test card with text, light film grain), then makes
the same `--variations` effect sets twice: the original's way (one FFmpeg per variation,
one after another, `rotate`+`eq`, its exact x264 arguments) and ours
(`refresher.encoding.encode_variations`, batched and run `PARALLEL_ENCODES` at a time, under
trio), the two taking turns so that load from elsewhere falls on both. Prints wall time,
variations per minute, CPU seconds, SSIM of every output against the source (FFmpeg's
`ssim` filter, "All") and the peak RSS of any one FFmpeg, then the ratio and the rules
of DESIGN.md section 6: ours >= 3x the original's variations per minute, and our lowest
SSIM no lower than the original's lowest. Exits 1 if a rule fails.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from refresher import effects, encoding
from refresher.ffmpeg import find_ffmpeg
from refresher.probe import Probe, probe

SEED = 20240601
TARGET_RATIO = 3.0
# /proc polling interval for peak memory; VmHWM is the kernel's own high-water mark, so
# sampling only has to happen before the process exits.
PEAK_POLL_S = 0.05
SSIM_CONCURRENCY = 2
# Film grain (FFmpeg `noise` strength) on the source: the harder case for ours, since
# nearest-neighbour sampling keeps the grain that the original's bilinear smooths away
# and x264 must spend its capped bitrate on it. 0 gives a clean source.
GRAIN = 3

SOURCE_GRAPH = (
    "perlin=s=640x360:rate=30:octaves=6:persistence=0.7:xscale=8:yscale=8:tscale=0.5"
    ":random_mode=seed:seed=7,scale=1280x720:flags=bicubic,format=gbrp[texture];"
    "gradients=s=1280x720:rate=30:seed=3:n=5:speed=0.03,format=gbrp[colour];"
    "[colour][texture]blend=all_mode=overlay,format=yuv420p[background];"
    "life=s=320x180:rate=30:mold=20:ratio=0.2:seed=5:life_color=#ffe0a0"
    ":death_color=#402010:mold_color=#204060,scale=640x360:flags=neighbor,format=yuv420p[life];"
    "testsrc2=s=400x224:rate=30[card];"
    "[background][life]overlay=x=600:y=330[with_life];"
    "[with_life][card]overlay=x='300+300*sin(t*0.7)':y='140+100*cos(t*0.5)',"
    "noise=alls={grain}:allf=t:all_seed=11,format=yuv420p[video];"
    "sine=frequency=440:sample_rate=48000,aformat=channel_layouts=stereo[audio]"
)


@dataclass
class Result:
    name: str
    wall_s: float = 0.0
    cpu_s: float = 0.0
    outputs: list[Path] = field(default_factory=list)
    peak_rss_kib: int = 0
    ssim: list[float] = field(default_factory=list)


def make_source(ffmpeg: str, path: Path, seconds: float, grain: int) -> None:
    subprocess.run(
        [
            ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-filter_complex", SOURCE_GRAPH.format(grain=grain),
            "-map", "[video]", "-map", "[audio]",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
            "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", str(path),
        ],
        check=True,
    )  # fmt: skip


def original_command(ffmpeg: str, source: Path, output: Path, chosen: effects.Effects) -> list[str]:
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


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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
    ffmpeg: str, source: Path, out_dir: Path, chosen: list[tuple[int, effects.Effects]]
) -> Result:
    """Make `chosen` (variation index, effects) the original's way, one after another."""
    result = Result("original")
    cpu_before, started = _children_cpu_s(), time.monotonic()
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
    result.wall_s = time.monotonic() - started
    result.cpu_s = _children_cpu_s() - cpu_before
    return result


async def run_ours(
    ffmpeg: str,
    source: Path,
    out_dir: Path,
    batches: list[list[tuple[int, effects.Effects]]],
    probed: Probe,
) -> Result:
    """Make `batches` with `encode_variations`, PARALLEL_ENCODES batches at a time."""
    result = Result("ours")
    cpu_before, started = _children_cpu_s(), time.monotonic()
    limiter = trio.CapacityLimiter(encoding.PARALLEL_ENCODES)
    async with trio.open_nursery() as nursery:

        async def encode(batch: list[tuple[int, effects.Effects]]) -> None:
            variations = [
                encoding.Variation(out_dir / f"ours_var{index}.mp4", variation)
                for index, variation in batch
            ]
            async with limiter:
                encoded = await encoding.encode_variations(
                    ffmpeg,
                    source,
                    variations,
                    probed=probed,
                    on_progress=lambda fraction: None,
                    on_started=lambda pid: nursery.start_soon(_watch_peak, pid, result),
                )
            result.outputs.extend(output.path for output in encoded)

        for batch in batches:
            nursery.start_soon(encode, batch)
    result.wall_s = time.monotonic() - started
    result.cpu_s = _children_cpu_s() - cpu_before
    result.outputs.sort(key=lambda path: int(path.stem.rsplit("var", 1)[1]))
    return result


def merge(results: list[Result]) -> Result:
    total = Result(results[0].name)
    for result in results:
        total.wall_s += result.wall_s
        total.cpu_s += result.cpu_s
        total.outputs += result.outputs
        total.peak_rss_kib = max(total.peak_rss_kib, result.peak_rss_kib)
    return total


async def compare(
    ffmpeg: str, source: Path, out_dir: Path, chosen: list[effects.Effects]
) -> list[Result]:
    """Time both methods on the same variations, in turns of a few variations each.

    Each turn makes the variations of the next PARALLEL_ENCODES of our batches, first
    the original's way, then ours, so a burst of load from elsewhere on the machine
    falls on both methods instead of deciding the ratio.
    """
    probed = await trio.to_thread.run_sync(probe, source)
    sizes = encoding.batch_sizes(
        len(chosen), encoding.variations_per_encode(probed.width, probed.height)
    )
    numbered = list(enumerate(chosen, start=1))
    batches = []
    for size in sizes:
        batches.append(numbered[:size])
        numbered = numbered[size:]
    originals, ours = [], []
    for turn in range(0, len(batches), encoding.PARALLEL_ENCODES):
        in_turn = batches[turn : turn + encoding.PARALLEL_ENCODES]
        print(f"  turn {turn + 1}: {sum(map(len, in_turn))} variations each way", flush=True)
        originals.append(
            await run_original(ffmpeg, source, out_dir, [v for b in in_turn for v in b])
        )
        ours.append(await run_ours(ffmpeg, source, out_dir, in_turn, probed))
    return [merge(originals), merge(ours)]


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


async def measure_ssim(ffmpeg: str, source: Path, results: list[Result]) -> None:
    probed = await trio.to_thread.run_sync(probe, source)
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


def report(results: list[Result], count: int, print_line: Callable[[str], None] = print) -> bool:
    original, ours = results
    print_line(
        f"{'method':<10}{'variations':>11}{'wall s':>9}{'var/min':>9}{'CPU s/var':>11}"
        f"{'SSIM min':>10}{'SSIM max':>10}{'peak RSS MB':>13}"
    )
    for result in results:
        print_line(
            f"{result.name:<10}{count:>11}{result.wall_s:>9.2f}{60 * count / result.wall_s:>9.1f}"
            f"{result.cpu_s / count:>11.2f}{min(result.ssim):>10.4f}{max(result.ssim):>10.4f}"
            f"{result.peak_rss_kib / 1024:>13.0f}"
        )
    ratio = original.wall_s / ours.wall_s
    fast_enough = ratio >= TARGET_RATIO
    same_look = min(ours.ssim) >= min(original.ssim)
    print_line(f"per variation SSIM, original: {' '.join(f'{s:.4f}' for s in original.ssim)}")
    print_line(f"per variation SSIM, ours:     {' '.join(f'{s:.4f}' for s in ours.ssim)}")
    print_line(
        f"ratio ours/original: {ratio:.2f}x (target >= {TARGET_RATIO:.0f}x): "
        f"{'holds' if fast_enough else 'FAILS'}"
    )
    print_line(
        f"SSIM rule, our lowest {min(ours.ssim):.4f} >= original's lowest "
        f"{min(original.ssim):.4f}: {'holds' if same_look else 'FAILS'}"
    )
    return fast_enough and same_look


async def run(count: int, seconds: float, grain: int, work_dir: Path) -> bool:
    ffmpeg = find_ffmpeg(None)
    source = work_dir / "source.mp4"
    print(f"ffmpeg: {ffmpeg}")
    print(f"generating a {seconds:g} s 1280x720 source ...", flush=True)
    await trio.to_thread.run_sync(make_source, ffmpeg, source, seconds, grain)
    print(f"the original's method and ours, {count} variations each ...", flush=True)
    results = await compare(ffmpeg, source, work_dir, effects.generate(SEED, count))
    print("SSIM against the source ...", flush=True)
    await measure_ssim(ffmpeg, source, results)
    return report(results, count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--variations", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--grain", type=int, default=GRAIN, help="film grain strength (FFmpeg noise alls)"
    )
    parser.add_argument("--keep", type=Path, help="write the clips here and keep them")
    args = parser.parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        return 0 if trio.run(run, args.variations, args.seconds, args.grain, args.keep) else 1
    with tempfile.TemporaryDirectory(prefix="bench-processing-") as work_dir:
        return 0 if trio.run(run, args.variations, args.seconds, args.grain, Path(work_dir)) else 1


if __name__ == "__main__":
    sys.exit(main())
