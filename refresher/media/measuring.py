"""Measuring in a process of its own, below the service: the event loop keeps its core.

Sampling a batch's outputs (PyAV decoding, PDQ, SSIM: `refresher.media.measure`) holds
the GIL and malloc arenas for a second or more. In the service's own threads that made
the event loop wait, and the API's p99 with it. So it runs in a child process,

    python -m refresher.media.measuring

which this module is (it imports neither trio nor the web app: its memory is what
measuring needs). The service starts it when first needed (`refresher.media.measurer`),
niced like FFmpeg (`FFMPEG_NICE`), in a process group of its own. It never outlives the
service: the kernel kills it when the service dies (`refresher.media.ffmpeg.Child`), and
where that cannot be asked for, the end of its stdin ends it. Its memory is its own,
counted with the FFmpeg children: between requests it hands back to the system what it
freed, and it exits after IDLE_EXIT_S without a request, or when its stdin closes.

One request at a time, one JSON line each way: the paths and the sampling plan in; the
hashes (hex) and SSIM out, or an error. The child samples on two threads, each reading
the source's samples itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from refresher.media import measure
from refresher.media.measure import MeasureFailed, Sampled, Sampling, Wanted

# An idle child ends after this long, giving its memory back.
IDLE_EXIT_S = 60.0


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


def request_line(
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


def sampled_of(data: list[Any]) -> Sampled:
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
    """The child: answer requests on stdin until EOF or IDLE_EXIT_S without one. Replies
    go to what stdout was at the start; a library that prints finds stdout on stderr,
    and its words never break a reply."""
    stdin = sys.stdin.buffer
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
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
        _give_back_memory()


def _give_back_memory() -> None:
    """Return the heap's free pages to the system between requests: glibc keeps what the
    decoders freed (at 1080x1920, 92 MiB resident after a batch, 65 MiB trimmed), and an
    idle child would hold its peak while FFmpeg makes the next batch beside it."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


if __name__ == "__main__":
    # What the child says on stderr is not read: errors come back as replies.
    _devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(_devnull, 2)
    serve(float(sys.argv[1]) if len(sys.argv) > 1 else IDLE_EXIT_S)
