"""Encoding variations with the real FFmpeg on tiny generated clips, and its planning."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
import trio

from refresher.media import effects, encoding
from refresher.media.encoding import EncodedOutput, Variation
from refresher.media.ffmpeg import EncodeFailed
from refresher.media.probe import NotAVideo, Probe, probe
from tests.support.clips import SECRET, Clips

# Every test here runs FFmpeg for well under a second on an idle machine; the bound is
# for a loaded CI runner, and keeps a hung FFmpeg from hanging the suite.
TIMEOUT_S = 60


def _variations(out_dir: Path, count: int, seed: int = 1) -> list[Variation]:
    return [
        Variation(out_dir / f"var{index}.mp4", chosen)
        for index, chosen in enumerate(effects.generate(seed, count), start=1)
    ]


def _files(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


async def _encode_one(
    ffmpeg: str, source: Path, output: Path, chosen: effects.Effects
) -> EncodedOutput:
    """Probe `source`, then make the one variation `chosen` of it at `output`."""
    probed = probe(source)
    with trio.fail_after(TIMEOUT_S):
        [encoded] = await encoding.encode_variations(
            ffmpeg,
            source,
            [Variation(output, chosen)],
            probed=probed,
            on_progress=lambda fraction: None,
        )
    return encoded


async def _encode_fails(
    ffmpeg: str, source: Path, out_dir: Path, count: int, *, probed: Probe, match: str
) -> None:
    """Assert that encoding `count` variations of `source` raises EncodeFailed, saying so
    in a sentence, with FFmpeg's own words (`match`) kept apart for the log."""
    with trio.fail_after(TIMEOUT_S), pytest.raises(EncodeFailed) as failed:
        await encoding.encode_variations(
            ffmpeg,
            source,
            _variations(out_dir, count),
            probed=probed,
            on_progress=lambda fraction: None,
        )
    assert re.match(
        r"^FFmpeg could not make the variations from this video \(it stopped with status \d+\)\.$",
        str(failed.value),
    )
    assert re.search(match, failed.value.detail)


async def _cancel_at_first_progress(
    ffmpeg: str, source: Path, out_dir: Path, count: int
) -> tuple[list[int], list[float]]:
    """Encode `count` variations of `source` into `out_dir`, cancelling at the first
    progress report; assert that the cancel took, that every FFmpeg started was reaped
    and that nothing is left in `out_dir`; return the PIDs and the progress reported."""
    pids: list[int] = []
    progress: list[float] = []
    with trio.fail_after(TIMEOUT_S), trio.CancelScope() as scope:

        def on_progress(fraction: float) -> None:
            progress.append(fraction)
            scope.cancel()

        await encoding.encode_variations(
            ffmpeg,
            source,
            _variations(out_dir, count),
            probed=probe(source),
            on_progress=on_progress,
            on_started=pids.append,
        )
    assert scope.cancelled_caught
    assert pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped: not even a zombie is left
    assert _files(out_dir) == []
    return pids, progress


def _cross_slopes(path: Path) -> tuple[float, float]:
    """How far the cross's arms move across the frame: (horizontal arm's rise between
    columns 60 and 260, vertical arm's shift between rows 20 and 220), in pixels, from
    the brightness-weighted centre of each arm."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    luma, stride = bytes(frame.planes[0]), frame.planes[0].line_size

    def centre(values: list[int]) -> float:
        weights = [max(0, value - 64) for value in values]
        return sum(i * w for i, w in enumerate(weights)) / sum(weights)

    def row_of_arm(column: int) -> float:
        return centre([luma[row * stride + column] for row in range(60, 180)])

    def column_of_arm(row: int) -> float:
        return centre(list(luma[row * stride + 80 : row * stride + 240]))

    return row_of_arm(260) - row_of_arm(60), column_of_arm(220) - column_of_arm(20)


def _all_metadata(path: Path) -> Iterator[str]:
    """Every `key=value` of the container's and its streams' metadata."""
    with av.open(str(path)) as container:
        for metadata in [container.metadata, *(stream.metadata for stream in container.streams)]:
            yield from (f"{key}={value}" for key, value in metadata.items())


# --- encode ------------------------------------------------------------------------------


async def test_variations_are_clean_distinct_h264_mp4s(
    ffmpeg: str, clips: Clips, out_dir: Path
) -> None:
    variations = _variations(out_dir, 2)
    progress: list[float] = []
    pids: list[int] = []
    with trio.fail_after(TIMEOUT_S):
        encoded = await encoding.encode_variations(
            ffmpeg,
            clips.mp4,
            variations,
            probed=probe(clips.mp4),
            on_progress=progress.append,
            on_started=pids.append,
        )

    assert [output.path for output in encoded] == [v.output for v in variations]
    assert _files(out_dir) == [v.output for v in variations]  # no partial files
    for output in encoded:
        data = output.path.read_bytes()
        assert (output.size, output.crc32) == (len(data), zlib.crc32(data))
        assert probe(output.path) == Probe(
            duration_s=pytest.approx(1.0, abs=0.05),  # type: ignore[arg-type]
            width=320,
            height=240,
            fps=25.0,
            has_audio=True,
            video_codec="h264",
        )
        with av.open(str(output.path)) as container:
            assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
            assert container.streams.audio[0].codec_context.name == "aac"
            assert len(container.streams) == 2
        # Nothing of the source's title, comment, artist, handler names or creation time.
        leaks = [item for item in _all_metadata(output.path) if SECRET in item or "2001" in item]
        assert leaks == []
        assert data.index(b"moov") < data.index(b"mdat")  # +faststart
    assert encoded[0].crc32 != encoded[1].crc32
    assert len(pids) == 1
    assert progress[-1] == 1.0
    assert progress.count(1.0) == 1
    assert progress == sorted(progress)


async def test_a_source_without_audio_gives_outputs_without_audio(
    ffmpeg: str, clips: Clips, out_dir: Path
) -> None:
    chosen = effects.generate(2, 1)[0]
    encoded = await _encode_one(ffmpeg, clips.mute, out_dir / "var1.mp4", chosen)
    with av.open(str(encoded.path)) as container:
        assert [stream.type for stream in container.streams] == ["video"]


async def test_outputs_have_even_sizes_and_keep_a_rotated_clip_upright(
    ffmpeg: str, clips: Clips, out_dir: Path
) -> None:
    sizes = {}
    for name in ("odd", "portrait"):
        chosen = effects.generate(3, 1)[0]
        encoded = await _encode_one(ffmpeg, clips.named(name), out_dir / f"{name}.mp4", chosen)
        with av.open(str(encoded.path)) as container:
            frame = next(container.decode(video=0))
            sizes[name] = (frame.width, frame.height, frame.rotation)
    assert sizes == {"odd": (320, 240, 0), "portrait": (240, 320, 0)}


async def test_rotation_turns_the_picture_like_ffmpegs_rotate_filter(
    ffmpeg: str, clips: Clips, out_dir: Path
) -> None:
    turned = effects.Effects(rotation_rad=0.01, brightness=0.0, contrast=1.0, saturation=1.0)
    reference = out_dir / "rotate.mp4"
    ours = await _encode_one(ffmpeg, clips.cross, out_dir / "ours.mp4", turned)
    rotate = ["-vf", "rotate=0.01", "-c:v", "libx264", "-crf", "10", str(reference)]
    with trio.fail_after(TIMEOUT_S):
        await trio.run_process([ffmpeg, "-v", "error", "-i", str(clips.cross), *rotate])
    # Clockwise by 0.01 rad: 200 px right along the horizontal arm it is 0.01 x 200 px
    # lower; 200 px down the vertical arm it is 2 px further left. (Whole pixels, so
    # nearest-neighbour sampling measures them exactly, as bilinear `rotate` does.)
    rise, shift = _cross_slopes(ours.path)
    assert rise == pytest.approx(2.0, abs=0.5)
    assert shift == pytest.approx(-2.0, abs=0.5)
    reference_rise, reference_shift = _cross_slopes(reference)
    assert rise == pytest.approx(reference_rise, abs=0.5)
    assert shift == pytest.approx(reference_shift, abs=0.5)


async def test_an_output_name_with_tee_special_characters_is_written(
    ffmpeg: str, clips: Clips, out_dir: Path
) -> None:
    output = out_dir / "it's a|b\\c [1].mp4"
    await _encode_one(ffmpeg, clips.mp4, output, effects.generate(4, 1)[0])
    assert _files(out_dir) == [output]
    assert probe(output).has_audio


def test_encode_args_strip_metadata_and_leave_out_missing_audio(
    clips: Clips,
) -> None:
    probed = dataclasses.replace(probe(clips.mp4), has_audio=False)
    args = encoding.encode_args(Path("in.mp4"), _variations(Path("out"), 3), probed=probed)
    joined = " ".join(args)
    for expected in (
        "-map_metadata -1",
        "-map_chapters -1",
        "-c:v libx264",
        "-pix_fmt yuv420p",
        "movflags=+faststart",
        "-progress pipe:1",
    ):
        assert expected in joined
    assert args.count("0:0") == 3  # decoded once, filtered and encoded three times
    assert "0:a:0" not in args
    assert "-c:a" not in args


async def test_cancelling_mid_encode_stops_ffmpeg_and_leaves_nothing(
    ffmpeg: str, clips: Clips, out_dir: Path
) -> None:
    pids, progress = await _cancel_at_first_progress(ffmpeg, clips.long_hd, out_dir, 3)
    assert 0 < progress[0] < 1
    assert len(pids) == 1


async def test_cancelling_escalates_to_kill_for_an_ffmpeg_that_ignores_q_and_term(
    tmp_path: Path,
    clips: Clips,
    out_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stand-in FFmpeg that creates its outputs, reports progress, then ignores stdin
    # and SIGTERM: only SIGKILL ends it.
    stubborn = tmp_path / "stubborn-ffmpeg"
    stubborn.write_text(
        f"#!{sys.executable}\n"
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "for slave in sys.argv[-1].split('|'):\n"
        "    pathlib.Path(slave.split(']', 1)[1]).write_bytes(b'partial')\n"
        "print('out_time_us=500000', flush=True)\n"
        "time.sleep(60)\n"
    )
    stubborn.chmod(0o755)
    monkeypatch.setattr("refresher.media.ffmpeg.QUIT_WAIT_S", 0.2)
    monkeypatch.setattr("refresher.media.ffmpeg.TERM_WAIT_S", 0.2)
    await _cancel_at_first_progress(str(stubborn), clips.mp4, out_dir, 2)


async def test_a_deleted_source_fails_with_ffmpegs_reason(
    ffmpeg: str, clips: Clips, out_dir: Path, tmp_path: Path
) -> None:
    await _encode_fails(
        ffmpeg,
        tmp_path / "gone.mp4",
        out_dir,
        2,
        probed=probe(clips.mp4),
        match=r"No such file",
    )
    assert _files(out_dir) == []


async def test_a_source_that_is_not_a_video_fails(
    ffmpeg: str, clips: Clips, out_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "text.mp4"
    source.write_text("not a video\n" * 100)
    await _encode_fails(
        ffmpeg,
        source,
        out_dir,
        1,
        probed=probe(clips.mp4),
        match=r"Invalid data",
    )
    # Probed first, as the service does, it never reaches FFmpeg.
    with pytest.raises(NotAVideo, match=r"^is not a video file$"):
        await _encode_one(ffmpeg, source, out_dir / "var1.mp4", effects.generate(1, 1)[0])
    assert _files(out_dir) == []


def test_progress_is_reported_in_steps_of_a_percent_and_ends_once_at_one() -> None:
    reported: list[float] = []
    reporter = encoding._ProgressReporter(10.0, reported.append)
    for out_time_us in (0, 50_000, 100_000, 150_000, 200_000, 190_000, 30_000_000):
        reporter.out_time_us(out_time_us)
    reporter.finish()
    # 0.5 % and 1.5 % are too small a step; FFmpeg's clock past the end stays below 1.0.
    assert reported == [0.01, 0.02, 0.99, 1.0]


# --- planning ----------------------------------------------------------------------------


def test_variations_per_encode_follows_the_memory_budget() -> None:
    assert encoding.variations_per_encode(1280, 720) == encoding.MAX_VARIATIONS_PER_ENCODE
    # 1080p: (256 MiB - 40 MiB - 16 B x 2.07 Mpx) / (32 B x 2.07 Mpx) = 2.9 -> 2.
    assert encoding.variations_per_encode(1920, 1080) == 2
    assert encoding.variations_per_encode(1080, 1920) == 2
    assert encoding.variations_per_encode(3840, 2160) == 1  # over budget, but one always runs


def test_batch_sizes_split_evenly() -> None:
    assert encoding.batch_sizes(5, 5) == [5]
    assert encoding.batch_sizes(6, 5) == [3, 3]
    assert encoding.batch_sizes(7, 2) == [2, 2, 2, 1]
    assert encoding.batch_sizes(20, 5) == [5, 5, 5, 5]
    assert encoding.batch_sizes(0, 5) == []
    with pytest.raises(ValueError, match=r"^per_encode must be >= 1, got 0$"):
        encoding.batch_sizes(3, 0)
