"""A small WebP still of a job's first video, made by FFmpeg, best effort."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import trio

from refresher.media.encoding import source_args
from refresher.media.ffmpeg import MediaError, exit_failure, partial_path, remove_files, run_ffmpeg
from refresher.media.probe import MediaLimits, Probe, probe

LOGGER = logging.getLogger(__name__)

THUMBNAIL_WIDTH = 128
# Where the thumbnail frame comes from: 10 % in, past any fade from black.
THUMBNAIL_AT = 0.10
THUMBNAIL_TIMEOUT_S = 30.0


async def make_thumbnail(
    ffmpeg: str,
    source: Path,
    output: Path,
    *,
    probed: Probe,
    limits: MediaLimits,
    env: Mapping[str, str] | None = None,
) -> bool:
    """Write a WebP still of the probed video stream of `source`, THUMBNAIL_WIDTH wide, to
    `output` (making its folder); return False on failure.

    Best effort: a thumbnail is never worth failing a job for, so every failure is
    logged and answered with False. Cancellation still propagates (after FFmpeg is
    stopped and the partial file removed).
    """
    partial = partial_path(output)
    # 10 % in, where a fade from black is over; input seeking never passes the end of
    # the clip then (the original's fixed -ss 2 gave 0 bytes for clips under 2 s). If
    # the duration was wrong and no frame came, the first frame will do.
    duration_s = probed.duration_s
    times_s = [duration_s * THUMBNAIL_AT] if duration_s > 0 else []
    problem = "no frame"
    try:
        await trio.Path(output.parent).mkdir(parents=True, exist_ok=True)
        for at_s in [*times_s, 0.0]:
            command = [
                ffmpeg, "-hide_banner", "-loglevel", "error", "-nostats",
                "-ss", f"{at_s:.3f}", *source_args(source, limits),
                "-map", f"0:{probed.video_stream}", "-frames:v", "1",
                "-vf", f"scale={THUMBNAIL_WIDTH}:-2", "-map_metadata", "-1",
                "-fflags", "+bitexact", "-c:v", "libwebp", "-quality", "75",
                "-f", "webp", "-y", str(partial),
            ]  # fmt: skip
            with trio.move_on_after(THUMBNAIL_TIMEOUT_S) as deadline:
                returncode, stderr_tail = await run_ffmpeg(command, env=env)
            if deadline.cancelled_caught:
                problem = f"FFmpeg took longer than {THUMBNAIL_TIMEOUT_S:g} s"
                break
            if returncode != 0:
                problem = str(exit_failure(returncode, stderr_tail, writing="the thumbnail"))
                break
            if await trio.to_thread.run_sync(_publish_if_not_empty, partial, output):
                return True
    except (OSError, MediaError) as err:
        problem = str(err)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(remove_files, [partial])
    LOGGER.warning("no thumbnail of %s: %s", source.name, problem)
    return False


def _publish_if_not_empty(partial: Path, final: Path) -> bool:
    """Rename `partial` to `final` if FFmpeg wrote anything; say whether (blocking)."""
    if not partial.exists() or partial.stat().st_size == 0:
        return False
    os.replace(partial, final)
    return True


async def thumbnail_of(
    ffmpeg: str,
    source: Path,
    output: Path,
    *,
    limits: MediaLimits,
    env: Mapping[str, str] | None = None,
) -> bool:
    """Probe `source` (its video stream, under `limits`), then `make_thumbnail`; False,
    with a log line, when the probe refuses it."""
    try:
        probed = await trio.to_thread.run_sync(probe, source, limits)
    except (MediaError, OSError) as err:
        LOGGER.warning("no thumbnail of %s: %s", source.name, err)
        return False
    return await make_thumbnail(ffmpeg, source, output, probed=probed, limits=limits, env=env)
