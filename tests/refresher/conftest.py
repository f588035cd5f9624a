"""Fixtures of the domain's tests: the FFmpeg to run and an output folder (the clips are
the session's, `tests/conftest.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from refresher.media.ffmpeg import find_ffmpeg


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    return find_ffmpeg(None)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder
