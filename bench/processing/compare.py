"""Every output of both methods against the source, by FFmpeg's `ssim` filter over the
whole video ("All"): the visibility rule at `subtle`."""

from __future__ import annotations

import re
from pathlib import Path

import trio

from bench.processing.original import Result, cpu_s
from refresher.media import encoding
from refresher.media.probe import Probe

SSIM_CONCURRENCY = 2


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


async def encode_floor(ffmpeg: str, source: Path, outputs: int) -> float:
    """CPU seconds per variation of the least any method could spend: the source decoded
    once and encoded `outputs` times by x264 as ours is (preset, parameters, rate
    control, one thread each), with no filter, no sound, no muxing and no measuring."""
    x264 = [
        "-c:v", "libx264", "-preset", encoding.X264_PRESET,
        "-x264-params", encoding.X264_PARAMS, "-crf", str(encoding.X264_CRF),
        "-maxrate", encoding.VIDEO_MAXRATE, "-bufsize", encoding.VIDEO_BUFSIZE,
        "-threads", "1", "-pix_fmt", "yuv420p",
    ]  # fmt: skip
    args = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-threads", "1"]
    args += ["-i", str(source)]
    for _ in range(outputs):
        args += ["-map", "0:v:0", *x264, "-f", "null", "-"]
    before = cpu_s()
    await trio.run_process(args)
    return (cpu_s() - before) / outputs
