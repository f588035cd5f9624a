"""The service as a new user gets it: the README's first command, run in a fresh copy of
the tracked files, installs a wheel (never an editable install) into a venv of its own.

Every other suite imports the work tree, which hides a file the wheel leaves out; these
tests see only what `pip install .` put into that venv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
# The packages the wheel carries (`[tool.setuptools.packages.find]`).
PACKAGES = ("refresher", "actors", "web", "wiring")
# Building the wheel and installing its dependencies (from pip's cache once the test
# command has installed them) takes 20-60 s; a first install from the registry longer.
INSTALL_TIMEOUT_S = 900


@dataclass(frozen=True)
class Installed:
    """The README's venv in a fresh copy of the repository."""

    clone: Path
    venv: Path

    @property
    def serve(self) -> list[str]:
        return [str(self.venv / "bin" / "video-refresher"), "serve"]

    def installed_files(self) -> set[str]:
        """The files pip installed for the project, by their path in site-packages."""
        (record,) = self.venv.glob("lib/python*/site-packages/video_refresher-*.dist-info/RECORD")
        names = {line.split(",", 1)[0] for line in record.read_text().splitlines() if line}
        return {name for name in names if not _compiled(name) and not name.startswith("..")}


def _compiled(name: str) -> bool:
    return "__pycache__/" in name or name.endswith((".pyc", ".pyo"))


def tracked_files() -> list[str]:
    """The repository's tracked files that exist in the work tree, as a fresh clone holds
    them."""
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPOSITORY, capture_output=True, check=True
    ).stdout.decode()
    return sorted(name for name in listing.split("\0") if name and (REPOSITORY / name).is_file())


def package_files() -> set[str]:
    """The tracked files under the packages: everything the wheel must carry."""
    return {name for name in tracked_files() if name.split("/", 1)[0] in PACKAGES}


def quick_start_command() -> str:
    """The README's first command: the first shell block of its quick start."""
    readme = (REPOSITORY / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    match = re.search(r"```sh\n(.+?)\n```", section, re.DOTALL)
    assert match, "the README's quick start has no shell block"
    return match.group(1).strip()


def clean_environment() -> dict[str, str]:
    """This process's environment without the test venv: what a new user's shell has."""
    environ = dict(os.environ)
    venv = environ.pop("VIRTUAL_ENV", None)
    environ.pop("PYTHONPATH", None)
    environ.pop("PYTHONHOME", None)
    if venv:
        bin_dir = str(Path(venv) / "bin")
        environ["PATH"] = os.pathsep.join(
            entry for entry in environ.get("PATH", "").split(os.pathsep) if entry != bin_dir
        )
    return environ


def run(command: list[str], cwd: Path, environ: dict[str, str]) -> str:
    """Run `command` (blocking); fail with its output unless it exits 0."""
    done = subprocess.run(
        command,
        cwd=cwd,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{output}"
    return output


def copy_tracked_files(target: Path) -> None:
    for name in tracked_files():
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPOSITORY / name, destination)


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Copy the tracked files to a fresh folder and run the README's first command there,
    all but its last step (`serve`, which each test runs itself)."""
    clone = tmp_path_factory.mktemp("fresh clone")
    copy_tracked_files(clone)
    *install, serve = quick_start_command().split(" && ")
    assert serve == ".venv/bin/video-refresher serve", serve
    environ = clean_environment()
    run(["bash", "-c", " && ".join(install)], clone, environ)
    venv = clone / ".venv"
    # What the installed service imports comes from the venv, not from the copy: run from
    # elsewhere, as the console script does (its own folder first on sys.path).
    where = run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import actors, refresher, web, wiring; "
            "print(actors.__file__, refresher.__file__, web.__file__, wiring.__file__, sep='\\n')",
        ],
        tmp_path_factory.mktemp("elsewhere"),
        environ,
    )
    for path in where.splitlines():
        assert Path(path).is_relative_to(venv / "lib"), where
    return Installed(clone, venv)


def build_wheel(source: Path, out: Path) -> Path:
    """`pip wheel` the project in `source` (its dependencies are not rebuilt)."""
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        source,
        clean_environment(),
    )
    (wheel,) = out.glob("video_refresher-*.whl")
    return wheel
