"""Where the service keeps things on disk, and the few file operations it must get right."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """The layout of the data directory; nothing else builds paths under it."""

    root: Path

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
    def password_file(self) -> Path:
        return self.root / "auth_password"

    @property
    def token_secret_file(self) -> Path:
        return self.root / "token_secret"

    def create(self) -> None:
        """Make the directories the service writes into (blocking: call from a thread)."""
        for directory in (self.root, self.uploads, self.jobs):
            directory.mkdir(parents=True, exist_ok=True)


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


def volume_free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still put on the volume holding `path`."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize
