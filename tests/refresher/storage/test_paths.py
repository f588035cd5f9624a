from __future__ import annotations

import os
from pathlib import Path

import pytest

from refresher.storage.paths import Paths


def test_paths_are_absolute_even_from_a_relative_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    paths = Paths(Path("./data"))
    assert paths.root == tmp_path / "data"
    assert paths.absolute("jobs/j1/f_var1.mp4") == tmp_path / "data/jobs/j1/f_var1.mp4"
    assert paths.relative(paths.job_dir("j1") / "x.mp4") == "jobs/j1/x.mp4"


@pytest.mark.parametrize(
    "stored", ["../secret", "jobs/../../secret", "/etc/passwd", "", ".", "jobs/../../data2/x"]
)
def test_a_stored_path_cannot_lead_out_of_the_data_directory(tmp_path: Path, stored: str) -> None:
    paths = Paths(tmp_path / "data")
    with pytest.raises(ValueError, match=r"^stored path .* leaves the data directory$"):
        paths.absolute(stored)


def test_checking_a_stored_path_touches_no_disk(tmp_path: Path) -> None:
    # The data directory does not exist: a check that asked the disk would fail or differ.
    paths = Paths(tmp_path / "nowhere")
    assert paths.absolute("jobs/./j1//a.mp4") == tmp_path / "nowhere/jobs/j1/a.mp4"
    assert not os.path.lexists(tmp_path / "nowhere")
