"""The service's side of the measuring process (`refresher.media.measuring`): started
when first needed, one request at a time, started again after it ended, killed when a
request is cancelled.

A child that dies mid-request (the kernel's out-of-memory killer, a crash in a decoder)
is started again once for the same request; if that one dies too, the batch is not
measured (`MeasureFailed`: its variations are kept unmeasured). A cancelled request
kills the child; the next one starts another.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from refresher.media.ffmpeg import FFMPEG_NICE, NICE, Child, die_with_parent
from refresher.media.measure import MeasureFailed, Sampled, Sampling, Wanted
from refresher.media.measuring import IDLE_EXIT_S, request_line, sampled_of

LOGGER = logging.getLogger(__name__)

# Starts of a child per request: a child that dies mid-request is started again once.
STARTS_PER_REQUEST = 2
# Closing: a child given EOF has this long to exit before it is killed.
EXIT_WAIT_S = 2.0
# A reply is a few KiB per variation; a longer line is not from our child.
MAX_REPLY_BYTES = 64 * 1024 * 1024
READ_BYTES = 65536


class _Gone(Exception):
    """The child ended before it replied."""


class Measurer:
    """The service's measuring process: started when first needed, one request at a time;
    the child ends after `idle_exit_s` without a request."""

    def __init__(self, *, idle_exit_s: float = IDLE_EXIT_S) -> None:
        self._idle_exit_s = idle_exit_s
        self._child: Child | None = None
        self._pending = b""
        self._lock = trio.Lock()
        # Children started so far (for tests and the log).
        self.started = 0

    @property
    def pid(self) -> int | None:
        """The running child's PID, if any."""
        child = self._child
        return child.pid if child is not None and child.returncode is None else None

    async def sample(
        self, reference: Path, plan: Sampling, wanted: Sequence[Wanted], source_still: Path | None
    ) -> tuple[Sampled, list[Sampled]]:
        """The samples of the source in `reference` and of each of `wanted` (see
        `measure.sample_batch`); raise `MeasureFailed` if they could not be read."""
        request = request_line(reference, plan, wanted, source_still)
        async with self._lock:
            for start in range(1, STARTS_PER_REQUEST + 1):
                try:
                    reply = await self._ask(request)
                except _Gone as err:
                    if start == STARTS_PER_REQUEST:
                        raise MeasureFailed(f"the measuring process ended: {err}") from err
                    LOGGER.warning("the measuring process ended mid-request (%s): again", err)
                    continue
                if "error" in reply:
                    raise MeasureFailed(str(reply["error"]))
                return sampled_of(reply["source"]), [sampled_of(one) for one in reply["sampled"]]
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """End the child: EOF on its stdin, then a kill if it does not exit in time."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                child, self._child = self._child, None
                if child is None:
                    return
                await child.stdin.aclose()
                with trio.move_on_after(EXIT_WAIT_S):
                    await child.wait()
                await _end(child)

    async def _ask(self, request: bytes) -> dict[str, Any]:
        child = await self._running()
        try:
            await child.stdin.send_all(request)
            line = await self._line(child)
            reply: dict[str, Any] = json.loads(line)
        except (trio.BrokenResourceError, trio.ClosedResourceError, _Gone, ValueError) as err:
            # It ended, or replied with something not ours: start another.
            await self._drop(child)
            raise _Gone(f"status {child.returncode}") from err
        except BaseException:
            await self._drop(child)  # cancelled mid-request: its reply would answer the next
            raise
        return reply

    async def _drop(self, child: Child) -> None:
        self._child = None
        with trio.CancelScope(shield=True):
            await _end(child)

    async def _running(self) -> Child:
        child = self._child
        if child is not None and child.returncode is None:
            return child
        if child is not None:  # it ended idle
            await self._drop(child)
        self._pending = b""
        # Started from the event loop's thread, so that it dies with the service.
        try:
            self._child = Child.start(
                [
                    *die_with_parent(), NICE, "-n", str(FFMPEG_NICE),
                    sys.executable, "-m", "refresher.media.measuring",
                    f"{self._idle_exit_s:g}",
                ],
                env=None,
            )  # fmt: skip
        except OSError as err:
            raise MeasureFailed(f"the measuring process could not start: {err}") from err
        self.started += 1
        LOGGER.info("measuring process %d started", self._child.pid)
        return self._child

    async def _line(self, child: Child) -> bytes:
        while b"\n" not in self._pending:
            if len(self._pending) > MAX_REPLY_BYTES:
                raise _Gone("its reply was too long")
            chunk = await child.stdout.receive_some(READ_BYTES)
            if not chunk:
                await child.wait()
                raise _Gone("no reply")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line


async def _end(child: Child) -> None:
    """Kill `child` if it runs, reap it and close its pipes."""
    if child.returncode is None:
        child.kill()
    await child.wait()
    await child.aclose()
