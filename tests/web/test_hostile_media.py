"""Hostile media: what the bytes of a video claim is never trusted beyond what they hold.

Every file here is made by the bundled FFmpeg and small byte edits to its MP4 boxes
(`tests.support.mp4edit`): a frame far past the limits, one whose header understates
it, cover art declared ahead of the video, headers that understate the duration. Memory
is measured as the machine sees it: the resident size of this process (the service runs
in it) and the high-water mark of each FFmpeg it starts.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import av
import httpx
import pytest
import trio

from refresher.media.ffmpeg import find_ffmpeg
from refresher.media.probe import BY, FrameTooLarge, MediaLimits, NotAVideo, TooLong, probe
from tests.support.clips import ClipSpec, make_clip
from tests.support.clock import wait_for
from tests.support.http import TEST_PASSWORD, StartService, finished, upload, wait_for_job
from tests.support.memory import watch_memory
from tests.support.mp4edit import declare_duration, declare_frame_size, move_first
from wiring.service import RunningService

pytestmark = pytest.mark.slow

# 8000 x 8000 RGB: 183 MiB once decoded, and more in the decoder's own buffers; a 4K
# frame, the largest accepted, is 24 MiB. Compressed, the picture is ~0.2 MB.
BOMB_SIDE = 8000
# What checking a refused bomb may add to the service: far below one decoded bomb.
REFUSAL_GROWTH_MIB = 48
# What one FFmpeg may take for a 1 s 320x240 clip with its cover art, against the
# 256 MiB a batch is budgeted (an FFmpeg that decoded the cover took 400 MiB and more).
ENCODER_MIB = 160
LARGEST = f"the largest accepted is 3840{BY}2160 or 2160{BY}3840"


@dataclass(frozen=True)
class Hostile:
    bomb: Path  # one PNG frame, BOMB_SIDE square, declared as such
    liar: Path  # the same frame, its headers saying 320 x 240
    big_cover_first: Path  # a 320x240 clip with a BOMB_SIDE cover declared ahead of it
    cover_first: Path  # a 320x240 clip with a 480x640 cover declared ahead of it
    understated: Path  # 6 s whose mvhd, tkhd and mdhd say 1 s


def solid_png(width: int, height: int) -> bytes:
    """A one-colour RGB PNG, compressed row by row (never held whole)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    compressor = zlib.compressobj(9)
    row = b"\0" + b"\x20\x40\x80" * width
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def ffmpeg(*args: str) -> None:
    command = [find_ffmpeg(None), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def with_cover_first(clip: Path, cover: Path, path: Path) -> Path:
    """`clip` with `cover` as attached cover art, its box moved ahead of the tracks."""
    ffmpeg(
        "-i", str(clip), "-i", str(cover), "-map", "0", "-map", "1", "-c", "copy",
        "-disposition:v:1", "attached_pic", "-f", "mp4", str(path),
    )  # fmt: skip
    move_first(path, b"udta")
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    folder = tmp_path_factory.mktemp("hostile")
    big = folder / "big.png"
    big.write_bytes(solid_png(BOMB_SIDE, BOMB_SIDE))
    small = folder / "small.png"
    small.write_bytes(solid_png(480, 640))
    bomb = folder / "bomb.mov"
    ffmpeg("-i", str(big), "-c", "copy", "-f", "mov", str(bomb))
    liar = folder / "liar.mov"
    shutil.copy(bomb, liar)
    declare_frame_size(liar, 320, 240)
    clip = make_clip(find_ffmpeg(None), folder / "clip.mp4", ClipSpec(seconds=1.0))
    understated = make_clip(
        find_ffmpeg(None), folder / "understated.mp4", ClipSpec(seconds=6.0, width=160, height=120)
    )
    declare_duration(understated, 1.0)
    return Hostile(
        bomb=bomb,
        liar=liar,
        big_cover_first=with_cover_first(clip, big, folder / "big cover first.mp4"),
        cover_first=with_cover_first(clip, small, folder / "cover first.mp4"),
        understated=understated,
    )


# --- the files, as the probe and FFmpeg read them ---------------------------------------------


def test_the_edits_make_what_they_claim(hostile: Hostile) -> None:
    """The hostile files are what each test says they are, as PyAV reads them unguarded."""
    with av.open(str(hostile.cover_first)) as container:
        first = container.streams[0]
        assert first.disposition & av.stream.Disposition.attached_pic
        assert (first.codec_context.width, first.codec_context.height) == (480, 640)
    with av.open(str(hostile.understated)) as container:
        video = container.streams.video[0]
        assert video.duration is not None
        assert video.time_base is not None
        assert float(video.duration * video.time_base) == pytest.approx(1.0)
        assert len(video.index_entries) == 6 * 25


def test_a_declared_frame_past_the_limits_is_refused_before_any_decode(hostile: Hostile) -> None:
    with pytest.raises(FrameTooLarge, match=rf"^is {BOMB_SIDE}{BY}{BOMB_SIDE}; {LARGEST}$"):
        probe(hostile.bomb)


def test_a_frame_larger_than_declared_fails_within_the_pixel_budget(hostile: Hostile) -> None:
    with pytest.raises(NotAVideo, match=r"^is truncated or damaged$"):
        probe(hostile.liar)


def test_the_probed_stream_is_the_video_not_the_cover_declared_before_it(
    hostile: Hostile,
) -> None:
    for path in (hostile.cover_first, hostile.big_cover_first):
        probed = probe(path)
        assert (probed.width, probed.height) == (320, 240)
        assert probed.video_stream == 1  # stream 0 is the cover


def test_the_duration_is_the_samples_not_the_headers(hostile: Hostile) -> None:
    assert probe(hostile.understated).duration_s == pytest.approx(6.0)


def test_a_stream_longer_than_the_limit_by_its_samples_is_too_long(hostile: Hostile) -> None:
    with pytest.raises(TooLong, match=r"^is 6 seconds long; the longest accepted is 3 seconds$"):
        probe(hostile.understated, MediaLimits(max_duration_s=3.0))


# --- the running service ------------------------------------------------------------------------


async def test_a_frame_bomb_is_refused_without_decoding_it(
    service: RunningService, authed: httpx.AsyncClient, hostile: Hostile
) -> None:
    async with watch_memory() as peak:
        response = await upload(authed, [hostile.bomb])
    assert response.status_code == 415, response.text
    bomb = f"{BOMB_SIDE}{BY}{BOMB_SIDE}"
    assert response.json() == {"error": f"“bomb.mov” is {bomb}; {LARGEST}."}
    assert peak.growth_mib < REFUSAL_GROWTH_MIB, f"grew {peak.growth_mib:.0f} MiB"


async def test_a_frame_past_its_header_is_refused_within_the_budget(
    service: RunningService, authed: httpx.AsyncClient, hostile: Hostile
) -> None:
    async with watch_memory() as peak:
        response = await upload(authed, [hostile.liar])
    assert response.status_code == 415, response.text
    assert response.json()["error"].startswith("“liar.mov” is truncated or damaged.")
    assert peak.growth_mib < REFUSAL_GROWTH_MIB, f"grew {peak.growth_mib:.0f} MiB"


async def test_cover_art_declared_first_is_never_what_is_encoded(
    service: RunningService, authed: httpx.AsyncClient, hostile: Hostile
) -> None:
    response = await upload(authed, [hostile.cover_first], variations="1")
    assert response.status_code == 202, response.text
    job_id = response.json()["jobId"]
    detail = await wait_for_job(authed, job_id, finished, timeout_s=120)
    assert detail["status"] == "completed", detail
    (output,) = service.state.paths.job_dir(job_id).glob("*_var1_*.mp4")
    made = probe(output)
    assert (made.width, made.height) == (320, 240)  # the cover is 480 x 640
    thumbnail = await authed.get(f"/api/jobs/{job_id}/thumbnail")
    assert thumbnail.status_code == 200
    with av.open(io.BytesIO(thumbnail.content)) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (128, 96)  # 4:3, not the cover's 3:4


async def test_a_huge_cover_costs_ffmpeg_no_memory(
    service: RunningService, authed: httpx.AsyncClient, hostile: Hostile
) -> None:
    async with watch_memory(service.state.paths.root) as peak:
        response = await upload(authed, [hostile.big_cover_first], variations="1")
        assert response.status_code == 202, response.text
        detail = await wait_for_job(authed, response.json()["jobId"], finished, timeout_s=120)
    assert detail["status"] == "completed", detail
    assert peak.encoders, "no FFmpeg was seen"
    assert peak.largest_encoder_mib < ENCODER_MIB, f"{peak.largest_encoder_mib:.0f} MiB"
    assert peak.growth_mib < REFUSAL_GROWTH_MIB, f"grew {peak.growth_mib:.0f} MiB"


async def test_a_header_that_understates_the_duration_is_refused(
    start_service: StartService, hostile: Hostile
) -> None:
    service = await start_service(max_duration_s=3.0)
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        login = await http.post("/api/auth", json={"password": TEST_PASSWORD})
        http.headers["Authorization"] = f"Bearer {login.json()['token']}"
        response = await upload(http, [hostile.understated])
    assert response.status_code == 415, response.text
    assert response.json() == {
        "error": "“understated.mp4” is 6 seconds long; the longest accepted is 3 seconds."
    }


def waiting(limiter: trio.CapacityLimiter) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return limiter.statistics().tasks_waiting > 0

    return check


async def test_probes_take_turns(
    service: RunningService, authed: httpx.AsyncClient, hostile: Hostile
) -> None:
    """An upload's check waits while every probe slot is taken (the slots bound the memory
    of all checks together, not 40 worker threads)."""
    limiter = service.state.probes
    answers: list[int] = []

    async def send() -> None:
        answers.append((await upload(authed, [hostile.cover_first], variations="1")).status_code)

    held = [object() for _ in range(int(limiter.total_tokens))]
    async with trio.open_nursery() as nursery:
        for borrower in held:
            await limiter.acquire_on_behalf_of(borrower)
        nursery.start_soon(send)
        await wait_for(waiting(limiter))
        await trio.sleep(0.2)
        assert answers == []  # still waiting for a slot
        for borrower in held:
            limiter.release_on_behalf_of(borrower)
    assert answers == [202]
