"""Tiny video clips for the media tests, made by FFmpeg from its built-in test sources.

Every clip carries source metadata the service must strip (`SECRET` in the title, comment
and handler names, a creation time), so a test can look for it in an output.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SECRET = "SECRET"
# Keys of the secret metadata each clip gets, container-wide and per stream.
SECRET_KEYS = ("title", "comment", "artist")


@dataclass(frozen=True)
class ClipSpec:
    seconds: float = 1.0
    width: int = 320
    height: int = 240
    rate: int = 25
    audio: bool = True
    video: bool = True
    container: str = "mp4"  # an FFmpeg muxer name: mp4, mov, matroska, ipod
    faststart: bool = True


def make_clip(ffmpeg: str, path: Path, spec: ClipSpec = ClipSpec()) -> Path:
    """Write a clip described by `spec` to `path` (blocking) and return the path."""
    args = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    if spec.video:
        args += [
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={spec.width}x{spec.height}:rate={spec.rate}:duration={spec.seconds}",
        ]
    if spec.audio:
        args += [
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:sample_rate=48000:duration={spec.seconds}",
        ]
    if spec.video:
        args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
        args += ["-metadata:s:v:0", f"handler_name={SECRET}-video-handler"]
    if spec.audio:
        args += ["-c:a", "aac", "-b:a", "64k"]
        args += ["-metadata:s:a:0", f"handler_name={SECRET}-audio-handler"]
    for key in SECRET_KEYS:
        args += ["-metadata", f"{key}={SECRET}-{key}"]
    args += ["-metadata", "creation_time=2001-02-03T04:05:06Z"]
    if spec.faststart and spec.container in ("mp4", "mov", "ipod"):
        args += ["-movflags", "+faststart"]
    args += ["-f", spec.container, str(path)]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    return path


def truncate_copy(source: Path, path: Path, fraction: float) -> Path:
    """Write the first `fraction` of `source`'s bytes to `path`, like an interrupted copy."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path
