"""How distinct a variation is: PDQ distances to its source and siblings, SSIM to its source.

PDQ (Meta's open perceptual hash, 256 bits) treats a Hamming distance of 31 or less as the
same image; its video matcher vPDQ hashes 1 frame per second and calls two videos the same
when 80 % or more of one's frames have a match in the other. So each video is sampled
once a second of source time (at most MAX_SAMPLES times, spread evenly, for long ones):

- The source's samples come from the FFmpeg that makes the variations (it decodes the
  source anyway): `reference_filter` picks the first frame at or after each sample time
  and Ut Video keeps it losslessly in a small file beside the outputs (it decodes 4x
  faster than FFV1: 27 ms against 120 ms for twelve 720p frames, in 5.8 MB against 3.7).
- Each variation is encoded with a keyframe at each second of its own clock, so reading
  its samples decodes only keyframes, not the whole video. Each video is sampled in its
  own clock, as vPDQ (or anyone hashing the downloaded files) samples it: a variation
  whose speed changed shows, at its second k, the source a little before or after k.

A sample is the first frame at or after each whole second from the start, as vPDQ takes
every Nth frame from the first (FFmpeg's `fps=1:round=up` picks the same frames; plain
`fps=1` picks the frame nearest each half second, which on moving footage is another
picture).

For a variation, each of its sampled frames gets the distance to the nearest frame of the
other video's (as vPDQ matches frames, whatever their order and timing); `pdq_median` is the median
of those distances, `pdq_matched_share` the share within MATCH_DISTANCE. A variation is
*matched* to a video when that share reaches MATCH_SHARE. SSIM is FFmpeg's `ssim` filter
("All") between each sampled frame and the source's sample at the same moment of
playback (what a person comparing the two side by side sees), averaged.
Frames are compared at no more than MEASURE_LONG x MEASURE_SHORT and hashed at no more
than PDQ_SIDE a side: PDQ reduces every image to 64 x 64 first, so an independent hash of
the full-size frames agrees within a few bits (a test checks it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pdqhash  # type: ignore[import-untyped]
from av.filter import Graph

from refresher.media.geometry import even

MATCH_DISTANCE = 31
MATCH_SHARE = 0.8
SAMPLE_PERIOD_S = 1.0
MAX_SAMPLES = 120
MEASURE_LONG, MEASURE_SHORT = 1280, 720
PDQ_SIDE = 512
HASH_BYTES = 32
REFERENCE_OFFSET_S = 36000
STILL_WIDTH = 960
# Bits set in each byte value, for Hamming distances of packed hashes.
_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint16)


class MeasureFailed(Exception):
    """A video could not be read for measuring."""


@dataclass(frozen=True)
class Sampling:
    """When a source is sampled (`count` times, every `period_s` of source time) and the
    size its samples are compared at."""

    period_s: float
    count: int
    width: int
    height: int

    @property
    def middle(self) -> int:
        """The sample the comparison stills show."""
        return self.count // 2

    def keyframe_expression(self) -> str:
        """`-force_key_frames` for a variation: one at each sample time."""
        return f"expr:gte(t,n_forced*{self.period_s:.6f})"


def sampling(duration_s: float, width: int, height: int) -> Sampling:
    period = max(SAMPLE_PERIOD_S, duration_s / MAX_SAMPLES)
    count = max(1, min(MAX_SAMPLES, math.ceil(duration_s / period - 1e-6)))
    frame_w, frame_h = even(width), even(height)
    long_side, short_side = max(frame_w, frame_h), min(frame_w, frame_h)
    scale = min(1.0, MEASURE_LONG / long_side, MEASURE_SHORT / short_side)
    return Sampling(period, count, max(2, even(frame_w * scale)), max(2, even(frame_h * scale)))


def reference_filter(plan: Sampling) -> str:
    """The filter that turns the decoded source into its samples, at the compared size.

    The samples are stamped REFERENCE_OFFSET_S late. FFmpeg feeds its input to whichever
    output lags furthest behind in time; a stream of one frame a second lags behind the
    variations between samples, and when their speeds differed and they had sound,
    FFmpeg 9 stalled for good. Stamped late, it never lags, and its frames are read in
    order, never by time.
    """
    return (
        f"select='gte(t,selected_n*{plan.period_s:.6f})',setpts=PTS+{REFERENCE_OFFSET_S}/TB,"
        f"scale={plan.width}:{plan.height}:flags=bicubic,format=yuv420p"
    )


def reference_args(source: Path, plan: Sampling, path: Path) -> list[str]:
    """FFmpeg's arguments to write `source`'s samples to `path` on their own (the service
    writes them while making the variations; this is for measuring other videos)."""
    return [
        "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(source),
        "-map", "0:v:0", "-filter:v", reference_filter(plan), "-c:v", "utvideo",
        "-fps_mode", "passthrough", "-f", "matroska", str(path),
    ]  # fmt: skip


@dataclass(frozen=True)
class Sampled:
    """One video's samples: PDQ hashes (one row of HASH_BYTES per sample) and, for a
    variation, the mean SSIM to the source's samples (None for the source itself)."""

    hashes: np.ndarray
    ssim: float | None = None

    def packed(self) -> bytes:
        return bytes(self.hashes.tobytes())

    @classmethod
    def unpack(cls, data: bytes) -> Sampled:
        return cls(np.frombuffer(data, dtype=np.uint8).reshape(-1, HASH_BYTES))


@dataclass(frozen=True)
class Measured:
    """A variation's distinctness, as stored and shown."""

    pdq_median: float
    pdq_matched_share: float
    ssim: float | None
    nearest_sibling_pdq: float | None = None
    sibling_matched: bool = False

    @property
    def source_matched(self) -> bool:
        return self.pdq_matched_share >= MATCH_SHARE

    @property
    def verdict(self) -> str:
        """In a word: `distinct`, `matches-source` or `matches-sibling`."""
        if self.source_matched:
            return "matches-source"
        return "matches-sibling" if self.sibling_matched else "distinct"

    def shown(self) -> dict[str, object]:
        """What the API and the manifest show: the four numbers."""
        return {
            "pdqMedian": self.pdq_median,
            "pdqMatchedShare": self.pdq_matched_share,
            "ssim": self.ssim,
            "nearestSiblingPdq": self.nearest_sibling_pdq,
        }

    def as_json(self) -> dict[str, object]:
        """What is stored: the four numbers and whether a sibling matched."""
        return {**self.shown(), "siblingMatched": self.sibling_matched}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Measured:
        def number(name: str) -> float | None:
            value = data.get(name)
            return float(value) if isinstance(value, int | float) else None

        return cls(
            pdq_median=number("pdqMedian") or 0.0,
            pdq_matched_share=number("pdqMatchedShare") or 0.0,
            ssim=number("ssim"),
            nearest_sibling_pdq=number("nearestSiblingPdq"),
            sibling_matched=bool(data.get("siblingMatched")),
        )


def nearest_distances(these: np.ndarray, others: np.ndarray) -> np.ndarray:
    """For each hash in `these`, the Hamming distance to the nearest hash in `others`."""
    if len(these) == 0 or len(others) == 0:
        return np.zeros(len(these), dtype=np.int64)
    xor = these[:, None, :] ^ others[None, :, :]
    return _POPCOUNT[xor].sum(axis=2).min(axis=1).astype(np.int64)


def against(these: np.ndarray, others: np.ndarray) -> tuple[float, float]:
    """(median nearest distance, share of frames within MATCH_DISTANCE) of `these` in
    `others`."""
    distances = nearest_distances(these, others)
    if len(distances) == 0:
        return 0.0, 1.0
    median = float(statistics.median(distances.tolist()))
    return median, round(float((distances <= MATCH_DISTANCE).mean()), 4)


def siblings(hashes: np.ndarray, others: Sequence[np.ndarray]) -> tuple[float | None, bool]:
    """The nearest sibling's median distance (None without siblings), and whether any
    sibling matches this one either way round."""
    nearest: float | None = None
    matched = False
    for other in others:
        median, share = against(hashes, other)
        _, back = against(other, hashes)
        nearest = median if nearest is None else min(nearest, median)
        matched = matched or max(share, back) >= MATCH_SHARE
    return nearest, matched


def measure(source: Sampled, variation: Sampled, others: Sequence[np.ndarray]) -> Measured:
    """A variation's measures against its source and its `others` (siblings' hashes)."""
    median, share = against(variation.hashes, source.hashes)
    nearest, sibling_matched = siblings(variation.hashes, others)
    return Measured(median, share, variation.ssim, nearest, sibling_matched)


# --- reading samples (blocking: call from a thread) ---------------------------------------


@dataclass(frozen=True)
class Wanted:
    """A variation to sample: its file, and where to write its still."""

    path: Path
    still: Path | None = None
    # Encoded with a keyframe at each sample (`Sampling.keyframe_expression`); a video
    # made otherwise (the original's method, say) is decoded whole.
    keyframes_only: bool = True


def sample_batch(
    reference: Path, plan: Sampling, variations: Sequence[Wanted], *, source_still: Path | None
) -> tuple[Sampled, list[Sampled]]:
    """Hash the source's samples in `reference` and each variation's, with SSIM.

    Reads every video side by side, one sample at a time, so memory holds one frame of
    each. Writes JPEG stills of the middle sample where asked. Raise MeasureFailed if a
    file cannot be read.
    """
    try:
        with av.open(str(reference)) as ref_file:
            containers = [av.open(str(wanted.path)) for wanted in variations]
            try:
                return _sample(ref_file, containers, plan, variations, source_still)
            finally:
                for container in containers:
                    container.close()
    except Exception as err:  # measuring must never fail a variation that was made
        raise MeasureFailed(f"the samples could not be read: {err!r}") from err


def _sample(
    ref_file: av.container.InputContainer,
    containers: list[av.container.InputContainer],
    plan: Sampling,
    variations: Sequence[Wanted],
    source_still: Path | None,
) -> tuple[Sampled, list[Sampled]]:
    ref_frames = ref_file.decode(video=0)
    streams = [
        _samples_of(container, plan, keyframes_only=wanted.keyframes_only)
        for container, wanted in zip(containers, variations, strict=True)
    ]
    graphs = [_SsimGraph(plan) for _ in variations]
    source_hashes: list[np.ndarray] = []
    hashes: list[list[np.ndarray]] = [[] for _ in variations]
    for index in range(plan.count):
        ref = next(ref_frames, None)
        if ref is None:
            break
        ref = _at_size(ref, plan)
        source_hashes.append(_pdq(ref))
        if index == plan.middle and source_still is not None:
            write_jpeg(ref, source_still)
        for number, stream in enumerate(streams):
            frame = next(stream, None)
            if frame is None:
                continue
            frame = _at_size(frame, plan)
            hashes[number].append(_pdq(frame))
            graphs[number].add(ref, frame, index)
            still = variations[number].still
            if index == plan.middle and still is not None:
                write_jpeg(frame, still)
    if not source_hashes:
        raise MeasureFailed("the source's samples are empty")
    source = Sampled(np.array(source_hashes, dtype=np.uint8))
    sampled = [
        Sampled(np.array(rows, dtype=np.uint8).reshape(-1, HASH_BYTES), graph.mean())
        for rows, graph in zip(hashes, graphs, strict=True)
    ]
    return source, sampled


def _samples_of(
    container: av.container.InputContainer, plan: Sampling, *, keyframes_only: bool
) -> Iterator[av.VideoFrame]:
    """The frame at each sample time of a variation: the first (key)frame at or after it
    (a tolerance of half a frame for rounded timestamps)."""
    stream = container.streams.video[0]
    if keyframes_only:
        stream.codec_context.skip_frame = "NONKEY"
    rate = float(stream.average_rate or 30)
    index = 0
    for frame in container.decode(stream):
        if frame.time is None:
            continue
        while index < plan.count and frame.time >= index * plan.period_s - 0.5 / rate:
            if frame.time < (index + 1) * plan.period_s - 0.5 / rate:
                yield frame
            index += 1
        if index >= plan.count:
            return


def _at_size(frame: av.VideoFrame, plan: Sampling) -> av.VideoFrame:
    if frame.width == plan.width and frame.height == plan.height and frame.format.name == "yuv420p":
        return frame
    return frame.reformat(
        width=plan.width, height=plan.height, format="yuv420p", interpolation="BICUBIC"
    )


def _pdq(frame: av.VideoFrame) -> np.ndarray:
    scale = min(1.0, PDQ_SIDE / max(frame.width, frame.height))
    width, height = max(2, even(frame.width * scale)), max(2, even(frame.height * scale))
    image = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
    bits, _quality = pdqhash.compute(image)
    return np.packbits(bits.astype(np.uint8))


class _SsimGraph:
    """FFmpeg's `ssim` filter fed pairs of frames; keeps the mean of their "All"."""

    def __init__(self, plan: Sampling) -> None:
        self.graph = Graph()
        base = Fraction(1, 1)
        self.main = self.graph.add_buffer(
            width=plan.width, height=plan.height, format=av.VideoFormat("yuv420p"), time_base=base
        )
        self.ref = self.graph.add_buffer(
            width=plan.width, height=plan.height, format=av.VideoFormat("yuv420p"), time_base=base
        )
        ssim = self.graph.add("ssim")
        self.main.link_to(ssim, 0, 0)
        self.ref.link_to(ssim, 0, 1)
        self.sink = self.graph.add("buffersink")
        ssim.link_to(self.sink)
        self.graph.configure()
        self.scores: list[float] = []

    def add(self, ref: av.VideoFrame, frame: av.VideoFrame, index: int) -> None:
        ref.pts, frame.pts = index, index
        ref.time_base = frame.time_base = Fraction(1, 1)
        self.main.push(frame)
        self.ref.push(ref)
        self._drain()

    def mean(self) -> float | None:
        """The mean score, once every pair is in (the filter may hold back the last)."""
        self.main.push(None)
        self.ref.push(None)
        self._drain()
        return round(statistics.fmean(self.scores), 4) if self.scores else None

    def _drain(self) -> None:
        while True:
            try:
                out = self.sink.pull()
            except (av.BlockingIOError, av.EOFError):
                return
            score = float(out.metadata.get("lavfi.ssim.All", "nan"))
            if math.isfinite(score):  # a frame too small for SSIM's window gives NaN
                self.scores.append(score)


def write_jpeg(frame: av.VideoFrame, path: Path) -> None:
    """Write `frame` as a JPEG no wider than STILL_WIDTH (blocking)."""
    scale = min(1.0, STILL_WIDTH / frame.width)
    width, height = max(2, even(frame.width * scale)), max(2, even(frame.height * scale))
    picture = frame.reformat(width=width, height=height, format="yuvj420p", interpolation="BICUBIC")
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuvj420p"
    encoder.time_base = Fraction(1, 1)
    encoder.options = {"qmin": "2", "qmax": "6"}
    picture.pts = 0
    data = b"".join(bytes(packet) for packet in [*encoder.encode(picture), *encoder.encode(None)])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(data)
    partial.replace(path)
