"""Probe uploads with PyAV, and make variations and thumbnails with FFmpeg.

Where the time goes (10 s 720p H.264 clip, 2 cores, FFmpeg 9; CPU seconds per variation):
decoding 0.94, the original's `rotate` (bilinear) 2.4, x264 `ultrafast` 0.7, AAC 0.1.
So this module

- rotates with `v360` (flat in, flat out, `roll`): the same rigid rotation as `rotate`,
  but from a table computed once, nearest-neighbour with AVX2 gathers: 0.37 s instead
  of 2.4 s (bilinear `v360` is 1.2 s: its tables are 24 bytes a pixel, memory-bound).
  The source is padded with its own edge pixels first, so the corners a rotation uncovers
  repeat the picture's edge instead of turning black (the original's SSIM lost more to
  its black corners than ours loses to nearest-neighbour sampling);
- decodes once for several variations (`split`), one x264 thread each: FFmpeg runs each
  encoder in its own thread, so one process keeps both cores busy without the
  synchronisation of sliced or frame threads.

`bench/processing.py` measures the result against the original's method.
"""

from __future__ import annotations

import dataclasses
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
# MAX_VARIATIONS_PER_ENCODE outputs keeps both cores busy on its own (FFmpeg runs the
# decoder, the filter graph and every encoder in threads of their own). Two at once were
# slower (cache and memory bandwidth) and need twice the memory.
PARALLEL_ENCODES = 1
# Variations per FFmpeg, measured at 720p (wall s per variation): 1 → 1.50, 2 → 1.14,
# 4 → 1.04, 5 → 0.97, 6 → 0.97. Five is also the default variations per video.
MAX_VARIATIONS_PER_ENCODE = 5
# What one FFmpeg may use on a 512 MB machine, beside the service and the page cache.
# Peak RSS measured: 720p 83 MB for one output, +29 MB per output; 1080p 128 MB, +55 MB.
# The model below rounds those up: 40 MiB + 16 B/pixel + 32 B/pixel per output.
ENCODE_MEMORY_BUDGET_BYTES = 256 * 1024 * 1024
_MEMORY_FIXED_BYTES = 40 * 1024 * 1024
_MEMORY_BYTES_PER_PIXEL = 16
_MEMORY_BYTES_PER_PIXEL_PER_OUTPUT = 32

# x264: the cheapest preset, plus its deblocking filter and a wider dead zone (measured,
# 720p at the original's bitrate cap: +0.019 SSIM to the source for +3 % CPU; CABAC gave
# +0.005 for +12 %, adaptive quantisation +0.016 for +7 %, 2 B-frames +0.010 for +25 %).
# The bitrate cap is the original's, so a variation is no larger than before.
X264_PRESET = "ultrafast"
X264_PARAMS = "deblock=1:deadzone-inter=28:deadzone-intra=20"
X264_CRF = 23
VIDEO_MAXRATE = "2500k"
VIDEO_BUFSIZE = "5000k"
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
    """FFmpeg did not make the variation; the message ends with FFmpeg's last words."""

    def __init__(self, returncode: int | None, stderr_tail: str) -> None:
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        status = "could not start" if returncode is None else f"exited with status {returncode}"
        super().__init__(f"FFmpeg {status}: {stderr_tail or 'no error output'}")


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

    Raise `NotAVideo` for anything but a whole MP4/MOV with a decodable video stream.
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
        if not 0 < duration_s <= MAX_DURATION_S:
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


def _variation_filter(variation: Variation, probed: Probe, margin: int) -> str:
    """The filter graph of one variation: pad with edge pixels, rotate, adjust colour."""
    effects = variation.effects
    out_w, out_h = probed.width - probed.width % 2, probed.height - probed.height % 2
    padded_w, padded_h = probed.width + 2 * margin, probed.height + 2 * margin

    def fov_deg(extent: float) -> str:
        # Flat projections with one pixel pitch in and out: a 90° output field spans
        # out_w pixels, so `extent` pixels span 2·atan(extent / out_w).
        return f"{2 * math.degrees(math.atan(extent / out_w)):.9f}"

    # v360's roll turns counter-clockwise; Effects (like FFmpeg's rotate) clockwise.
    roll_deg = -math.degrees(effects.rotation_rad)
    return (
        f"format=yuv420p,pad=iw+{2 * margin}:ih+{2 * margin}:{margin}:{margin},"
        f"fillborders=left={margin}:right={margin}:top={margin}:bottom={margin}:mode=smear,"
        "v360=input=flat:output=flat:interp=near"
        f":ih_fov={fov_deg(padded_w)}:iv_fov={fov_deg(padded_h)}"
        f":h_fov=90:v_fov={fov_deg(out_h)}:w={out_w}:h={out_h}"
        f":roll={roll_deg:.{DECIMALS['rotation_rad'] + 2}f},"
        f"eq=brightness={effects.brightness:.{DECIMALS['brightness']}f}"
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
    margin = _rotation_margin(probed.width, probed.height)
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
            _variation_filter(variation, probed, margin),
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
    `on_started` gets FFmpeg's PID, to record so a crash of the service can reap it.

    On failure raise `EncodeFailed`. On cancellation FFmpeg is stopped (`q`, then
    SIGTERM, then SIGKILL) and reaped, and no partial file is left.
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
        outputs = [
            await trio.to_thread.run_sync(_measure, partial.output, variation.output)
            for partial, variation in zip(partials, variations, strict=True)
        ]
        for partial, output in zip(partials, outputs, strict=True):
            os.replace(partial.output, output.path)
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


async def make_thumbnail(ffmpeg: str, source: Path, output: Path, *, duration_s: float) -> bool:
    """Write a WebP still of `source`, THUMBNAIL_WIDTH wide, to `output`; False on failure.

    Best effort: a thumbnail is never worth failing a job for. Cancellation still
    propagates (after FFmpeg is stopped and the partial file removed).
    """
    partial = partial_path(output)
    # Input seeking lands on the nearest frame before the time; 10 % in is always
    # inside the clip, unlike a fixed offset (the original's -ss 2 gave 0 bytes < 2 s).
    at_s = max(0.0, duration_s * THUMBNAIL_AT)
    command = [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-nostats",
        "-ss", f"{at_s:.3f}", "-i", str(source),
        "-map", "0:v:0", "-frames:v", "1", "-vf", f"scale={THUMBNAIL_WIDTH}:-2",
        "-map_metadata", "-1", "-fflags", "+bitexact",
        "-c:v", "libwebp", "-quality", "75", "-f", "webp", "-y", str(partial),
    ]  # fmt: skip
    done = False
    try:
        with trio.move_on_after(THUMBNAIL_TIMEOUT_S):
            returncode, stderr_tail = await _run_ffmpeg(command)
            size = (await trio.Path(partial).stat()).st_size if returncode == 0 else 0
            if size > 0:
                os.replace(partial, output)
                done = True
            else:
                LOGGER.warning("no thumbnail for %s: %s", source.name, stderr_tail or "empty")
    except OSError as err:
        LOGGER.warning("no thumbnail for %s: %s", source.name, err)
    finally:
        if not done:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_remove_all, [partial])
    return done


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
        raise EncodeFailed(None, str(err)) from err
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


def _measure(partial: Path, final: Path) -> EncodedOutput:
    crc = 0
    with partial.open("rb") as file:
        while chunk := file.read(CRC_CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
    return EncodedOutput(path=final, size=partial.stat().st_size, crc32=crc)


def _remove_all(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
