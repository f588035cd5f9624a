"""Probe uploads with PyAV: is it a whole MP4/MOV video, and what FFmpeg needs to know."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av

from refresher.ffmpeg import MediaError

# PyAV's name for the one demuxer that reads both MP4 and QuickTime MOV.
MP4_MOV_FORMAT = "mov,mp4,m4a,3gp,3g2,mj2"
# What people pick such videos by, for a file chooser's `accept`. The probe, not the name
# or the type a browser declares, decides what is taken.
ACCEPTED_TYPES = ("video/mp4", "video/quicktime")
ACCEPTED_EXTENSIONS = (".mp4", ".mov")
# ISO base media (MP4/MOV) files start with one of these boxes: a file that does but
# cannot be opened was cut short (its index comes last) rather than something else.
_ISO_BOXES = {b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


class NotAVideo(MediaError):
    """An upload the service cannot use; `reason` completes "The file ..." for people."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclasses.dataclass(frozen=True)
class Probe:
    """What the service needs to know about a source; sizes as displayed (rotation applied)."""

    duration_s: float
    width: int
    height: int
    fps: float
    has_audio: bool
    video_codec: str


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
    """The video stream's duration, else the container's, else 0 (which `probe` refuses)."""
    if video.duration is not None and video.time_base is not None:
        return float(video.duration * video.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0
