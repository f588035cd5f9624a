"""The measuring rules on known hashes, and how a source is sampled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from refresher.media import effects, encoding, measure
from refresher.media.ffmpeg import find_ffmpeg
from refresher.media.probe import probe
from tests.support.clips import ClipSpec, make_clip


def hashes(*bits_set: int) -> np.ndarray:
    """One PDQ hash per argument, with that many leading bits set."""
    rows = []
    for count in bits_set:
        bits = np.zeros(256, dtype=np.uint8)
        bits[:count] = 1
        rows.append(np.packbits(bits))
    return np.array(rows, dtype=np.uint8)


def test_distances_go_to_the_nearest_frame_whatever_its_place() -> None:
    source = hashes(0, 100, 200)
    variation = hashes(190, 10, 140)
    assert measure.nearest_distances(variation, source).tolist() == [10, 10, 40]
    median, share = measure.against(variation, source)
    assert median == 10
    assert share == pytest.approx(2 / 3, abs=1e-4)


def test_matched_means_four_frames_in_five_within_31() -> None:
    source = hashes(0, 0, 0, 0, 0)
    within = measure.Measured(*measure.against(hashes(31, 31, 31, 31, 32), source), ssim=0.9)
    assert within.source_matched
    assert within.verdict == "matches-source"
    apart = measure.Measured(*measure.against(hashes(31, 31, 31, 32, 32), source), ssim=0.9)
    assert not apart.source_matched
    assert apart.verdict == "distinct"


def test_a_sibling_matches_either_way_round() -> None:
    mine = hashes(0, 100, 200)
    # Every frame of this one lies near one of mine, though not the other way round.
    sub = hashes(5, 105, 195, 5, 105)
    nearest, matched = measure.siblings(mine, [sub])
    assert matched
    assert nearest == 5
    assert measure.siblings(mine, []) == (None, False)
    far = hashes(60, 160, 250)
    assert measure.siblings(mine, [far])[1] is False


def test_measures_round_trip_and_show_four_numbers() -> None:
    measured = measure.Measured(47.0, 0.1, 0.912, 52.0, sibling_matched=True)
    assert measure.Measured.from_json(measured.as_json()) == measured
    assert set(measured.shown()) == {"pdqMedian", "pdqMatchedShare", "ssim", "nearestSiblingPdq"}
    assert measured.verdict == "matches-sibling"
    packed = measure.Sampled(hashes(1, 2)).packed()
    assert (measure.Sampled.unpack(packed).hashes == hashes(1, 2)).all()


@pytest.mark.parametrize(
    ("duration", "size", "period", "count", "compared"),
    [
        (12.0, (1280, 720), 1.0, 12, (1280, 720)),
        (0.4, (640, 360), 1.0, 1, (640, 360)),
        (600.0, (1920, 1080), 5.0, 120, (1280, 720)),
        (30.0, (1080, 1920), 1.0, 30, (720, 1280)),
        (10.0, (3840, 2160), 1.0, 10, (1280, 720)),
        (10.0, (321, 241), 1.0, 10, (320, 240)),
    ],
)
def test_sampling(
    duration: float, size: tuple[int, int], period: float, count: int, compared: tuple[int, int]
) -> None:
    plan = measure.sampling(duration, *size)
    assert (plan.period_s, plan.count, (plan.width, plan.height)) == (period, count, compared)


@pytest.mark.parametrize("size", [(4, 4), (16, 16)])
async def test_a_tiny_video_is_measured_without_a_nan(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """SSIM's 8x8 window does not fit a 4x4 frame: no score, never NaN (not JSON)."""
    ffmpeg = find_ffmpeg(None)
    source = make_clip(ffmpeg, tmp_path / "tiny.mp4", ClipSpec(width=size[0], height=size[1]))
    probed = probe(source)
    plan = measure.sampling(probed.duration_s, probed.width, probed.height)
    output = tmp_path / "v.mp4"
    reference = encoding.Reference(tmp_path / "ref.mkv", plan)
    chosen = effects.draw(
        effects.Strength.STRONG, effects.Frame(probed.width, probed.height, probed.fps, True),
        seed=1, position=0, index=1,
    )  # fmt: skip
    await encoding.encode_variations(
        ffmpeg, source, [encoding.Variation(output, chosen)], probed=probed,
        on_progress=lambda _: None, reference=reference,
    )  # fmt: skip
    source_samples, [sample] = measure.sample_batch(
        reference.path, plan, [measure.Wanted(output)], source_still=None
    )
    measured = measure.measure(source_samples, sample, [])
    json.dumps(measured.as_json(), allow_nan=False)
    assert measured.ssim is None or 0 < measured.ssim <= 1
