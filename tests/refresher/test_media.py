"""Probe, encode and thumbnail with the real FFmpeg on tiny generated clips."""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import pytest
import trio

from refresher import effects, media
from refresher.media import EncodeFailed, MediaError, NotAVideo, Probe, Variation
from tests.media_clips import SECRET, ClipSpec, make_clip, truncate_copy

# Every test here runs FFmpeg for well under a second on an idle machine; the bound is
# for a loaded CI runner, and keeps a hung FFmpeg from hanging the suite.
TIMEOUT_S = 60


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    return media.find_ffmpeg(None)


@pytest.fixture(scope="session")
def clips(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shared source clips; tests copy what they change or delete."""
    folder = tmp_path_factory.mktemp("clips")
    specs = {
        "mp4": ClipSpec(),
        "mov": ClipSpec(container="mov"),
        "mute": ClipSpec(audio=False),
        "audio_only": ClipSpec(video=False),
        "mkv": ClipSpec(container="matroska"),
        "index_last": ClipSpec(faststart=False),
        "odd": ClipSpec(audio=False, pattern="testsrc", pix_fmt="yuv444p", width=321, height=241),
        "portrait": ClipSpec(audio=False, display_rotation=90),
        # A 4 px white cross through the centre, to measure a rotation by.
        "cross": ClipSpec(
            audio=False,
            pattern="color",
            video_filter="drawbox=x=0:y=118:w=iw:h=4:color=white:t=fill,"
            "drawbox=x=158:y=0:w=4:h=ih:color=white:t=fill",
        ),
        # Long and large enough that FFmpeg reports progress before it ends.
        "long": ClipSpec(seconds=4, width=1280, height=720, rate=30),
    }
    suffixes = {"mov": ".mov", "mkv": ".mkv"}
    return {
        name: make_clip(ffmpeg, folder / f"{name}{suffixes.get(name, '.mp4')}", spec)
        for name, spec in specs.items()
    }


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _variations(out_dir: Path, count: int, seed: int = 1) -> list[Variation]:
    return [
        Variation(out_dir / f"var{index}.mp4", chosen)
        for index, chosen in enumerate(effects.generate(seed, count), start=1)
    ]


def _files(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


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


# --- find_ffmpeg -------------------------------------------------------------------------


def test_find_ffmpeg_takes_the_configured_executable(tmp_path: Path) -> None:
    fake = tmp_path / "my-ffmpeg"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert media.find_ffmpeg(str(fake)) == str(fake)


def test_find_ffmpeg_refuses_a_configured_path_that_cannot_run(tmp_path: Path) -> None:
    plain = tmp_path / "not-executable"
    plain.write_text("")
    for configured in (str(tmp_path / "missing"), str(plain)):
        with pytest.raises(MediaError, match=r"^FFMPEG '.+' is not an executable file$"):
            media.find_ffmpeg(configured)


def test_find_ffmpeg_prefers_path_then_the_bundled_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = tmp_path / "ffmpeg"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert media.find_ffmpeg(None) == str(on_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    bundled = media.find_ffmpeg(None)
    assert "imageio_ffmpeg" in bundled
    assert os.access(bundled, os.X_OK)


# --- probe -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mp4", "mov"])
def test_probe_reads_mp4_and_mov(clips: dict[str, Path], name: str) -> None:
    assert media.probe(clips[name]) == Probe(
        duration_s=1.0, width=320, height=240, fps=25.0, has_audio=True, video_codec="h264"
    )


def test_probe_reports_a_clip_without_audio(clips: dict[str, Path]) -> None:
    assert media.probe(clips["mute"]).has_audio is False


def test_probe_gives_the_displayed_size_of_a_rotated_clip(clips: dict[str, Path]) -> None:
    probed = media.probe(clips["portrait"])
    assert (probed.width, probed.height) == (240, 320)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda clips, path: path.write_text("just some text\n" * 100), "is not a video file"),
        (lambda clips, path: path.write_bytes(b""), "is empty"),
        (
            lambda clips, path: truncate_copy(clips["mp4"], path, 0.6),
            "is truncated or damaged",
        ),
        (
            lambda clips, path: truncate_copy(clips["index_last"], path, 0.6),
            "is truncated or damaged",
        ),
        (
            lambda clips, path: path.write_bytes(clips["audio_only"].read_bytes()),
            "has no video stream",
        ),
        (
            lambda clips, path: path.write_bytes(clips["mkv"].read_bytes()),
            r"is not an MP4 or MOV video \(only MP4 and MOV are accepted\)",
        ),
    ],
    ids=["text", "zero-bytes", "truncated", "truncated-index-last", "audio-only", "mkv"],
)
def test_probe_rejects_what_is_not_a_whole_mp4_or_mov_video(
    clips: dict[str, Path],
    tmp_path: Path,
    make: Callable[[dict[str, Path], Path], object],
    reason: str,
) -> None:
    upload = tmp_path / "upload.mp4"
    make(clips, upload)
    with pytest.raises(NotAVideo, match=rf"^{reason}$"):
        media.probe(upload)


# --- encode ------------------------------------------------------------------------------


async def test_variations_are_clean_distinct_h264_mp4s(
    ffmpeg: str, clips: dict[str, Path], out_dir: Path
) -> None:
    variations = _variations(out_dir, 2)
    progress: list[float] = []
    pids: list[int] = []
    with trio.fail_after(TIMEOUT_S):
        encoded = await media.encode_variations(
            ffmpeg,
            clips["mp4"],
            variations,
            probed=media.probe(clips["mp4"]),
            on_progress=progress.append,
            on_started=pids.append,
        )

    assert [output.path for output in encoded] == [v.output for v in variations]
    assert _files(out_dir) == [v.output for v in variations]  # no partial files
    for output in encoded:
        data = output.path.read_bytes()
        assert (output.size, output.crc32) == (len(data), zlib.crc32(data))
        assert media.probe(output.path) == Probe(
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
    ffmpeg: str, clips: dict[str, Path], out_dir: Path
) -> None:
    chosen = effects.generate(2, 1)[0]
    with trio.fail_after(TIMEOUT_S):
        encoded = await media.encode_variation(
            ffmpeg,
            clips["mute"],
            out_dir / "var1.mp4",
            chosen,
            duration_s=1.0,
            on_progress=lambda fraction: None,
        )
    with av.open(str(encoded.path)) as container:
        assert [stream.type for stream in container.streams] == ["video"]


async def test_outputs_have_even_sizes_and_keep_a_rotated_clip_upright(
    ffmpeg: str, clips: dict[str, Path], out_dir: Path
) -> None:
    sizes = {}
    for name in ("odd", "portrait"):
        probed = media.probe(clips[name])
        with trio.fail_after(TIMEOUT_S):
            [encoded] = await media.encode_variations(
                ffmpeg,
                clips[name],
                [Variation(out_dir / f"{name}.mp4", effects.generate(3, 1)[0])],
                probed=probed,
                on_progress=lambda fraction: None,
            )
        with av.open(str(encoded.path)) as container:
            frame = next(container.decode(video=0))
            sizes[name] = (frame.width, frame.height, frame.rotation)
    assert sizes == {"odd": (320, 240, 0), "portrait": (240, 320, 0)}


async def test_rotation_turns_the_picture_like_ffmpegs_rotate_filter(
    ffmpeg: str, clips: dict[str, Path], out_dir: Path
) -> None:
    turned = effects.Effects(rotation_rad=0.01, brightness=0.0, contrast=1.0, saturation=1.0)
    reference = out_dir / "rotate.mp4"
    with trio.fail_after(TIMEOUT_S):
        [ours] = await media.encode_variations(
            ffmpeg,
            clips["cross"],
            [Variation(out_dir / "ours.mp4", turned)],
            probed=media.probe(clips["cross"]),
            on_progress=lambda fraction: None,
        )
        rotate = ["-vf", "rotate=0.01", "-c:v", "libx264", "-crf", "10", str(reference)]
        await trio.run_process([ffmpeg, "-v", "error", "-i", str(clips["cross"]), *rotate])
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
    ffmpeg: str, clips: dict[str, Path], out_dir: Path
) -> None:
    output = out_dir / "it's a|b\\c [1].mp4"
    with trio.fail_after(TIMEOUT_S):
        await media.encode_variation(
            ffmpeg,
            clips["mp4"],
            output,
            effects.generate(4, 1)[0],
            duration_s=1.0,
            on_progress=lambda fraction: None,
        )
    assert _files(out_dir) == [output]
    assert media.probe(output).has_audio


def test_encode_args_strip_metadata_and_leave_out_missing_audio(clips: dict[str, Path]) -> None:
    probed = dataclasses.replace(media.probe(clips["mp4"]), has_audio=False)
    args = media.encode_args(Path("in.mp4"), _variations(Path("out"), 3), probed=probed)
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
    assert args.count("0:v:0") == 3  # decoded once, filtered and encoded three times
    assert "0:a:0" not in args
    assert "-c:a" not in args


async def test_cancelling_mid_encode_stops_ffmpeg_and_leaves_nothing(
    ffmpeg: str, clips: dict[str, Path], out_dir: Path
) -> None:
    variations = _variations(out_dir, 3)
    pids: list[int] = []
    progress: list[float] = []
    with trio.fail_after(TIMEOUT_S), trio.CancelScope() as scope:

        def on_progress(fraction: float) -> None:
            progress.append(fraction)
            scope.cancel()

        await media.encode_variations(
            ffmpeg,
            clips["long"],
            variations,
            probed=media.probe(clips["long"]),
            on_progress=on_progress,
            on_started=pids.append,
        )
    assert scope.cancelled_caught
    assert 0 < progress[0] < 1
    [pid] = pids
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: not even a zombie is left
    assert _files(out_dir) == []


async def test_cancelling_escalates_to_kill_for_an_ffmpeg_that_ignores_q_and_term(
    tmp_path: Path, clips: dict[str, Path], out_dir: Path, monkeypatch: pytest.MonkeyPatch
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
    monkeypatch.setattr(media, "QUIT_WAIT_S", 0.2)
    monkeypatch.setattr(media, "TERM_WAIT_S", 0.2)
    pids: list[int] = []
    with trio.fail_after(TIMEOUT_S), trio.CancelScope() as scope:
        await media.encode_variations(
            str(stubborn),
            clips["mp4"],
            _variations(out_dir, 2),
            probed=media.probe(clips["mp4"]),
            on_progress=lambda fraction: scope.cancel(),
            on_started=pids.append,
        )
    assert scope.cancelled_caught
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
    assert _files(out_dir) == []


async def test_a_deleted_source_fails_with_ffmpegs_reason(
    ffmpeg: str, clips: dict[str, Path], out_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "gone.mp4"
    probed = media.probe(clips["mp4"])
    with (
        trio.fail_after(TIMEOUT_S),
        pytest.raises(EncodeFailed, match=r"^FFmpeg exited with status \d+: .*No such file"),
    ):
        await media.encode_variations(
            ffmpeg,
            source,
            _variations(out_dir, 2),
            probed=probed,
            on_progress=lambda fraction: None,
        )
    assert _files(out_dir) == []


async def test_a_source_that_is_not_a_video_fails(
    ffmpeg: str, clips: dict[str, Path], out_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "text.mp4"
    source.write_text("not a video\n" * 100)
    probed = media.probe(clips["mp4"])
    with (
        trio.fail_after(TIMEOUT_S),
        pytest.raises(EncodeFailed, match=r"^FFmpeg exited with status \d+: .*Invalid data"),
    ):
        await media.encode_variations(
            ffmpeg,
            source,
            _variations(out_dir, 1),
            probed=probed,
            on_progress=lambda fraction: None,
        )
    with pytest.raises(EncodeFailed, match=r"^cannot read the source: is not a video file$"):
        await media.encode_variation(
            ffmpeg,
            source,
            out_dir / "var1.mp4",
            effects.generate(1, 1)[0],
            duration_s=1.0,
            on_progress=lambda fraction: None,
        )
    assert _files(out_dir) == []


def test_progress_is_reported_in_steps_of_a_percent_and_ends_once_at_one() -> None:
    reported: list[float] = []
    reporter = media._ProgressReporter(10.0, reported.append)
    for out_time_us in (0, 50_000, 100_000, 150_000, 200_000, 190_000, 30_000_000):
        reporter.out_time_us(out_time_us)
    reporter.finish()
    # 0.5 % and 1.5 % are too small a step; FFmpeg's clock past the end stays below 1.0.
    assert reported == [0.01, 0.02, 0.99, 1.0]


# --- planning ----------------------------------------------------------------------------


def test_variations_per_encode_follows_the_memory_budget() -> None:
    assert media.variations_per_encode(1280, 720) == media.MAX_VARIATIONS_PER_ENCODE
    # 1080p: (256 MiB - 40 MiB - 16 B x 2.07 Mpx) / (32 B x 2.07 Mpx) = 2.9 -> 2.
    assert media.variations_per_encode(1920, 1080) == 2
    assert media.variations_per_encode(1080, 1920) == 2
    assert media.variations_per_encode(3840, 2160) == 1  # over budget, but one always runs


def test_batch_sizes_split_evenly() -> None:
    assert media.batch_sizes(5, 5) == [5]
    assert media.batch_sizes(6, 5) == [3, 3]
    assert media.batch_sizes(7, 2) == [2, 2, 2, 1]
    assert media.batch_sizes(20, 5) == [5, 5, 5, 5]
    assert media.batch_sizes(0, 5) == []
    with pytest.raises(ValueError, match=r"^per_encode must be >= 1, got 0$"):
        media.batch_sizes(3, 0)


# --- thumbnail ---------------------------------------------------------------------------


async def test_thumbnail_of_a_one_second_clip_is_a_128_wide_webp(
    ffmpeg: str, clips: dict[str, Path], out_dir: Path
) -> None:
    thumbnail = out_dir / "thumbnail.webp"
    with trio.fail_after(TIMEOUT_S):
        assert await media.make_thumbnail(ffmpeg, clips["mp4"], thumbnail, duration_s=1.0)
    data = thumbnail.read_bytes()
    assert (data[:4], data[8:12]) == (b"RIFF", b"WEBP")
    with av.open(str(thumbnail)) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (128, 96)
    assert _files(out_dir) == [thumbnail]


async def test_thumbnail_of_a_broken_source_is_false_and_leaves_nothing(
    ffmpeg: str, out_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "broken.mp4"
    source.write_text("not a video\n")
    with trio.fail_after(TIMEOUT_S):
        made = await media.make_thumbnail(ffmpeg, source, out_dir / "t.webp", duration_s=5.0)
    assert made is False
    assert _files(out_dir) == []


async def test_thumbnail_falls_back_to_the_first_frame_when_the_duration_is_wrong(
    ffmpeg: str, clips: dict[str, Path], out_dir: Path
) -> None:
    # 10 % of a claimed 100 s is past the end of the 1 s clip: FFmpeg writes 0 bytes.
    thumbnail = out_dir / "thumbnail.webp"
    with trio.fail_after(TIMEOUT_S):
        assert await media.make_thumbnail(ffmpeg, clips["mp4"], thumbnail, duration_s=100.0)
    assert _files(out_dir) == [thumbnail]
    assert thumbnail.stat().st_size > 0
