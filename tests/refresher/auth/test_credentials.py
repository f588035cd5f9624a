from __future__ import annotations

import stat
from pathlib import Path

from refresher.auth import credentials
from refresher.storage.paths import Paths


def test_generated_password_and_secret_are_private_and_kept(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "data")
    first = credentials.load(paths, password=None, token_secret=None)
    assert len(first.password) >= 12
    assert len(first.token_secret) >= 32
    assert first.password_source == str(paths.password_file)
    for path in (paths.password_file, paths.token_secret_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = credentials.load(paths, password=None, token_secret=None)
    assert again == first


def test_environment_values_win_and_write_no_password_file(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    loaded = credentials.load(paths, password="from-env-123", token_secret="secret-from-env")
    assert loaded.password == "from-env-123"
    assert loaded.token_secret == b"secret-from-env"
    assert loaded.password_source == "environment"
    assert not paths.password_file.exists()
    assert not paths.token_secret_file.exists()


def test_password_comparison() -> None:
    creds = credentials.Credentials("hunter22", b"x", "environment")
    assert creds.password_matches("hunter22")
    assert not creds.password_matches("hunter2")
    assert not creds.password_matches("hunter222")
    assert not creds.password_matches("")
