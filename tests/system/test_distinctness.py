"""Variations that are measurably distinct, measured by the service itself on natural footage.

Ten variations of a pan across photographs at each strength, through the real service:
at `strong` at least 9 are not matched to their source (80 % of frames within PDQ 31)
and no two match each other; at `standard` at least 7 are not matched; at `subtle` the
lowest SSIM is no lower than the original's method gives on the same clip with the same
effects, measured the same way. The numbers the API reports must agree with PDQ computed
independently on the downloaded files: FFmpeg's own decoder picking a frame each second
(`fps=1:round=up`: the first frame of each second, as vPDQ samples; plain `fps=1` picks
the frame nearest each half second), at full size, hashed by `pdqhash`.
"""

from __future__ import annotations

import io
import json
import statistics
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pdqhash
import pytest
import trio

from refresher.config import Config
from refresher.media import effects, measure
from refresher.media.ffmpeg import find_ffmpeg
from refresher.media.probe import probe
from tests.support.footage import make_footage
from tests.support.http import StartService, wait_for_job

pytestmark = pytest.mark.slow

VARIATIONS = 10


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The issue's clip: a 12 s 720p pan across photographs, with sound. (At 360p our
    nearest-neighbour rotation only ties the original's bilinear one on SSIM, -0.002 to
    +0.003; at 720p it is ahead by 0.006 to 0.011 with the same effects.)"""
    path = tmp_path_factory.mktemp("footage720") / "pan.mp4"
    return make_footage(find_ffmpeg(None), path, width=1280, height=720, seconds=12.0)


# How far the service's median PDQ distance may lie from an independent computation (of
# 256 bits): the service hashes keyframes at most 512 px wide, the check every frame at
# 1 fps at full size, so single frames differ by a few bits.
PDQ_AGREEMENT = 8.0


def outputs_of(detail: dict[str, Any]) -> list[dict[str, Any]]:
    return [output for file in detail["files"] for output in file["outputs"]]


def not_matched(outputs: list[dict[str, Any]]) -> int:
    return sum(out["measured"]["pdqMatchedShare"] < measure.MATCH_SHARE for out in outputs)


async def run_job(http: httpx.AsyncClient, footage: Path, strength: str) -> dict[str, Any]:
    files = [("videos", ("pan.mp4", await trio.Path(footage).read_bytes(), "video/mp4"))]
    data = {"variations": str(VARIATIONS), "strength": strength}
    response = await http.post("/api/jobs", files=files, data=data)
    assert response.status_code == 202, response.text
    assert response.json()["strength"] == strength
    return await wait_for_job(
        http, response.json()["jobId"], lambda d: d["status"] == "completed", timeout_s=600
    )


def independent_hashes(ffmpeg: str, video: Path) -> np.ndarray:
    """PDQ of the frame FFmpeg picks each second, at full size (none of our code)."""
    [stream] = [s for s in [probe(video)]]
    width, height = stream.width - stream.width % 2, stream.height - stream.height % 2
    raw = subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(video), "-vf",
         f"fps=1:round=up,scale={width}:{height},format=rgb24", "-f", "rawvideo", "-"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    frames = np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)
    return np.array([np.packbits(pdqhash.compute(frame)[0].astype(np.uint8)) for frame in frames])


def original_ssims(
    ffmpeg: str, footage: Path, work: Path, chosen_effects: list[effects.Effects]
) -> list[float]:
    """SSIM to the source of the original's method (`rotate` with black corners, `eq`,
    its x264 arguments) with the same effects, measured as the service measures its own."""
    probed = probe(footage)
    plan = measure.sampling(probed.duration_s, probed.width, probed.height)
    reference = work / "reference.mkv"
    subprocess.run([ffmpeg, *measure.reference_args(footage, plan, reference)], check=True)
    outputs = []
    for index, chosen in enumerate(chosen_effects):
        output = work / f"original{index}.mp4"
        subprocess.run(
            [ffmpeg, "-v", "error", "-y", "-i", str(footage), "-vf",
             f"rotate={chosen.rotation_rad}:fillcolor=black@0,eq=brightness={chosen.brightness}"
             f":contrast={chosen.contrast}:saturation={chosen.saturation}",
             "-r", "29.97", "-b:v", "2000k", "-bufsize", "4000k", "-maxrate", "2500k",
             "-preset", "ultrafast", "-crf", "23", "-pix_fmt", "yuv420p", str(output)],
            check=True,
        )  # fmt: skip
        outputs.append(measure.Wanted(output, keyframes_only=False))
    _, sampled = measure.sample_batch(reference, plan, outputs, source_still=None)
    return [sample.ssim for sample in sampled if sample.ssim is not None]


async def test_strengths_are_measurably_distinct(
    start_service: StartService, config: Config, footage: Path, tmp_path: Path
) -> None:
    ffmpeg = find_ffmpeg(None)
    service = await start_service()
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as http:
        login = await http.post("/api/auth", json={"password": config.auth_password})
        http.headers["Authorization"] = f"Bearer {login.json()['token']}"
        jobs = {strength: await run_job(http, footage, strength) for strength in effects.Strength}

        strong = outputs_of(jobs["strong"])
        assert all(out["measured"] is not None for out in strong)
        assert not_matched(strong) >= 9, [out["measured"] for out in strong]
        assert all(out["verdict"] != "matches-sibling" for out in strong), strong
        standard = outputs_of(jobs["standard"])
        assert not_matched(standard) >= 7, [out["measured"] for out in standard]
        subtle = outputs_of(jobs["subtle"])
        # Subtle is byte-distinct only: a perceptual hash still matches it to its source.
        assert all(out["verdict"] == "matches-source" for out in subtle)
        assert all(out["attempts"] == 1 for out in subtle)
        lowest = min(out["measured"]["ssim"] for out in subtle)
        drawn = [effects.Effects.from_dict(out["effects"]) for out in subtle]
        originals = await trio.to_thread.run_sync(original_ssims, ffmpeg, footage, tmp_path, drawn)
        assert lowest >= min(originals), (lowest, originals)

        # What the ZIP holds agrees with what the API says, and with an independent PDQ.
        detail = jobs["strong"]
        archive = (await http.get(detail["downloadUrl"])).content
        with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
            manifest = json.loads(zipped.read("manifest.json"))
            assert manifest["strength"] == "strong"
            by_index = {v["variation"]: v for v in manifest["variations"]}
            source_hashes = await trio.to_thread.run_sync(independent_hashes, ffmpeg, footage)
            for out in strong:
                assert by_index[out["variationIndex"]]["measured"] == out["measured"]
                path = tmp_path / out["name"]
                path.write_bytes(zipped.read(by_index[out["variationIndex"]]["file"]))
                hashes = await trio.to_thread.run_sync(independent_hashes, ffmpeg, path)
                median, share = measure.against(hashes, source_hashes)
                reported = out["measured"]
                assert abs(median - reported["pdqMedian"]) <= PDQ_AGREEMENT, (median, reported)
                assert (share >= measure.MATCH_SHARE) == (
                    reported["pdqMatchedShare"] >= measure.MATCH_SHARE
                ), (share, reported)

        # The comparison view's stills: the source and each variation at the same moment.
        file = detail["files"][0]
        for url in [file["stillUrl"], *(out["stillUrl"] for out in strong)]:
            response = await http.get(url, headers={"Authorization": ""})
            assert response.status_code == 200
            assert response.headers["content-type"] == "image/jpeg"
            assert response.content[:2] == b"\xff\xd8"
        medians = [out["measured"]["pdqMedian"] for out in strong]
        print(f"strong pdqMedian median {statistics.median(medians)}")
