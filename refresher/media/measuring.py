"""Measuring in a process of its own, below the service: the event loop keeps its core.

Sampling a batch's outputs (PyAV decoding, PDQ, SSIM: `refresher.media.measure`) holds
the GIL and malloc arenas for a second or more. In the service's own threads that made
the event loop wait, and the API's p99 with it. So it runs in a child process,

    python -m refresher.media.measuring

started when first needed, niced like FFmpeg (`FFMPEG_NICE`) in a session of its own.
It never outlives the service: the kernel kills it when the service dies
(`refresher.media.ffmpeg.Child`), and where that cannot be asked for, the end of its
stdin ends it. Its memory is its own, counted with the FFmpeg children, and given back
when it ends: it exits on its own after IDLE_EXIT_S without a request, or when the
service closes its stdin.

One request at a time, one JSON line each way: the paths and the sampling plan in; the
hashes (hex) and SSIM out, or an error. The child samples on two threads, each reading
the source's samples itself. A child that dies mid-request (the kernel's out-of-memory
killer, a crash in a decoder) is started again once for the same request; if that one
dies too, the batch is not measured (`MeasureFailed`: its variations are kept
unmeasured). A cancelled request kills the child; the next one starts another.
"""

from __future__ import annotations

import json
import os
import select
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import trio

from refresher.media import measure
from refresher.media.ffmpeg import FFMPEG_NICE, NICE, Child, die_with_parent
from refresher.media.measure import MeasureFailed, Sampled, Sampling, Wanted

# An idle child ends after this long, giving its memory back.
IDLE_EXIT_S = 60.0
# Starts of a child per request: a child that dies mid-request is started again once.
STARTS_PER_REQUEST = 2
# Closing: a child given EOF has this long to exit before it is killed.
EXIT_WAIT_S = 2.0
# A reply is a few KiB per variation; a longer line is not from our child.
MAX_REPLY_BYTES = 64 * 1024 * 1024
READ_BYTES = 65536


def sample_halves(
    reference: Path, plan: Sampling, wanted: Sequence[Wanted], source_still: Path | None
) -> tuple[Sampled, list[Sampled]]:
    """`measure.sample_batch` for `wanted` split in two, on two threads (blocking)."""
    middle = (len(wanted) + 1) // 2
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(
            measure.sample_batch, reference, plan, wanted[:middle], source_still=source_still
        )
        second = (
            pool.submit(measure.sample_batch, reference, plan, wanted[middle:], source_still=None)
            if wanted[middle:]
            else None
        )
        source, sampled = first.result()
        return source, sampled + (second.result()[1] if second is not None else [])


# --- the wire: one JSON object per line ----------------------------------------------------


def _request(
    reference: Path, plan: Sampling, wanted: Sequence[Wanted], source_still: Path | None
) -> bytes:
    return json.dumps({
        "reference": str(reference),
        "plan": [plan.period_s, plan.count, plan.width, plan.height],
        "wanted": [
            [str(w.path), str(w.still) if w.still else None, w.keyframes_only] for w in wanted
        ],
        "sourceStill": str(source_still) if source_still else None,
    }).encode() + b"\n"  # fmt: skip


def _sampled(data: list[Any]) -> Sampled:
    hashes, ssim = data
    rows = np.frombuffer(bytes.fromhex(hashes), dtype=np.uint8).reshape(-1, measure.HASH_BYTES)
    return Sampled(rows, ssim)


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    """What the child replies to one request."""
    period_s, count, width, height = request["plan"]
    wanted = [
        Wanted(Path(path), Path(still) if still else None, keyframes_only)
        for path, still, keyframes_only in request["wanted"]
    ]
    still = request["sourceStill"]
    try:
        source, sampled = sample_halves(
            Path(request["reference"]), Sampling(period_s, count, width, height), wanted,
            Path(still) if still else None,
        )  # fmt: skip
    except MeasureFailed as err:
        return {"error": str(err)}
    return {
        "source": [source.packed().hex(), source.ssim],
        "sampled": [[one.packed().hex(), one.ssim] for one in sampled],
    }


def serve(idle_exit_s: float = IDLE_EXIT_S) -> None:
    """The child: answer requests on stdin until EOF or IDLE_EXIT_S without one."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        ready, _, _ = select.select([stdin], [], [], idle_exit_s)
        if not ready:
            return
        line = stdin.readline()
        if not line:
            return
        try:
            reply = _answer(json.loads(line))
        except Exception as err:  # a bad request must not end the child for the next
            reply = {"error": f"the request could not be measured: {err!r}"}
        stdout.write(json.dumps(reply).encode() + b"\n")
        stdout.flush()


# --- the service's side ---------------------------------------------------------------------


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
        request = _request(reference, plan, wanted, source_still)
        async with self._lock:
            for start in range(1, STARTS_PER_REQUEST + 1):
                try:
                    reply = await self._ask(request)
                except _Gone as err:
                    if start == STARTS_PER_REQUEST:
                        raise MeasureFailed(f"the measuring process ended: {err}") from err
                    continue
                if "error" in reply:
                    raise MeasureFailed(str(reply["error"]))
                return _sampled(reply["source"]), [_sampled(one) for one in reply["sampled"]]
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
        except (trio.BrokenResourceError, trio.ClosedResourceError, _Gone) as err:
            self._child = None
            with trio.CancelScope(shield=True):
                await _end(child)
            raise _Gone(f"status {child.returncode}") from err
        except BaseException:
            self._child = None  # cancelled mid-request: its reply would answer the next
            with trio.CancelScope(shield=True):
                await _end(child)
            raise
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def _running(self) -> Child:
        child = self._child
        if child is not None and child.returncode is None:
            return child
        if child is not None:  # it ended idle
            await _end(child)
        self._pending = b""
        # Started from the event loop's thread, so that it dies with the service.
        self._child = Child.start(
            [
                *die_with_parent(), NICE, "-n", str(FFMPEG_NICE),
                sys.executable, "-m", "refresher.media.measuring", f"{self._idle_exit_s:g}",
            ],
            env=None,
        )  # fmt: skip
        self.started += 1
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


if __name__ == "__main__":
    # What the child says on stderr is not read: errors come back as replies.
    _devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(_devnull, 2)
    serve(float(sys.argv[1]) if len(sys.argv) > 1 else IDLE_EXIT_S)
