"""Finding FFmpeg, and finding and killing the encoders an earlier run left behind."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from refresher.ffmpeg import (
    MediaError,
    encoder_mark,
    find_ffmpeg,
    find_leftover_encoders,
    kill_leftover_encoders,
)

# --- find_ffmpeg -------------------------------------------------------------------------


def test_find_ffmpeg_takes_the_configured_executable(tmp_path: Path) -> None:
    fake = tmp_path / "my-ffmpeg"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert find_ffmpeg(str(fake)) == str(fake)


def test_find_ffmpeg_refuses_a_configured_path_that_cannot_run(tmp_path: Path) -> None:
    plain = tmp_path / "not-executable"
    plain.write_text("")
    for configured in (str(tmp_path / "missing"), str(plain)):
        with pytest.raises(MediaError, match=r"^FFMPEG '.+' is not an executable file$"):
            find_ffmpeg(configured)


def test_find_ffmpeg_prefers_path_then_the_bundled_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = tmp_path / "ffmpeg"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_ffmpeg(None) == str(on_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    bundled = find_ffmpeg(None)
    assert "imageio_ffmpeg" in bundled
    assert os.access(bundled, os.X_OK)


# --- leftover encoders -------------------------------------------------------------------


def spawn_sleeper(env_extra: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], env={**os.environ, **env_extra})


def test_only_encoders_marked_for_this_data_dir_are_killed(tmp_path: Path) -> None:
    ours = spawn_sleeper(encoder_mark(tmp_path / "data"))
    other_service = spawn_sleeper(encoder_mark(tmp_path / "other"))
    unmarked = spawn_sleeper({})
    try:
        assert find_leftover_encoders(tmp_path / "data") == [ours.pid]
        assert kill_leftover_encoders(tmp_path / "data") == [ours.pid]
        assert ours.wait(timeout=10) == -9
        assert other_service.poll() is None
        assert unmarked.poll() is None
        assert find_leftover_encoders(tmp_path / "data") == []
    finally:
        for process in (ours, other_service, unmarked):
            process.kill()
            process.wait()
