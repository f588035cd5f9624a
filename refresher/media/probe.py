"""Probe uploads with PyAV: is it a whole MP4/MOV video, and what FFmpeg needs to know.

The bytes decide, not what a header claims (DESIGN §5, invariant 9):

- Frame sizes are checked as the file's boxes declare them before anything decodes
  (`refresher.media.boxes`), and every decoder runs under a pixel budget (`max_pixels`), so a
  frame larger than declared fails to decode instead of filling memory.
- The video that is checked is the one encoded: the first video stream that is not an
  attached picture (cover art), by its index, which FFmpeg then maps.
- The duration is the stream's own, from its sample table (or its packets), never the
  container's or the track's header; FFmpeg is capped at the limit as well (`-t`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import av

from refresher.media.boxes import BoxesDamaged, declared_frames
from refresher.media.ffmpeg import MediaError
from refresher.timestamps import duration_words

# PyAV's name for the one demuxer that reads both MP4 and QuickTime MOV.
MP4_MOV_FORMAT = "mov,mp4,m4a,3gp,3g2,mj2"
# What people pick such videos by, for a file chooser's `accept`. The probe, not the name
# or the type a browser declares, decides what is taken.
ACCEPTED_TYPES = ("video/mp4", "video/quicktime")
ACCEPTED_EXTENSIONS = (".mp4", ".mov")
# ISO base media (MP4/MOV) files start with one of these boxes: a file that does but
# cannot be opened was cut short (its index comes last) rather than something else.
_ISO_BOXES = {b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
# Probing a 4K H.264 clip takes ~60 MiB beside the service (measured: the first frame
# decoded on the decoder's threads). Two at once stay well inside a 512 MB machine; more
# uploads checked at once wait their turn.
PROBES_AT_ONCE = 2
# Between a video's width and height, as people write sizes ("3840 by 2160").
BY = "\N{MULTIPLICATION SIGN}"


class NotAVideo(MediaError):
    """An upload the service cannot use; `reason` completes "The file ..." for people."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class FrameTooLarge(NotAVideo):
    """A video whose frames break the limits, as declared or as decoded."""

    def __init__(self, width: int, height: int, limits: MediaLimits) -> None:
        self.width = width
        self.height = height
        super().__init__(f"is {width}{BY}{height}; {limits.largest_words()}")


class TooLong(NotAVideo):
    """A video (or its sound) that lasts longer than the limit, by its samples."""

    def __init__(self, duration_s: float, limits: MediaLimits) -> None:
        self.duration_s = duration_s
        super().__init__(limits.too_long_words(duration_s))


@dataclasses.dataclass(frozen=True)
class MediaLimits:
    """The largest frame and the longest video the service takes (`MAX_LONG_SIDE_PX`,
    `MAX_SHORT_SIDE_PX`, `MAX_DURATION_S`): what decoders and FFmpeg are held to."""

    max_long_side_px: int = 3840
    max_short_side_px: int = 2160
    max_duration_s: float = 3 * 3600.0

    @property
    def max_pixels(self) -> int:
        """The pixel budget of one frame, for every decoder of an upload."""
        return self.max_long_side_px * self.max_short_side_px

    def frame_fits(self, width: int, height: int) -> bool:
        long_side, short_side = max(width, height), min(width, height)
        return long_side <= self.max_long_side_px and short_side <= self.max_short_side_px

    def largest_words(self) -> str:
        """ "the largest accepted is 3840 by 2160 or 2160 by 3840", in signs."""
        largest = f"{self.max_long_side_px}{BY}{self.max_short_side_px}"
        if self.max_long_side_px != self.max_short_side_px:
            largest += f" or {self.max_short_side_px}{BY}{self.max_long_side_px}"
        return f"the largest accepted is {largest}"

    def too_long_words(self, duration_s: float) -> str:
        """ "is 4 hours long; the longest accepted is 3 hours", completing "The file ..."."""
        length, longest = duration_words(duration_s), duration_words(self.max_duration_s)
        if length == longest:
            return f"is longer than {longest}, the longest accepted"
        return f"is {length} long; the longest accepted is {longest}"


@dataclasses.dataclass(frozen=True)
class Probe:
    """What the service needs to know about a source; sizes as displayed (rotation applied)."""

    duration_s: float
    width: int
    height: int
    fps: float
    has_audio: bool
    video_codec: str
    # The index of the video stream that was checked, among all the file's streams: the
    # one to encode (`-map 0:<index>`), never an attached picture.
    video_stream: int = 0


# The limits of a service left at its defaults.
DEFAULT_LIMITS = MediaLimits()


def probe(path: Path, limits: MediaLimits = DEFAULT_LIMITS) -> Probe:
    """Read `path`'s streams and decode its first frame (blocking: call from a thread).

    Raise `FrameTooLarge` for a video track whose frames break `limits` (as declared,
    before any decode, or as decoded), `TooLong` when the video or its sound lasts longer
    than the limit, `NotAVideo` for anything but a whole MP4/MOV with a decodable video
    stream (and OSError if the file cannot be read at all). `duration_s` is the video's.
    """
    size = path.stat().st_size
    if size == 0:
        raise NotAVideo("is empty")
    with path.open("rb") as file:
        head = file.read(8)
        if head[4:8] in _ISO_BOXES:
            try:
                declared = declared_frames(file, size)
            except BoxesDamaged as err:
                raise NotAVideo("is truncated or damaged") from err
            for declared_frame in declared:
                if not limits.frame_fits(declared_frame.width, declared_frame.height):
                    raise FrameTooLarge(declared_frame.width, declared_frame.height, limits)
    budget = {"max_pixels": str(limits.max_pixels)}
    try:
        # The budget reaches the decoders the demuxer opens to learn the streams.
        container = av.open(str(path), metadata_errors="ignore", options=budget)
    except av.FFmpegError as err:
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
        audio = container.streams.audio[0] if container.streams.audio else None
        timed = _timed(container, [video] if audio is None else [video, audio])
        duration_s = timed[video.index].duration_s
        if duration_s <= 0:
            raise NotAVideo("is truncated or damaged")
        longest_s = max(t.duration_s for t in timed.values())
        if longest_s > limits.max_duration_s:
            raise TooLong(longest_s, limits)
        video.codec_context.options = budget
        try:
            frame = next(container.decode(video), None)
        except av.FFmpegError as err:
            raise NotAVideo("is truncated or damaged") from err
        if frame is None:
            raise NotAVideo("is truncated or damaged")
        width, height = frame.width, frame.height
        if frame.rotation % 180:
            width, height = height, width
        if not limits.frame_fits(width, height):
            raise FrameTooLarge(width, height, limits)
        rate = video.average_rate or video.guessed_rate
        fps = float(rate) if rate else 0.0
        counted = timed[video.index]
        if counted.duration_s > 0 and counted.samples > 1:
            # As many frames as the samples say, whatever rate the header gives.
            fps = max(fps, counted.samples / counted.duration_s)
        return Probe(
            duration_s=duration_s,
            width=width,
            height=height,
            fps=fps,
            has_audio=audio is not None,
            video_codec=video.codec_context.name,
            video_stream=video.index,
        )


@dataclasses.dataclass(frozen=True)
class _Timed:
    samples: int
    duration_s: float


def _timed(
    container: av.container.InputContainer, streams: list[av.stream.Stream]
) -> dict[int, _Timed]:
    """Each stream's sample count and duration from its samples' own timestamps: the
    sample table the demuxer built (every sample of an unfragmented file), else the
    stream's packets read through (no decoding). Headers (mvhd, tkhd, mdhd) are not asked:
    they can say 10 s over 4 h of samples."""
    timed: dict[int, _Timed] = {}
    walk = []
    for stream in streams:
        entries = stream.index_entries
        if len(entries) >= 2 and stream.time_base is not None:
            timestamps = sorted(entry.timestamp for entry in entries)
            timed[stream.index] = _span(timestamps, stream.time_base)
        else:
            walk.append(stream)
    if walk:
        stamps: dict[int, list[int]] = {stream.index: [] for stream in walk}
        for packet in container.demux(walk):
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is not None:
                stamps[packet.stream.index].append(stamp)
        for stream in walk:
            base = stream.time_base
            timed[stream.index] = (
                _span(sorted(stamps[stream.index]), base) if base is not None else _Timed(0, 0.0)
            )
        container.seek(0)
    return timed


def _span(timestamps: list[int], time_base: object) -> _Timed:
    """From sorted sample timestamps: the count, and the time from the first sample to the
    end of the last (each sample lasting the mean gap)."""
    if not timestamps:
        return _Timed(0, 0.0)
    if len(timestamps) == 1:
        return _Timed(1, 0.0)
    first, last = timestamps[0], timestamps[-1]
    gap = (last - first) / (len(timestamps) - 1)
    seconds = float((last - first + gap) * time_base)  # type: ignore[operator]
    return _Timed(len(timestamps), seconds if math.isfinite(seconds) else 0.0)
