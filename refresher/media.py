"""Probe uploads with PyAV; make variations and thumbnails with FFmpeg.

Where a variation's time went in the original (10 s 720p H.264 clip, 2 cores, FFmpeg 9,
CPU seconds): decoding 1.0, `rotate` (bilinear) 2.4, x264 `ultrafast` 0.9, AAC 0.1. Here:

- The rotation is two shear passes built from `crop` and `vstack`/`hstack` (see
  `_rotation_filter`): 0.09 s. `v360` (flat to flat, `roll`, nearest) did the same
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
import itertools
import logging
import math
import os
import shutil
import subprocess
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import av
import trio

from refresher.effects import DECIMALS, MAX_ROTATION_RAD, Effects

LOGGER = logging.getLogger(__name__)

# PyAV's name for the one demuxer that reads both MP4 and QuickTime MOV.
MP4_MOV_FORMAT = "mov,mp4,m4a,3gp,3g2,mj2"
# An upload longer than this is not an ad creative; refuse it before it occupies FFmpeg.
MAX_DURATION_S = 3 * 3600.0

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

# FFmpeg runs below the web server and the database threads.
FFMPEG_NICE = 10
# Cancellation: after `q` FFmpeg finishes its trailers; give it this long, then SIGTERM,
# then this long again, then SIGKILL.
QUIT_WAIT_S = 2.0
TERM_WAIT_S = 1.0
# The end of FFmpeg's stderr kept for an error message; the rest is dropped as it comes.
STDERR_TAIL_BYTES = 4096
STDERR_TAIL_LINES = 8
# Report progress when it moved this much (or at the end).
PROGRESS_STEP = 0.01
PARTIAL_SUFFIX = ".part"
CRC_CHUNK_BYTES = 1024 * 1024

THUMBNAIL_WIDTH = 128
# Where the thumbnail frame comes from: 10 % in, past any fade from black.
THUMBNAIL_AT = 0.10
THUMBNAIL_TIMEOUT_S = 30.0


class MediaError(Exception):
    """FFmpeg or a media file cannot do what was asked."""


class NotAVideo(MediaError):
    """An upload the service cannot use; `reason` completes "The file ..." for people."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class EncodeFailed(MediaError):
    """FFmpeg did not make the variations; the message says why, in FFmpeg's last words
    when it ran (`returncode` is then its exit status, else None)."""

    def __init__(self, returncode: int | None, detail: str) -> None:
        self.returncode = returncode
        self.detail = detail
        if returncode is None:
            super().__init__(detail)
        else:
            super().__init__(f"FFmpeg exited with status {returncode}: {detail or 'no output'}")


@dataclasses.dataclass(frozen=True)
class Probe:
    """What the service needs to know about a source; sizes as displayed (rotation applied)."""

    duration_s: float
    width: int
    height: int
    fps: float
    has_audio: bool
    video_codec: str


@dataclasses.dataclass(frozen=True)
class Variation:
    """One output FFmpeg writes: where, and with which effects."""

    output: Path
    effects: Effects


@dataclasses.dataclass(frozen=True)
class EncodedOutput:
    path: Path
    size: int
    crc32: int


def find_ffmpeg(configured: str | None) -> str:
    """Return the FFmpeg to run: `configured` (a path or a name on PATH), else PATH, else
    the binary bundled with `imageio-ffmpeg`."""
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise MediaError(f"FFMPEG {configured!r} is not an executable file")
        return found
    found = shutil.which("ffmpeg")
    if found is not None:
        return found
    import imageio_ffmpeg  # type: ignore[import-untyped]

    try:
        bundled: str = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as err:
        raise MediaError(f"no FFmpeg on PATH and none bundled: {err}") from err
    return bundled


# --- probing -----------------------------------------------------------------------------

# ISO base media (MP4/MOV) files start with one of these boxes: a file that does but
# cannot be opened was cut short (its index comes last) rather than something else.
_ISO_BOXES = {b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


def probe(path: Path) -> Probe:
    """Read `path`'s streams and decode its first frame (blocking: call from a thread).

    Raise `NotAVideo` for anything but a whole MP4/MOV with a decodable video stream
    (and OSError if the file cannot be read at all).
    """
    size = path.stat().st_size
    if size == 0:
        raise NotAVideo("is empty")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as err:
        with path.open("rb") as file:
            head = file.read(8)
        if head[4:8] in _ISO_BOXES:
            raise NotAVideo("is truncated or damaged") from err
        raise NotAVideo("is not a video file") from err
    with container:
        if container.format.name != MP4_MOV_FORMAT:
            raise NotAVideo("is not an MP4 or MOV video (only MP4 and MOV are accepted)")
        videos = [
            stream
            for stream in container.streams.video
            if not stream.disposition & av.stream.Disposition.attached_pic
        ]
        if not videos:
            raise NotAVideo("has no video stream")
        video = videos[0]
        # The index says where every sample lies; one past the end of the file means the
        # file was cut short (an interrupted copy or upload of a file whose index is first).
        for stream in container.streams:
            if any(entry.pos + entry.size > size for entry in stream.index_entries):
                raise NotAVideo("is truncated or damaged")
        duration_s = _duration_s(container, video)
        if duration_s > MAX_DURATION_S:
            raise NotAVideo(f"is longer than {MAX_DURATION_S / 3600:g} hours")
        if duration_s <= 0:
            raise NotAVideo("is truncated or damaged")
        try:
            frame = next(container.decode(video), None)
        except av.FFmpegError as err:
            raise NotAVideo("is truncated or damaged") from err
        if frame is None:
            raise NotAVideo("is truncated or damaged")
        width, height = frame.width, frame.height
        if frame.rotation % 180:
            width, height = height, width
        rate = video.average_rate or video.guessed_rate
        return Probe(
            duration_s=duration_s,
            width=width,
            height=height,
            fps=float(rate) if rate else 0.0,
            has_audio=bool(container.streams.audio),
            video_codec=video.codec_context.name,
        )


def _duration_s(container: av.container.InputContainer, video: av.VideoStream) -> float:
    if video.duration is not None and video.time_base is not None:
        return float(video.duration * video.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


# --- encoding ----------------------------------------------------------------------------


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


def _rotation_margin(width: int, height: int) -> int:
    """Pixels to pad on each side so that the largest rotation stays inside the padding."""
    reach = math.hypot(width, height) / 2 * math.sin(MAX_ROTATION_RAD)
    margin = math.ceil(reach) + 2
    return margin + margin % 2  # even, for 4:2:0 chroma


def _bands(length: int, shift: Callable[[int], int]) -> list[tuple[int, int, int]]:
    """Split 0..length-1 into runs of one `shift` each: (start, size, shift) triples.

    Run boundaries are rounded to even positions, so every run but the last has a whole
    number of 4:2:0 chroma samples; the pixel beside a moved boundary is off by one.
    """
    boundaries = [0]
    for position in range(1, length):
        if shift(position) != shift(position - 1):
            even = position + position % 2
            if boundaries[-1] < even < length:
                boundaries.append(even)
    boundaries.append(length)
    return [
        (start, end - start, shift((start + end) // 2))
        for start, end in itertools.pairwise(boundaries)
    ]


def _stack(pieces: list[str], direction: str) -> str:
    """Filter graph text that crops each piece out of one input and stacks them."""
    if len(pieces) == 1:
        return pieces[0]
    fan_out = f"split={len(pieces)}" + "".join(f"[{direction}{i}]" for i in range(len(pieces)))
    crops = [f"[{direction}{i}]{piece}[{direction}p{i}]" for i, piece in enumerate(pieces)]
    gathered = "".join(f"[{direction}p{i}]" for i in range(len(pieces)))
    return ";".join([fan_out, *crops, f"{gathered}{direction}stack=inputs={len(pieces)}"])


def _rotation_filter(probed: Probe, margin: int, rotation_rad: float) -> str:
    """Rotate the padded frame clockwise by `rotation_rad`, in two shear passes.

    Pass one shifts each row sideways by round(a·y), pass two each column up or down by
    round(a·x), with a = sin(rotation) and x, y from the centre: together the rotation
    matrix but for terms in a² (at most 5e-5: 0.04 px at a 720p corner, 0.11 px at 4K),
    sampled nearest-neighbour like `v360`'s `interp=near`. Each pass is `crop`s of one
    frame (no copying) and one `vstack`/`hstack` (one copy): 0.09 CPU s a 720p variation
    against 0.31 s for `v360` and 2.4 s for the original's `rotate`.
    """
    out_w, out_h = probed.width - probed.width % 2, probed.height - probed.height % 2
    padded_h = probed.height + 2 * margin
    a = math.sin(rotation_rad)

    def row_shift(row: int) -> int:
        return math.floor(a * (row + 0.5 - padded_h / 2) + 0.5)

    def column_shift(column: int) -> int:
        return math.floor(a * (column + 0.5 - out_w / 2) + 0.5)

    rows = [
        f"crop=w={out_w}:h={size}:x={margin + shift}:y={start}:exact=1"
        for start, size, shift in _bands(padded_h, row_shift)
    ]
    columns = [
        f"crop=w={size}:h={out_h}:x={start}:y={margin - shift}:exact=1"
        for start, size, shift in _bands(out_w, column_shift)
    ]
    return _stack(rows, "v") + "," + _stack(columns, "h")


def _variation_filter(variation: Variation, probed: Probe) -> str:
    """The filter graph of one variation: pad with edge pixels, rotate, adjust colour."""
    effects = variation.effects
    margin = _rotation_margin(probed.width, probed.height)
    return (
        f"format=yuv420p,pad=iw+{2 * margin}:ih+{2 * margin}:{margin}:{margin},"
        f"fillborders=left={margin}:right={margin}:top={margin}:bottom={margin}:mode=smear,"
        + _rotation_filter(probed, margin, effects.rotation_rad)
        + f",eq=brightness={effects.brightness:.{DECIMALS['brightness']}f}"
        f":contrast={effects.contrast:.{DECIMALS['contrast']}f}"
        f":saturation={effects.saturation:.{DECIMALS['saturation']}f},"
        "format=yuv420p"
    )


def encode_args(
    source: Path, variations: Sequence[Variation], *, probed: Probe, threads: int | None = None
) -> list[str]:
    """Return FFmpeg's arguments (without the executable) to write each variation.

    The source is decoded once; each variation gets the decoded frames through a filter
    graph and an x264 encoder of its own (H.264, yuv420p). The audio, if any, is encoded
    to AAC once and muxed into every output by the `tee` muxer. Outputs are MP4 with
    `+faststart` and none of the source's metadata, chapters or other streams.
    `threads` (FFMPEG_THREADS) goes to the decoder, each filter graph and each encoder;
    by default each runs on one thread, and FFmpeg runs them all side by side.
    """
    if not variations:
        raise ValueError("variations must not be empty")
    stage_threads = str(threads or 1)
    args = ["-hide_banner", "-loglevel", "error", "-nostats", "-progress", "pipe:1"]
    args += ["-threads", stage_threads, "-i", str(source), "-filter_threads", stage_threads]
    # One graph per output rather than `split` in one graph: a single graph thread feeds
    # every encoder in lockstep, and the encoders idle while it works (measured, five
    # outputs: 1.87 of 2 cores busy against 1.95, 6 % more wall time per variation).
    for index, variation in enumerate(variations):
        args += [
            "-map",
            "0:v:0",
            f"-filter:v:{index}",
            _variation_filter(variation, probed),
        ]
    args += [
        "-c:v", "libx264", "-preset", X264_PRESET, "-x264-params", X264_PARAMS,
        "-crf", str(X264_CRF), "-maxrate", VIDEO_MAXRATE, "-bufsize", VIDEO_BUFSIZE,
        "-threads", stage_threads, "-pix_fmt", "yuv420p",
    ]  # fmt: skip
    if probed.has_audio:
        args += ["-map", "0:a:0", "-c:a", "aac", "-b:a", AUDIO_BITRATE]
    args += ["-map_metadata", "-1", "-map_chapters", "-1", "-fflags", "+bitexact"]
    # Each file takes its own video stream and the one audio stream; the quotes keep the
    # stream specifiers' `:` and `,` from ending the option.
    streams = "v:{index},a" if probed.has_audio else "v:{index}"
    slaves = [
        f"[select=\\'{streams.format(index=index)}\\':f=mp4:movflags=+faststart]"
        + _tee_escape(str(variation.output))
        for index, variation in enumerate(variations)
    ]
    return [*args, "-f", "tee", "-y", "|".join(slaves)]


def _tee_escape(path: str) -> str:
    """Escape a file name for the `tee` muxer's list (its `|`, quotes and backslashes)."""
    return "".join("\\" + char if char in "\\'|" else char for char in path)


def partial_path(output: Path) -> Path:
    """Where FFmpeg writes `output` until it is complete (a crash may leave it behind)."""
    return output.with_name(output.name + PARTIAL_SUFFIX)


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
) -> list[EncodedOutput]:
    """Make `variations` of `source` with one FFmpeg (decoding once); return them in order.

    Each output is written under `partial_path(output)` and renamed into place only when
    FFmpeg succeeded; its size and CRC-32 are read back from the finished file.
    `on_progress` gets 0..1 (steps of at least PROGRESS_STEP, then exactly 1.0 once);
    `on_started` gets FFmpeg's PID; `env` adds variables to FFmpeg's environment. Either
    lets the service find an FFmpeg that outlived a crash of its own.

    On failure raise `EncodeFailed`. On cancellation FFmpeg is stopped (`q`; after
    QUIT_WAIT_S SIGTERM; after TERM_WAIT_S more SIGKILL) and reaped, no partial file is
    left, and then Cancelled propagates.
    """
    partials = [Variation(partial_path(v.output), v.effects) for v in variations]
    command = [ffmpeg, *encode_args(source, partials, probed=probed, threads=threads)]
    reporter = _ProgressReporter(probed.duration_s, on_progress)
    done = False
    try:
        returncode, stderr_tail = await _run_ffmpeg(
            command, on_out_time_us=reporter.out_time_us, on_started=on_started, env=env
        )
        if returncode != 0:
            raise EncodeFailed(returncode, stderr_tail)
        pairs = [(p.output, v.output) for p, v in zip(partials, variations, strict=True)]
        try:
            outputs = await trio.to_thread.run_sync(_publish, pairs)
        except OSError as err:
            raise EncodeFailed(None, f"FFmpeg's output could not be kept: {err}") from err
        done = True
    finally:
        if not done:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_remove_all, [p.output for p in partials])
    reporter.finish()
    return outputs


async def encode_variation(
    ffmpeg: str,
    source: Path,
    output: Path,
    effects: Effects,
    *,
    duration_s: float,
    on_progress: Callable[[float], None],
    threads: int | None = None,
    on_started: Callable[[int], None] | None = None,
    env: Mapping[str, str] | None = None,
    probed: Probe | None = None,
) -> EncodedOutput:
    """Make one variation of `source` at `output`; see `encode_variations`.

    Without `probed` the source is probed first (a source that cannot be read raises
    `EncodeFailed` like any failed encode). Prefer `encode_variations` for several
    variations of one source: it decodes once for all of them.
    """
    if probed is None:
        try:
            probed = await trio.to_thread.run_sync(probe, source)
        except (OSError, MediaError) as err:
            raise EncodeFailed(None, f"cannot read the source: {err}") from err
    [encoded] = await encode_variations(
        ffmpeg,
        source,
        [Variation(output, effects)],
        probed=dataclasses.replace(probed, duration_s=duration_s),
        on_progress=on_progress,
        threads=threads,
        on_started=on_started,
        env=env,
    )
    return encoded


async def make_thumbnail(
    ffmpeg: str,
    source: Path,
    output: Path,
    *,
    duration_s: float,
    env: Mapping[str, str] | None = None,
) -> bool:
    """Write a WebP still of `source`, THUMBNAIL_WIDTH wide, to `output`; False on failure.

    Best effort: a thumbnail is never worth failing a job for, so every failure is
    logged and answered with False. Cancellation still propagates (after FFmpeg is
    stopped and the partial file removed).
    """
    partial = partial_path(output)
    # 10 % in, where a fade from black is over; input seeking never passes the end of
    # the clip then (the original's fixed -ss 2 gave 0 bytes for clips under 2 s). If
    # the duration was wrong and no frame came, the first frame will do.
    times_s = [duration_s * THUMBNAIL_AT] if duration_s > 0 else []
    problem = "no frame"
    try:
        for at_s in [*times_s, 0.0]:
            command = [
                ffmpeg, "-hide_banner", "-loglevel", "error", "-nostats",
                "-ss", f"{at_s:.3f}", "-i", str(source), "-map", "0:v:0", "-frames:v", "1",
                "-vf", f"scale={THUMBNAIL_WIDTH}:-2", "-map_metadata", "-1",
                "-fflags", "+bitexact", "-c:v", "libwebp", "-quality", "75",
                "-f", "webp", "-y", str(partial),
            ]  # fmt: skip
            with trio.move_on_after(THUMBNAIL_TIMEOUT_S) as deadline:
                returncode, stderr_tail = await _run_ffmpeg(command, env=env)
            if deadline.cancelled_caught:
                problem = f"FFmpeg took longer than {THUMBNAIL_TIMEOUT_S:g} s"
                break
            if returncode != 0:
                problem = stderr_tail or f"FFmpeg exited with status {returncode}"
                break
            if await trio.to_thread.run_sync(_publish_if_not_empty, partial, output):
                return True
    except (OSError, MediaError) as err:
        problem = str(err)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_remove_all, [partial])
    LOGGER.warning("no thumbnail of %s: %s", source.name, problem)
    return False


# --- running FFmpeg ----------------------------------------------------------------------


class _ProgressReporter:
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


def _lower_priority() -> None:  # runs in the child between fork and exec
    os.nice(FFMPEG_NICE)


async def _run_ffmpeg(
    command: list[str],
    *,
    on_out_time_us: Callable[[int], None] | None = None,
    on_started: Callable[[int], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, str]:
    """Run FFmpeg to the end; return its exit status and the tail of its stderr.

    On cancellation stop it (see `_stop`) and reap it before Cancelled propagates.
    """
    try:
        process = await trio.lowlevel.open_process(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_lower_priority,
            env={**os.environ, **env} if env else None,
        )
    except OSError as err:
        raise EncodeFailed(None, f"FFmpeg could not start: {err}") from err
    tail = bytearray()
    try:
        if on_started is not None:
            on_started(process.pid)
        assert process.stdout is not None
        assert process.stderr is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_progress, process.stdout, on_out_time_us)
            nursery.start_soon(_read_tail, process.stderr, tail)
            await process.wait()
    except BaseException:
        with trio.CancelScope(shield=True):
            await _stop(process)
        raise
    finally:
        with trio.CancelScope(shield=True):
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    await pipe.aclose()
    lines = bytes(tail).decode("utf-8", "replace").strip().splitlines()
    assert process.returncode is not None
    return process.returncode, " | ".join(lines[-STDERR_TAIL_LINES:])


async def _stop(process: trio.Process) -> None:
    """Ask FFmpeg to quit, then insist: `q` on stdin, SIGTERM, SIGKILL; reap it."""
    if process.returncode is not None:
        return
    with trio.move_on_after(QUIT_WAIT_S):
        try:
            assert process.stdin is not None
            await process.stdin.send_all(b"q")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # FFmpeg closed its stdin: it is on its way out already
        await process.wait()
    if process.returncode is None:
        process.terminate()
        with trio.move_on_after(TERM_WAIT_S):
            await process.wait()
    if process.returncode is None:
        LOGGER.warning("FFmpeg %d ignored q and SIGTERM; killing it", process.pid)
        process.kill()
        await process.wait()


async def _read_progress(
    stream: trio.abc.ReceiveStream, on_out_time_us: Callable[[int], None] | None
) -> None:
    pending = b""
    async for chunk in stream:
        *lines, pending = (pending + chunk).split(b"\n")
        pending = pending[-256:]  # a progress line is short; never grow without bound
        for line in lines:
            key, _, value = line.strip().partition(b"=")
            if key == b"out_time_us" and on_out_time_us is not None and value.isdigit():
                on_out_time_us(int(value))


async def _read_tail(stream: trio.abc.ReceiveStream, tail: bytearray) -> None:
    async for chunk in stream:
        tail += chunk
        del tail[:-STDERR_TAIL_BYTES]


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
        _remove_all(renamed)
        raise
    return measured


def _publish_if_not_empty(partial: Path, final: Path) -> bool:
    if not partial.exists() or partial.stat().st_size == 0:
        return False
    os.replace(partial, final)
    return True


def _remove_all(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
