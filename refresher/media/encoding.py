"""Make variations with FFmpeg: how many per run, its arguments, progress, publishing.

Where a variation's time went in the original (10 s 720p H.264 clip, 2 cores, FFmpeg 9,
CPU seconds): decoding 1.0, `rotate` (bilinear) 2.4, x264 `ultrafast` 0.9, AAC 0.1. Here:

- The rotation is two shear passes built from `crop` and `vstack`/`hstack` (see
  `refresher.media.filtergraph`): 0.09 s. `v360` (flat to flat, `roll`, nearest) did the same
  rotation in 0.31 s, `rotate` without bilinear in 0.98 s. The frame is first padded
  with its own edge pixels, so the corners a rotation uncovers continue the picture
  instead of turning black as in the original; that gains more SSIM to the source than
  nearest-neighbour sampling loses against the original's bilinear.
- One FFmpeg decodes the source once for several variations, each with its own filter
  graph and single-threaded x264. FFmpeg runs every graph and encoder in a thread of its
  own, so one process keeps both cores busy. The audio is encoded once and muxed into
  every output by the `tee` muxer.

`bench/processing.py` compares the result with the original's method.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import trio

from refresher.media.effects import Effects
from refresher.media.ffmpeg import (
    PARTIAL_SUFFIX,
    MediaError,
    exit_failure,
    partial_path,
    remove_files,
    run_ffmpeg,
)
from refresher.media.filtergraph import audio_filter, tee_escape, variation_filter
from refresher.media.measure import Sampling, reference_filter
from refresher.media.probe import DEFAULT_LIMITS, MediaLimits, Probe
from refresher.storage.full import files_written

# One FFmpeg at a time: a process that decodes once and encodes up to
# MAX_VARIATIONS_PER_ENCODE outputs keeps both cores busy on its own. Two at once were
# slower (cache and memory bandwidth) and need twice the memory.
PARALLEL_ENCODES = 1
# Variations per FFmpeg, measured at 720p (wall s per variation): 1 → 1.60, 2 → 1.15,
# 5 → 0.75, 6 → 0.70. Each output adds ~30 MB at 720p, so the gain past 5 is not worth
# the memory; 5 is also the default number of variations per video.
MAX_VARIATIONS_PER_ENCODE = 5
# What one FFmpeg may use on a 512 MB machine, beside the service and the page cache.
# Peak RSS measured: 720p 84 MB for one output, +30 MB per output; 1080p 128 MB, +62 MB.
# The model below rounds those up: 40 MiB + 16 B/pixel + 32 B/pixel per output.
ENCODE_MEMORY_BUDGET_BYTES = 256 * 1024 * 1024
_MEMORY_FIXED_BYTES = 40 * 1024 * 1024
_MEMORY_BYTES_PER_PIXEL = 16
_MEMORY_BYTES_PER_PIXEL_PER_OUTPUT = 32

# x264: the cheapest preset plus its deblocking filter and a wider dead zone. Measured at
# 720p under the original's bitrate cap (which binds): +0.004 to +0.019 SSIM to the source
# for ~3 % more CPU; CABAC gave +0.005 for +9 %, adaptive quantisation +0.02 for +7-11 %,
# two B-frames +0.01 for +25 %. The bitrate hardly changes x264's CPU time, so the cap and
# buffer stay the original's (its -b:v is overridden by its -crf anyway).
X264_PRESET = "ultrafast"
X264_PARAMS = "deblock=1:deadzone-inter=28:deadzone-intra=20"
X264_CRF = 23
VIDEO_MAXRATE = "2500k"
VIDEO_BUFSIZE = "4000k"
AUDIO_BITRATE = "128k"

# Report progress when it moved this much (or at the end).
PROGRESS_STEP = 0.01
# The finished outputs are read back for their CRC-32 in chunks of this size.
CRC_CHUNK_BYTES = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Variation:
    """One output FFmpeg writes: where, and with which effects."""

    output: Path
    effects: Effects


@dataclasses.dataclass(frozen=True)
class EncodedOutput:
    """A finished output in its final place, with its size and CRC-32 as written."""

    path: Path
    size: int
    crc32: int


def variations_per_encode(width: int, height: int) -> int:
    """How many variations one FFmpeg should make at once for this frame size.

    As many as fit ENCODE_MEMORY_BUDGET_BYTES, from 1 to MAX_VARIATIONS_PER_ENCODE: 5 at
    720p, 2 at 1080p, 1 at 4K (where even one may exceed the budget: one is always allowed).
    """
    pixels = width * height
    room = ENCODE_MEMORY_BUDGET_BYTES - _MEMORY_FIXED_BYTES - _MEMORY_BYTES_PER_PIXEL * pixels
    fitting = room // max(1, _MEMORY_BYTES_PER_PIXEL_PER_OUTPUT * pixels)
    return max(1, min(MAX_VARIATIONS_PER_ENCODE, fitting))


def batch_sizes(count: int, per_encode: int) -> list[int]:
    """Split `count` variations into as few FFmpeg runs as `per_encode` allows, evenly
    (5 by 4 → [3, 2]: two balanced runs keep both cores busier than 4 then 1)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if per_encode < 1:
        raise ValueError(f"per_encode must be >= 1, got {per_encode}")
    runs = -(-count // per_encode)
    return [count // runs + (1 if index < count % runs else 0) for index in range(runs)]


def split_batches(indices: Sequence[int], per_encode: int) -> list[list[int]]:
    """Split variation `indices` into the runs `batch_sizes` plans, in order."""
    batches, start = [], 0
    for size in batch_sizes(len(indices), per_encode):
        batches.append(list(indices[start : start + size]))
        start += size
    return batches


@dataclasses.dataclass(frozen=True)
class Reference:
    """The source's samples for measuring (`refresher.media.measure`), written by the same
    FFmpeg: `path` gets them, and every output a keyframe at each sample's time."""

    path: Path
    plan: Sampling


def encode_args(
    source: Path,
    variations: Sequence[Variation],
    *,
    probed: Probe,
    threads: int | None = None,
    reference: Reference | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
) -> list[str]:
    """Return FFmpeg's arguments (without the executable) to write each variation.

    The source is decoded once; each variation gets the decoded frames through a filter
    graph and an x264 encoder of its own (H.264, yuv420p). The audio, if any, is encoded
    to AAC once and muxed into every output by the `tee` muxer, unless the variations
    change it (`standard`, `strong`: see `needs_audio_pass`). Outputs
    are MP4 with `+faststart` and none of the source's metadata, chapters or other
    streams. `threads` (FFMPEG_THREADS) goes to the decoder, each filter graph and each
    encoder; by default each runs on one thread, and FFmpeg runs them all side by side.
    With a `reference`, its samples are written too (Ut Video, lossless) and each output
    has a keyframe at each sample, so measuring decodes keyframes only. The source is read
    under `limits` (`source_args`): the stream that was probed, its decoders capped.
    """
    if not variations:
        raise ValueError("variations must not be empty")
    stage_threads = str(threads or 1)
    args = ["-hide_banner", "-loglevel", "error", "-nostats", "-progress", "pipe:1"]
    args += ["-threads", stage_threads, *source_args(source, limits)]
    args += ["-filter_threads", stage_threads]
    video = f"0:{probed.video_stream}"
    # One graph per output rather than `split` in one graph: a single graph thread feeds
    # every encoder in lockstep, and the encoders idle while it works (measured, five
    # outputs: 1.87 of 2 cores busy against 1.95, 6 % more wall time per variation).
    for index, variation in enumerate(variations):
        args += ["-map", video, f"-filter:v:{index}", variation_filter(variation.effects, probed)]
        if reference is not None:
            args += [f"-force_key_frames:v:{index}", reference.plan.keyframe_expression()]
    args += [
        "-c:v", "libx264", "-preset", X264_PRESET, "-x264-params", X264_PARAMS,
        "-crf", str(X264_CRF), "-maxrate", VIDEO_MAXRATE, "-bufsize", VIDEO_BUFSIZE,
        "-threads", stage_threads, "-pix_fmt", "yuv420p",
    ]  # fmt: skip
    shared_audio = probed.has_audio and not needs_audio_pass(variations, probed)
    if shared_audio:
        args += ["-map", "0:a:0", "-c:a", "aac", "-b:a", AUDIO_BITRATE]
    args += ["-map_metadata", "-1", "-map_chapters", "-1", "-fflags", "+bitexact"]
    # Each file takes its own video stream and the one audio stream, if shared; the
    # quotes keep the stream specifiers' `:` and `,` from ending the option.
    streams = "v:{index},a" if shared_audio else "v:{index}"
    slaves = [
        f"[select=\\'{streams.format(index=index)}\\':f=mp4:movflags=+faststart]"
        + tee_escape(str(variation.output))
        for index, variation in enumerate(variations)
    ]
    args += ["-f", "tee", "-y", "|".join(slaves)]
    if reference is not None:
        # Every sample as it is (no frame repeated to fill a constant rate).
        args += ["-map", video, "-filter:v", reference_filter(reference.plan)]
        args += ["-c:v", "utvideo", "-fps_mode", "passthrough", "-map_metadata", "-1"]
        args += ["-f", "matroska", "-y", str(reference.path)]
    return args


def source_args(source: Path, limits: MediaLimits) -> list[str]:
    """FFmpeg's input options and `-i` for an uploaded source: every decoder (those that
    probe the file's streams while opening it too, an attached picture's among them) gets
    the pixel budget, and no more than the longest accepted duration is read, whatever
    the file's headers say."""
    return [
        "-max_pixels", str(limits.max_pixels), "-t", f"{limits.max_duration_s:g}",
        "-i", str(source),
    ]  # fmt: skip


def needs_audio_pass(variations: Sequence[Variation], probed: Probe) -> bool:
    """Whether each variation's audio is made by a pass of its own (`audio_args`).

    Variations that change their sound also change their speed, each its own. One FFmpeg
    making several outputs with sound at different speeds stalled for good (FFmpeg 9,
    five outputs at 0.96 to 1.04: its scheduler holds back the outputs ahead in time,
    and the audio of one waits on another). Video alone at different speeds runs
    through, so the first pass makes the pictures and a short second pass per variation
    copies them beside its own audio: 0.25 CPU s a 12 s variation.
    """
    return probed.has_audio and any(audio_filter(v.effects) for v in variations)


def audio_args(
    video: Path,
    source: Path,
    effects: Effects,
    output: Path,
    limits: MediaLimits = DEFAULT_LIMITS,
) -> list[str]:
    """FFmpeg's arguments to copy `video` (pass one's output) beside `source`'s audio,
    changed by the variation's `effects`, into the MP4 `output`."""
    return [
        "-hide_banner", "-loglevel", "error", "-nostats", "-progress", "pipe:1",
        "-i", str(video), *source_args(source, limits),
        "-map", "0:v:0", "-c:v", "copy",
        "-map", "1:a:0", "-filter:a", audio_filter(effects) or "anull",
        "-c:a", "aac", "-b:a", AUDIO_BITRATE,
        "-map_metadata", "-1", "-map_chapters", "-1", "-fflags", "+bitexact",
        "-movflags", "+faststart", "-f", "mp4", "-y", str(output),
    ]  # fmt: skip


def video_path(output: Path) -> Path:
    """Where pass one writes a variation's pictures when its audio gets a pass of its own."""
    return output.with_name(output.name + ".video" + PARTIAL_SUFFIX)


async def encode_variations(
    ffmpeg: str,
    source: Path,
    variations: Sequence[Variation],
    *,
    probed: Probe,
    on_progress: Callable[[float], None],
    threads: int | None = None,
    on_started: Callable[[int], None] | None = None,
    env: Mapping[str, str] | None = None,
    reference: Reference | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
) -> list[EncodedOutput]:
    """Make `variations` of `source` with one FFmpeg (decoding once); return them in order.

    Each output is written under `partial_path(output)` (its folder made if need be) and
    renamed into place only when FFmpeg succeeded; its size and CRC-32 are read back from
    the finished file.
    `on_progress` gets 0..1 (steps of at least PROGRESS_STEP, then exactly 1.0 once);
    `on_started` gets FFmpeg's PID; `env` adds variables to FFmpeg's environment. Either
    lets the service find an FFmpeg that outlived a crash of its own. A `reference`
    file is left for the caller to measure with and remove (removed here on failure).

    On failure no partial file is left, and FFmpeg's exit status is raised as what
    `exit_failure` makes of it: `FFmpegInterrupted` (a signal from outside stopped it),
    `StorageFull` (no room for the outputs), else `EncodeFailed`. On cancellation FFmpeg
    is stopped (`q`; after QUIT_WAIT_S SIGTERM; after TERM_WAIT_S more SIGKILL) and
    reaped, no partial file is left, and then Cancelled propagates.
    """
    partials = [Variation(partial_path(v.output), v.effects) for v in variations]
    audio_pass = needs_audio_pass(variations, probed)
    firsts = (
        [Variation(video_path(v.output), v.effects) for v in variations] if audio_pass else partials
    )
    command = [
        ffmpeg,
        *encode_args(
            source, firsts, probed=probed, threads=threads, reference=reference, limits=limits
        ),
    ]
    leftovers = [p.output for p in partials] + [f.output for f in firsts]
    if reference is not None:
        leftovers.append(reference.path)
    reporter = _ProgressReporter(probed.duration_s, on_progress)
    done = False
    try:
        with files_written("there was no room to write the variations"):
            for folder in {variation.output.parent for variation in variations}:
                await trio.Path(folder).mkdir(parents=True, exist_ok=True)
        returncode, stderr_tail = await run_ffmpeg(
            command, on_out_time_us=reporter.out_time_us, on_started=on_started, env=env
        )
        if returncode != 0:
            raise exit_failure(returncode, stderr_tail, writing="the variations")
        if audio_pass:
            for first, partial in zip(firsts, partials, strict=True):
                returncode, stderr_tail = await run_ffmpeg(
                    [
                        ffmpeg,
                        *audio_args(first.output, source, first.effects, partial.output, limits),
                    ],
                    on_started=on_started, env=env,
                )  # fmt: skip
                if returncode != 0:
                    raise exit_failure(returncode, stderr_tail, writing="the variations")
            await trio.to_thread.run_sync(remove_files, [first.output for first in firsts])
        pairs = [(p.output, v.output) for p, v in zip(partials, variations, strict=True)]
        with files_written("there was no room to write the variations"):
            outputs = await trio.to_thread.run_sync(_publish, pairs)
        done = True
    except OSError as err:  # making the folder, or keeping the outputs
        raise MediaError(f"The variations could not be written: {err.strerror}.") from err
    finally:
        if not done:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(remove_files, leftovers)
    reporter.finish()
    return outputs


class _ProgressReporter:
    """Turns FFmpeg's clock into `on_progress` fractions of the probed duration."""

    def __init__(self, duration_s: float, on_progress: Callable[[float], None]) -> None:
        self._duration_us = duration_s * 1_000_000
        self._on_progress = on_progress
        self._reported = 0.0

    def out_time_us(self, value: int) -> None:
        if self._duration_us <= 0:
            return
        # Below 1.0 until the outputs are in place: FFmpeg's clock may pass the probed
        # duration, and "done" means renamed, not encoded.
        fraction = min(max(value / self._duration_us, 0.0), 1.0 - PROGRESS_STEP)
        if fraction >= self._reported + PROGRESS_STEP:
            self._reported = fraction
            self._on_progress(fraction)

    def finish(self) -> None:
        self._reported = 1.0
        self._on_progress(1.0)


def _publish(pairs: Sequence[tuple[Path, Path]]) -> list[EncodedOutput]:
    """Measure each finished (partial, final) file, then rename all into place (blocking).

    If a rename fails, the ones already done are removed: all the outputs or none.
    """
    measured = []
    for partial, final in pairs:
        crc = 0
        with partial.open("rb") as file:
            while chunk := file.read(CRC_CHUNK_BYTES):
                crc = zlib.crc32(chunk, crc)
        measured.append(EncodedOutput(path=final, size=partial.stat().st_size, crc32=crc))
    renamed: list[Path] = []
    try:
        for partial, final in pairs:
            os.replace(partial, final)
            renamed.append(final)
    except OSError:
        remove_files(renamed)
        raise
    return measured
