"""Memory as the machine sees it, for tests that bound it: the resident size of this
process (the service under test runs in it) and the high-water mark of each FFmpeg the
service runs for a data directory (found by its encoder mark)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from refresher.media.ffmpeg import find_leftover_encoders

MIB = 1024 * 1024
SAMPLE_S = 0.01
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(pid: int | str = "self") -> int:
    """The resident set of a process now (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


def high_water_bytes(pid: int) -> int:
    """The largest resident set a process has had (`VmHWM`; 0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class PeakMemory:
    """What a watch saw: this process's resident size before and at its peak, and each
    encoder's high-water mark by PID."""

    baseline_bytes: int
    peak_bytes: int = 0
    encoders: dict[int, int] = field(default_factory=dict)

    @property
    def growth_mib(self) -> float:
        return (self.peak_bytes - self.baseline_bytes) / MIB

    @property
    def largest_encoder_mib(self) -> float:
        return max(self.encoders.values(), default=0) / MIB

    def sample(self, data_dir: Path | None) -> None:
        """Look once (blocking): this process, and the encoders of `data_dir`."""
        self.peak_bytes = max(self.peak_bytes, resident_bytes())
        if data_dir is None:
            return
        for pid in find_leftover_encoders(data_dir):
            self.encoders[pid] = max(self.encoders.get(pid, 0), high_water_bytes(pid))


@contextlib.asynccontextmanager
async def watch_memory(data_dir: Path | None = None) -> AsyncIterator[PeakMemory]:
    """Sample memory every SAMPLE_S until the block ends (a last sample then)."""
    peak = PeakMemory(baseline_bytes=resident_bytes())
    async with trio.open_nursery() as nursery:

        async def sample() -> None:
            while True:
                await trio.to_thread.run_sync(peak.sample, data_dir)
                await trio.sleep(SAMPLE_S)

        nursery.start_soon(sample)
        try:
            yield peak
        finally:
            nursery.cancel_scope.cancel()
    peak.sample(data_dir)
