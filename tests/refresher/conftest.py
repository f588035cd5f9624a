"""Fixtures of the FFmpeg tests: the FFmpeg to run, tiny generated clips, an output dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from refresher.media.ffmpeg import find_ffmpeg
from tests.support.clips import ClipSpec, make_clip


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    return find_ffmpeg(None)


@pytest.fixture(scope="session")
def sample_clips(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shared source clips by name; tests copy what they change or delete."""
    folder = tmp_path_factory.mktemp("sample_clips")
    specs = {
        "mp4": ClipSpec(),
        "mov": ClipSpec(container="mov"),
        "mute": ClipSpec(audio=False),
        "audio_only": ClipSpec(video=False),
        "mkv": ClipSpec(container="matroska"),
        "index_last": ClipSpec(faststart=False),
        "odd": ClipSpec(audio=False, pattern="testsrc", pix_fmt="yuv444p", width=321, height=241),
        "portrait": ClipSpec(audio=False, display_rotation=90),
        # A 4 px white cross through the centre, to measure a rotation by.
        "cross": ClipSpec(
            audio=False,
            pattern="color",
            video_filter="drawbox=x=0:y=118:w=iw:h=4:color=white:t=fill,"
            "drawbox=x=158:y=0:w=4:h=ih:color=white:t=fill",
        ),
        # Long and large enough that FFmpeg reports progress before it ends.
        "long": ClipSpec(seconds=4, width=1280, height=720, rate=30),
    }
    suffixes = {"mov": ".mov", "mkv": ".mkv"}
    return {
        name: make_clip(ffmpeg, folder / f"{name}{suffixes.get(name, '.mp4')}", spec)
        for name, spec in specs.items()
    }


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder
