"""Probing with PyAV on tiny generated clips: what is accepted, what is refused and why."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from refresher.media.probe import NotAVideo, Probe, probe
from tests.support.clips import Clips, truncate_copy


@pytest.mark.parametrize("name", ["mp4", "mov"])
def test_probe_reads_mp4_and_mov(clips: Clips, name: str) -> None:
    assert probe(clips.named(name)) == Probe(
        duration_s=1.0, width=320, height=240, fps=25.0, has_audio=True, video_codec="h264"
    )


def test_probe_reports_a_clip_without_audio(clips: Clips) -> None:
    assert probe(clips.mute).has_audio is False


def test_probe_gives_the_displayed_size_of_a_rotated_clip(clips: Clips) -> None:
    probed = probe(clips.portrait)
    assert (probed.width, probed.height) == (240, 320)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda clips, path: path.write_text("just some text\n" * 100), "is not a video file"),
        (lambda clips, path: path.write_bytes(b""), "is empty"),
        (
            lambda clips, path: truncate_copy(clips.mp4, path, 0.6),
            "is truncated or damaged",
        ),
        (
            lambda clips, path: truncate_copy(clips.index_last, path, 0.6),
            "is truncated or damaged",
        ),
        (
            lambda clips, path: path.write_bytes(clips.audio_only.read_bytes()),
            "has no video stream",
        ),
        (
            lambda clips, path: path.write_bytes(clips.mkv.read_bytes()),
            r"is not an MP4 or MOV video \(only MP4 and MOV are accepted\)",
        ),
    ],
    ids=["text", "zero-bytes", "truncated", "truncated-index-last", "audio-only", "mkv"],
)
def test_probe_rejects_what_is_not_a_whole_mp4_or_mov_video(
    clips: Clips,
    tmp_path: Path,
    make: Callable[[Clips, Path], object],
    reason: str,
) -> None:
    upload = tmp_path / "upload.mp4"
    make(clips, upload)
    with pytest.raises(NotAVideo, match=rf"^{reason}$"):
        probe(upload)
