"""Strength levels: every draw is valid, fits its frame, and FFmpeg makes it into a video
of the right duration with its sound (a property test over many seeds)."""

from __future__ import annotations

import math
from pathlib import Path

import av
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refresher.media import effects, encoding, filtergraph, geometry, measure
from refresher.media.effects import Effects, Frame, Strength
from refresher.media.ffmpeg import find_ffmpeg
from refresher.media.probe import Probe, probe
from tests.support.clips import ClipSpec, make_clip

ABOVE_SUBTLE = [Strength.STANDARD, Strength.STRONG]
frames = st.builds(
    Frame,
    width=st.integers(16, 3840),
    height=st.integers(16, 3840),
    fps=st.sampled_from([12.0, 23.976, 25.0, 29.97, 30.0, 60.0]),
    has_audio=st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(
    strength=st.sampled_from(ABOVE_SUBTLE),
    frame=frames,
    seed=st.integers(0, 2**63 - 1),
    index=st.integers(1, 20),
    attempt=st.integers(1, 4),
    mirror=st.booleans(),
)
def test_every_draw_fits_its_frame(
    strength: Strength, frame: Frame, seed: int, index: int, attempt: int, mirror: bool
) -> None:
    drawn = effects.draw(
        strength, frame, seed=seed, position=0, index=index, attempt=attempt, mirror=mirror
    )
    # The same arguments draw the same set; it survives its own JSON form.
    again = effects.draw(
        strength, frame, seed=seed, position=0, index=index, attempt=attempt, mirror=mirror
    )
    assert drawn == again
    assert Effects.from_dict(drawn.as_dict()) == drawn
    recipe = effects.RECIPES[strength]
    assert recipe.zoom.low <= drawn.zoom <= recipe.zoom.high
    # Rotation only as far as the crop leaves picture in every corner: the region the
    # graph cuts lies inside the frame.
    cut = geometry.window(
        frame.width, frame.height, zoom=drawn.zoom, anchor_x=drawn.anchor_x,
        anchor_y=drawn.anchor_y, rotation_rad=drawn.rotation_rad,
    )  # fmt: skip
    assert cut.x >= 0
    assert cut.y >= 0
    assert cut.x + cut.region_w <= geometry.even(frame.width)
    assert cut.y + cut.region_h <= geometry.even(frame.height)
    assert abs(drawn.rotation_rad) <= recipe.max_rotation_rad + 1e-5
    # Duration within 5 % of the source; never a frame rate above the source's.
    assert abs(1 / drawn.speed - 1) <= 0.05
    assert drawn.fps == 0 or drawn.fps < frame.fps
    assert drawn.mirror is False or mirror
    if not frame.has_audio:
        assert (drawn.audio_gain_db, drawn.eq_hz, drawn.eq_gain_db) == (0.0, 0, 0.0)
    probed = Probe(10.0, frame.width, frame.height, frame.fps, frame.has_audio, "h264")
    assert "crop=" in filtergraph.variation_filter(drawn, probed)


def test_tries_and_variations_draw_apart() -> None:
    frame = Frame(1280, 720, 30.0, True)
    drawn = {
        effects.draw(Strength.STRONG, frame, seed=9, position=p, index=i, attempt=a)
        for p in range(2)
        for i in range(1, 11)
        for a in range(1, 4)
    }
    assert len(drawn) == 60


def test_mirroring_is_drawn_only_when_opted_in() -> None:
    frame = Frame(1280, 720, 30.0, True)
    plain = [effects.draw(Strength.STRONG, frame, seed=s, position=0, index=1) for s in range(200)]
    assert not any(e.mirror for e in plain)
    opted = [
        effects.draw(Strength.STRONG, frame, seed=s, position=0, index=1, mirror=True)
        for s in range(200)
    ]
    assert 60 <= sum(e.mirror for e in opted) <= 140


def test_subtle_is_the_original_draw_and_records_only_its_four_effects() -> None:
    with pytest.raises(ValueError, match="subtle effects come from generate"):
        effects.draw(Strength.SUBTLE, Frame(640, 360, 30.0, True), seed=1, position=0, index=1)
    for chosen in effects.generate(5, 20):
        assert set(chosen.as_dict()) == {"rotation_rad", "brightness", "contrast", "saturation"}
        assert not chosen.cropped


def test_old_records_and_bad_fields() -> None:
    old = {"rotation_rad": 0.005, "brightness": 0.01, "contrast": 1.0, "saturation": 1.0}
    assert Effects.from_dict(old).zoom == 1.0
    strong = effects.draw(
        Strength.STRONG, Frame(1280, 720, 30.0, True), seed=1, position=0, index=1
    )
    with pytest.raises(ValueError, match=r"^speed must be from 0.96 to 1.04"):
        Effects.from_dict({**strong.as_dict(), "speed": 1.5})
    with pytest.raises(ValueError, match=r"^mirror must be true or false"):
        Effects.from_dict({**strong.as_dict(), "mirror": 1})
    with pytest.raises(ValueError, match=r"^grain must be a whole number"):
        Effects.from_dict({**strong.as_dict(), "grain": 2.5})


def test_a_rotation_the_zoom_has_no_room_for_is_refused() -> None:
    room = geometry.max_rotation(1280, 720, 1.03)
    assert 0 < room < 0.03
    with pytest.raises(ValueError, match="does not fit"):
        geometry.window(1280, 720, zoom=1.03, anchor_x=0.5, anchor_y=0.5, rotation_rad=room * 2)


# --- through FFmpeg -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Probe]:
    """A 2 s 192x108 clip with sound; and a flat grey one for the corners."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.mp4"
    make_clip(find_ffmpeg(None), path, ClipSpec(seconds=2.0, width=192, height=108))
    return path, probe(path)


def _durations(path: Path) -> tuple[float, float | None]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        assert video.duration is not None
        assert video.time_base is not None
        seconds = float(video.duration * video.time_base)
        if audio is None or audio.duration is None or audio.time_base is None:
            return seconds, None
        return seconds, float(audio.duration * audio.time_base)


@pytest.mark.slow
@settings(
    max_examples=16, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(strength=st.sampled_from(list(Strength)), seed=st.integers(0, 2**31), mirror=st.booleans())
def test_every_strength_makes_a_whole_video_with_its_sound(
    tiny: tuple[Path, Probe], tmp_path: Path, strength: Strength, seed: int, mirror: bool
) -> None:
    source, probed = tiny
    frame = Frame(probed.width, probed.height, probed.fps, probed.has_audio)
    if strength == Strength.SUBTLE:
        chosen = effects.generate(seed, 2)
    else:
        chosen = [
            effects.draw(strength, frame, seed=seed, position=0, index=i, mirror=mirror)
            for i in (1, 2)
        ]
    outputs = [tmp_path / f"{seed}-{i}.mp4" for i in (1, 2)]
    plan = measure.sampling(probed.duration_s, probed.width, probed.height)

    async def make() -> None:
        await encoding.encode_variations(
            find_ffmpeg(None), source,
            [encoding.Variation(path, e) for path, e in zip(outputs, chosen, strict=True)],
            probed=probed, on_progress=lambda _: None,
            reference=encoding.Reference(tmp_path / f"{seed}-ref.mkv", plan),
        )  # fmt: skip

    trio.run(make)
    for path, drawn in zip(outputs, chosen, strict=True):
        video_s, audio_s = _durations(path)
        assert math.isclose(video_s, probed.duration_s, rel_tol=0.05), (video_s, drawn)
        assert audio_s is not None, "the source has sound; so must every variation"
        # In sync: the sound lasts as long as the pictures (an AAC frame's slack).
        assert abs(audio_s - video_s) <= 0.1, (audio_s, video_s, drawn)
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.width == probed.width


@pytest.mark.slow
async def test_no_black_corners_at_strong(tmp_path: Path) -> None:
    """A flat grey source stays grey to its very corners at the strongest tilt."""
    source = tmp_path / "grey.mp4"
    make_clip(
        find_ffmpeg(None), source,
        ClipSpec(
            seconds=1.0, width=320, height=180, pattern="color", audio=False,
            video_filter="lutyuv=y=128:u=128:v=128",
        ),
    )  # fmt: skip
    probed = probe(source)
    frame = Frame(probed.width, probed.height, probed.fps, False)
    chosen = []
    for seed in range(200):
        drawn = effects.draw(Strength.STRONG, frame, seed=seed, position=0, index=1)
        if abs(drawn.rotation_rad) > 0.03:
            chosen.append(drawn)
        if len(chosen) == 3:
            break
    outputs = [tmp_path / f"v{i}.mp4" for i in range(len(chosen))]
    await encoding.encode_variations(
        find_ffmpeg(None), source,
        [encoding.Variation(path, e) for path, e in zip(outputs, chosen, strict=True)],
        probed=probed, on_progress=lambda _: None,
    )  # fmt: skip
    for path in outputs:
        with av.open(str(path)) as container:
            for picture in container.decode(video=0):
                luma = picture.to_ndarray(format="gray")
                corners = [luma[0, 0], luma[0, -1], luma[-1, 0], luma[-1, -1]]
                assert min(corners) > 80, corners
