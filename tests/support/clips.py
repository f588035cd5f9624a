"""Tiny video clips for the media tests, made by FFmpeg from its built-in test sources.

Every clip carries source metadata the service must strip (`SECRET` in the title, comment
and handler names, a creation time), so a test can look for it in an output.
"""

from __future__ import annotations

import dataclasses
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
    # `testsrc2` makes 4:2:0 frames (even sizes only); `testsrc` RGB frames of any size.
    pattern: str = "testsrc2"
    pix_fmt: str = "yuv420p"
    # Degrees in the display matrix (as phones record portrait video); 0 for none.
    display_rotation: int = 0
    # Drawn over the pattern, e.g. `drawbox=...` lines whose slope a test can measure.
    video_filter: str = ""


def make_clip(ffmpeg: str, path: Path, spec: ClipSpec = ClipSpec()) -> Path:
    """Write a clip described by `spec` to `path` (blocking) and return the path."""
    args = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    if spec.video:
        args += [
            "-f",
            "lavfi",
            "-i",
            f"{spec.pattern}=size={spec.width}x{spec.height}:rate={spec.rate}"
            f":duration={spec.seconds}",
        ]
    if spec.audio:
        args += [
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:sample_rate=48000:duration={spec.seconds}",
        ]
    if spec.video and spec.video_filter:
        args += ["-vf", spec.video_filter]
    if spec.video:
        args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", spec.pix_fmt]
        args += ["-metadata:s:v:0", f"handler_name={SECRET}-video-handler"]
    if spec.audio:
        args += ["-c:a", "aac", "-b:a", "64k"]
        args += ["-metadata:s:a:0", f"handler_name={SECRET}-audio-handler"]
    for key in SECRET_KEYS:
        args += ["-metadata", f"{key}={SECRET}-{key}"]
    args += ["-metadata", "creation_time=2001-02-03T04:05:06Z"]
    if spec.faststart and spec.container in ("mp4", "mov", "ipod"):
        args += ["-movflags", "+faststart"]
    written = path.with_name(f"unrotated-{path.name}") if spec.display_rotation else path
    args += ["-f", spec.container, str(written)]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    if spec.display_rotation:
        rotate = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
        rotate += ["-display_rotation", str(spec.display_rotation), "-i", str(written)]
        rotate += ["-c", "copy", "-f", spec.container, str(path)]
        subprocess.run(rotate, check=True, capture_output=True, timeout=60)
        written.unlink()
    return path


def truncate_copy(source: Path, path: Path, fraction: float) -> Path:
    """Write the first `fraction` of `source`'s bytes to `path`, like an interrupted copy."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@dataclasses.dataclass(frozen=True)
class Clips:
    """The shared source clips, made once per test session; tests copy what they change."""

    mp4: Path  # 1 s, 320x240, with audio
    mov: Path  # 1 s QuickTime, with audio
    long: Path  # 4 s, long enough to act while it encodes
    long_hd: Path  # 4 s of 1280x720 at 30 fps: FFmpeg reports progress before it ends
    mute: Path  # no audio
    audio_only: Path  # no video
    mkv: Path  # Matroska: not MP4 or MOV
    index_last: Path  # its index (moov) after its samples
    odd: Path  # 321x241, 4:4:4, no audio
    portrait: Path  # a display matrix turning 320x240 to portrait
    cross: Path  # a 4 px white cross through the centre, to measure a rotation by

    def named(self, name: str) -> Path:
        path: Path = getattr(self, name)
        return path


# Each clip of `Clips` and how it is made.
SPECS = {
    "mp4": ClipSpec(),
    "mov": ClipSpec(container="mov"),
    "long": ClipSpec(seconds=4.0),
    "long_hd": ClipSpec(seconds=4, width=1280, height=720, rate=30),
    "mute": ClipSpec(audio=False),
    "audio_only": ClipSpec(video=False),
    "mkv": ClipSpec(container="matroska"),
    "index_last": ClipSpec(faststart=False),
    "odd": ClipSpec(audio=False, pattern="testsrc", pix_fmt="yuv444p", width=321, height=241),
    "portrait": ClipSpec(audio=False, display_rotation=90),
    "cross": ClipSpec(
        audio=False,
        pattern="color",
        video_filter="drawbox=x=0:y=118:w=iw:h=4:color=white:t=fill,"
        "drawbox=x=158:y=0:w=4:h=ih:color=white:t=fill",
    ),
}
NAMES = {"mp4": "creative.mp4", "mov": "spot.mov", "long": "long.mp4", "mkv": "clip.mkv"}


def make_clips(ffmpeg: str, folder: Path) -> Clips:
    """Every clip of `Clips`, written to `folder` (blocking)."""
    return Clips(
        **{
            name: make_clip(ffmpeg, folder / NAMES.get(name, f"{name}.mp4"), spec)
            for name, spec in SPECS.items()
        }
    )
