"""Thumbnails with the real FFmpeg on tiny generated clips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import trio

from refresher.media.probe import MediaLimits, Probe, probe
from refresher.media.thumbnails import make_thumbnail
from tests.support.clips import Clips

# FFmpeg makes a thumbnail in well under a second on an idle machine; the bound is for a
# loaded CI runner, and keeps a hung FFmpeg from hanging the suite.
TIMEOUT_S = 60
LIMITS = MediaLimits()
# What a probe would have said of a 5 s clip.
CLAIMED = Probe(
    duration_s=5.0, width=320, height=240, fps=25.0, has_audio=False, video_codec="h264"
)


def _files(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


async def _thumbnail_made(ffmpeg: str, source: Path, out_dir: Path, *, duration_s: float) -> Path:
    """Make a thumbnail of `source` in `out_dir`; assert that it was made and that it is
    all `out_dir` holds (no partial file); return its path."""
    thumbnail = out_dir / "thumbnail.webp"
    probed = dataclasses.replace(probe(source), duration_s=duration_s)
    with trio.fail_after(TIMEOUT_S):
        assert await make_thumbnail(ffmpeg, source, thumbnail, probed=probed, limits=LIMITS)
    assert _files(out_dir) == [thumbnail]
    return thumbnail


async def test_thumbnail_of_a_one_second_clip_is_a_128_wide_webp(
    ffmpeg: str, clips: Clips, out_dir: Path
) -> None:
    thumbnail = await _thumbnail_made(ffmpeg, clips.mp4, out_dir, duration_s=1.0)
    data = thumbnail.read_bytes()
    assert (data[:4], data[8:12]) == (b"RIFF", b"WEBP")
    with av.open(str(thumbnail)) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (128, 96)


async def test_thumbnail_of_a_broken_source_is_false_and_leaves_nothing(
    ffmpeg: str, out_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "broken.mp4"
    source.write_text("not a video\n")
    with trio.fail_after(TIMEOUT_S):
        made = await make_thumbnail(
            ffmpeg, source, out_dir / "t.webp", probed=CLAIMED, limits=LIMITS
        )
    assert made is False
    assert _files(out_dir) == []


async def test_thumbnail_falls_back_to_the_first_frame_when_the_duration_is_wrong(
    ffmpeg: str, clips: Clips, out_dir: Path
) -> None:
    # 10 % of a claimed 100 s is past the end of the 1 s clip: FFmpeg writes 0 bytes.
    thumbnail = await _thumbnail_made(ffmpeg, clips.mp4, out_dir, duration_s=100.0)
    assert thumbnail.stat().st_size > 0
