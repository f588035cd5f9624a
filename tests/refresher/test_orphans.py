from __future__ import annotations

import os
import subprocess
from pathlib import Path

from refresher import orphans


def spawn_sleeper(env_extra: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], env={**os.environ, **env_extra})


def test_only_encoders_marked_for_this_data_dir_are_killed(tmp_path: Path) -> None:
    ours = spawn_sleeper(orphans.mark_for(tmp_path / "data"))
    other_service = spawn_sleeper(orphans.mark_for(tmp_path / "other"))
    unmarked = spawn_sleeper({})
    try:
        assert orphans.find_marked(tmp_path / "data") == [ours.pid]
        assert orphans.kill_marked(tmp_path / "data") == [ours.pid]
        assert ours.wait(timeout=10) == -9
        assert other_service.poll() is None
        assert unmarked.poll() is None
        assert orphans.find_marked(tmp_path / "data") == []
    finally:
        for process in (ours, other_service, unmarked):
            process.kill()
            process.wait()
