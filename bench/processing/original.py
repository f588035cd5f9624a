"""The original Video Refresher's method, as the baseline: one FFmpeg per variation, one
after another, `rotate`+`eq`, its exact x264 arguments."""

from __future__ import annotations

import re
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from bench.service import cpu_seconds
from refresher.media.effects import Effects

# /proc polling interval for peak memory; VmHWM is the kernel's own high-water mark, so
# sampling only has to happen before the process exits.
PEAK_POLL_S = 0.05

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


def cpu_s() -> float:
    """CPU seconds of this process (the measuring threads) and its reaped children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds of a running process (0 for None or one that is gone)."""
    if pid is None:
        return 0.0
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


async def watch_peak(pid: int, result: Result) -> None:
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
    cpu_before, started = cpu_s(), time.monotonic()
    async with trio.open_nursery() as nursery:
        for index, variation in chosen:
            output = out_dir / f"original_var{index}.mp4"
            process = await trio.lowlevel.open_process(
                original_command(ffmpeg, source, output, variation)
            )
            nursery.start_soon(watch_peak, process.pid, result)
            if await process.wait() != 0:
                raise SystemExit(f"the original's command failed for variation {index}")
            result.outputs.append(output)
    result.wall_s += time.monotonic() - started
    result.cpu_s += cpu_s() - cpu_before
