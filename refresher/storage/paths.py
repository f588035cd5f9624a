"""Where the service keeps things on disk, and the few file operations it must get right."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

# Where a job's comparison stills go, inside its folder.
STILLS = "stills"


@dataclass(frozen=True)
class Paths:
    """The layout of the data directory; nothing else builds paths under it.

    `root` is made absolute once, here, so that every path below is absolute and checking
    one is a matter of text, not of system calls.
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(os.path.abspath(self.root)))

    @property
    def database(self) -> Path:
        return self.root / "refresher.sqlite3"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def resumable(self) -> Path:
        """Resumable uploads no job has taken yet (`refresher.uploads`)."""
        return self.root / "resumable"

    def resumable_upload(self, upload_id: str) -> Path:
        """One resumable upload's bytes: a file on the volume, a folder of pieces in a bucket."""
        return self.resumable / upload_id

    @property
    def ballast(self) -> Path:
        """Room held back for removals on a full volume (`refresher.storage.full`)."""
        return self.root / "ballast"

    @property
    def password_file(self) -> Path:
        return self.root / "auth_password"

    @property
    def token_secret_file(self) -> Path:
        return self.root / "token_secret"

    def upload_dir(self, job_id: str) -> Path:
        return self.uploads / job_id

    def job_dir(self, job_id: str) -> Path:
        return self.jobs / job_id

    def thumbnail(self, job_id: str) -> Path:
        """The job's small WebP picture."""
        return self.job_dir(job_id) / "thumbnail.webp"

    # --- one source file's outputs, inside its job's folder ---
    # Each name carries the claim it was made under (`refresher.jobs.claims`), so work of
    # a claim that was taken over never lands on the names of the claim that took it.

    def output(self, job_id: str, file_id: str, index: int, *, claim: str = "") -> Path:
        """Variation `index` of a source file."""
        return self.job_dir(job_id) / f"{file_id}_var{index}{_tag(claim)}.mp4"

    def stills(self, job_id: str) -> Path:
        """The folder of a job's comparison stills."""
        return self.job_dir(job_id) / STILLS

    def still(self, job_id: str, file_id: str, index: int, *, claim: str = "") -> Path:
        """Variation `index`'s comparison still."""
        return self.stills(job_id) / f"{file_id}_var{index}{_tag(claim)}.jpg"

    def source_still(self, job_id: str, file_id: str, *, claim: str = "") -> Path:
        """The source's still, at the moment its variations are compared."""
        return self.stills(job_id) / f"{file_id}_source{_tag(claim)}.jpg"

    def reference(self, job_id: str, file_id: str, *, claim: str = "") -> Path:
        """The source's 1-fps samples, written beside a batch and removed after it."""
        return self.job_dir(job_id) / f"{file_id}_reference{_tag(claim)}.mkv"

    def relative(self, path: Path) -> str:
        """The form a path takes in the database: relative to the data directory."""
        return path.relative_to(self.root).as_posix()

    def absolute(self, stored: str) -> Path:
        """The path a database row names, refusing anything outside the data directory.

        Lexical (no system call): rows name paths this service wrote, so what is checked
        is that `..` or an absolute name cannot lead out, not where links point.
        """
        path = os.path.normpath(os.path.join(self.root, stored))
        if not path.startswith(os.path.join(self.root, "")):
            raise ValueError(f"stored path {stored!r} leaves the data directory")
        return Path(path)

    def create(self) -> None:
        """Make the directories the service writes into (blocking: call from a thread)."""
        for directory in (self.root, self.uploads, self.jobs, self.resumable):
            directory.mkdir(parents=True, exist_ok=True)


def _tag(claim: str) -> str:
    return f"_{claim}" if claim else ""


def write_private_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, readable by the owner only (mode 0600).

    Written under a temporary name, flushed to disk, then renamed over `path`: a crash
    leaves either the old file or the new one, never half of one.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove_tree(path: Path) -> None:
    """Delete a directory and everything in it; a missing one is fine (blocking)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
