"""Find and stop encoder processes that an earlier run of this service left behind.

Each FFmpeg the processor starts carries an environment variable naming the data
directory it writes into. After a crash (even `kill -9` of the service, which leaves its
children running), the next start looks for processes carrying that mark and kills
them. Matching on the mark rather than on a remembered PID is safe against PID reuse: a
process that merely got an old PID does not carry it.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

LOGGER = logging.getLogger(__name__)

MARK_VARIABLE = "VIDEO_REFRESHER_ENCODER"
PROC = Path("/proc")


def mark_for(data_dir: Path) -> dict[str, str]:
    """The environment entries that mark an encoder as belonging to `data_dir`."""
    return {MARK_VARIABLE: str(data_dir.resolve())}


def find_marked(data_dir: Path, *, proc: Path = PROC) -> list[int]:
    """PIDs of running processes marked as encoders of `data_dir` (blocking)."""
    ((name, value),) = mark_for(data_dir).items()
    wanted = f"{name}={value}".encode()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read: not one of our encoders
            continue
        if wanted in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_marked(data_dir: Path) -> list[int]:
    """SIGKILL every leftover encoder of `data_dir`; return their PIDs (blocking)."""
    killed = []
    for pid in find_marked(data_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed.append(pid)
        LOGGER.warning("killed leftover encoder pid=%d from an earlier run", pid)
    return killed
