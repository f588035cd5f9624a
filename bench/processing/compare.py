"""Every output of both methods against the source, by FFmpeg's `ssim` filter over the
whole video ("All"): the visibility rule at `subtle`."""

from __future__ import annotations

import re
from pathlib import Path

import trio

from bench.processing.original import Result
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
