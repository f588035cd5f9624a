"""The random mix of effects that makes one variation of a video distinct, at a strength.

`subtle` (the original's set): a real rotation of 0.001 to 0.01 rad (0.06 to 0.57
degrees) either way, and brightness, contrast and saturation nudged by up to 5 %.
`generate` draws them from the job's seed, so a job that resumes after a restart draws
the same list again and the variations it already made stay valid. No two sets in a list
share brightness, contrast and saturation: so any two variations differ in FFmpeg's
filter graph, even where two rotations come out as the same whole-pixel shifts. Measured
on natural footage, such variations are byte-distinct only: every frame still matches
its source under PDQ (median distance 2 to 10 of 256; 31 is "the same image").

`standard` and `strong` (`draw`) move perceptual hashes while a viewer still sees the
same ad: a crop-zoom of a few percent anchored anywhere, turned by a small angle only as
far as the crop leaves picture in every corner (`refresher.media.geometry`), hue, gamma and a
colour tint, fine grain, a speed change of a few percent with the audio's tempo matched
(pitch and sync hold), a small gain and equaliser change, and a frame rate. Measured on
natural footage: a centred 3 % crop-zoom gives a median PDQ distance of 33, 5 % gives
45, an off-centre 5 % gives 86, and hue, gamma and grain alone stay under 5; so the
geometry does the work, the rest keeps siblings apart in bytes and sound. Mirroring
(about 120) flips text and logos, so it is drawn only when the job opts in.

Every value is rounded when drawn to the decimals FFmpeg is given. Fields a strength does
not use keep their neutral value and are left out of `as_dict` (so a `subtle` variation
records exactly the original's four effects).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from refresher.media import geometry

MIN_ROTATION_RAD = 0.001
MAX_ROTATION_RAD = 0.01
MAX_BRIGHTNESS = 0.05
MIN_CONTRAST, MAX_CONTRAST = 0.95, 1.05
MIN_SATURATION, MAX_SATURATION = 0.95, 1.05
# More variations than a job can hold (10 videos x 20); a bound keeps a bad argument
# from drawing forever.
MAX_COUNT = 1000


class Strength(enum.StrEnum):
    SUBTLE = "subtle"
    STANDARD = "standard"
    STRONG = "strong"


# What each strength changes, in one line for people (the page and `GET /api/config`).
DESCRIPTIONS = {
    Strength.SUBTLE: "A tiny rotation and colour nudge: new files that look identical, "
    "though a perceptual hash still matches them to the source.",
    Strength.STANDARD: "Adds a small crop-zoom, hue and gamma shifts, fine grain and a "
    "slightly different speed and sound: the same ad, distinct to a perceptual hash.",
    Strength.STRONG: "A larger crop-zoom and tilt, stronger colour, grain, speed and "
    "sound changes: still the same ad, and distinct from each other too.",
}


@dataclass(frozen=True)
class Range:
    low: float
    high: float

    def draw(self, rng: random.Random, decimals: int) -> float:
        return round(rng.uniform(self.low, self.high), decimals)


@dataclass(frozen=True)
class Recipe:
    """What `standard` or `strong` draws from."""

    zoom: Range
    # The rotation's share of the room the zoom leaves, and a cap in radians.
    rotation_share: Range
    max_rotation_rad: float
    brightness: Range
    contrast: Range
    saturation: Range
    gamma: Range
    hue_deg: Range
    tint: Range
    grain: tuple[int, int]
    speed: Range
    audio_gain_db: Range
    eq_gain_db: Range


RECIPES = {
    Strength.STANDARD: Recipe(
        zoom=Range(1.03, 1.06), rotation_share=Range(0.3, 1.0), max_rotation_rad=0.0175,
        brightness=Range(-0.03, 0.03), contrast=Range(0.96, 1.04),
        saturation=Range(0.94, 1.06), gamma=Range(0.94, 1.06), hue_deg=Range(-5, 5),
        tint=Range(-3, 3), grain=(1, 3), speed=Range(0.975, 1.025),
        audio_gain_db=Range(-1.5, 1.5), eq_gain_db=Range(-2, 2),
    ),
    Strength.STRONG: Recipe(
        zoom=Range(1.06, 1.12), rotation_share=Range(0.4, 1.0), max_rotation_rad=0.0436,
        brightness=Range(-0.05, 0.05), contrast=Range(0.93, 1.07),
        saturation=Range(0.9, 1.1), gamma=Range(0.9, 1.1), hue_deg=Range(-10, 10),
        tint=Range(-5, 5), grain=(3, 6), speed=Range(0.96, 1.04),
        audio_gain_db=Range(-3, 3), eq_gain_db=Range(-4, 4),
    ),
}  # fmt: skip
# Frame rates a variation may take (never above its source's); 0 keeps the source's.
FRAME_RATES = (24.0, 25.0, 30.0)
# Centre frequencies (Hz) the equaliser may act on.
EQ_BANDS = (125, 250, 500, 1000, 2000, 4000)

# Bounds every variation is checked against (the widest any strength draws): a stored
# or hand-made set outside them is refused.
BOUNDS: dict[str, tuple[float, float]] = {
    "brightness": (-MAX_BRIGHTNESS, MAX_BRIGHTNESS),
    "contrast": (0.93, 1.07),
    "saturation": (0.9, 1.1),
    "zoom": (1.0, 1.12),
    "anchor_x": (0.0, 1.0),
    "anchor_y": (0.0, 1.0),
    "gamma": (0.9, 1.1),
    "hue_deg": (-10.0, 10.0),
    "tint_u": (-5.0, 5.0),
    "tint_v": (-5.0, 5.0),
    "grain": (0, 6),
    "speed": (0.96, 1.04),
    "fps": (0.0, 120.0),
    "audio_gain_db": (-3.0, 3.0),
    "eq_hz": (0, 4000),
    "eq_gain_db": (-4.0, 4.0),
}
# Decimals kept per field: the filter graph's precision. 1e-5 rad moves a corner of a
# 4K frame by 0.02 px, finer than the whole-pixel shifts it becomes.
DECIMALS = {
    "rotation_rad": 5, "brightness": 3, "contrast": 3, "saturation": 3, "zoom": 4,
    "anchor_x": 3, "anchor_y": 3, "gamma": 3, "hue_deg": 2, "tint_u": 1, "tint_v": 1,
    "grain": 0, "speed": 4, "fps": 3, "audio_gain_db": 2, "eq_hz": 0, "eq_gain_db": 2,
}  # fmt: skip
# The original's four effects: always recorded.
CORE = ("rotation_rad", "brightness", "contrast", "saturation")


@dataclass(frozen=True)
class Effects:
    """One variation's effects, as FFmpeg applies them.

    `rotation_rad` is clockwise when positive (FFmpeg's `rotate` convention); `brightness`
    is added to luma on a -1..1 scale; `contrast`, `saturation` and `gamma` are factors.
    `zoom` > 1 shows a window that much smaller, placed by `anchor_x`/`anchor_y` (0..1);
    `hue_deg` turns hue; `tint_u`/`tint_v` shift the chroma planes (8-bit steps); `grain`
    is FFmpeg `noise` strength on luma; `speed` > 1 is faster (audio tempo matched);
    `fps` 0 keeps the source's rate; `eq_hz` 0 means no equaliser band.
    """

    rotation_rad: float
    brightness: float
    contrast: float
    saturation: float
    zoom: float = 1.0
    anchor_x: float = 0.5
    anchor_y: float = 0.5
    gamma: float = 1.0
    hue_deg: float = 0.0
    tint_u: float = 0.0
    tint_v: float = 0.0
    grain: int = 0
    speed: float = 1.0
    fps: float = 0.0
    audio_gain_db: float = 0.0
    eq_hz: int = 0
    eq_gain_db: float = 0.0
    mirror: bool = False

    def __post_init__(self) -> None:
        if self.zoom == 1.0:
            # Uncropped: the original's rotation, inside a frame padded by its own edges.
            _check("rotation_rad", abs(self.rotation_rad), MIN_ROTATION_RAD, MAX_ROTATION_RAD)
        else:
            _check(
                "rotation_rad",
                abs(self.rotation_rad),
                0.0,
                RECIPES[Strength.STRONG].max_rotation_rad,
            )
        for name, (low, high) in BOUNDS.items():
            _check(name, getattr(self, name), low, high)
        if self.fps and self.fps < 1:
            raise ValueError(f"fps must be 0 (the source's) or at least 1, got {self.fps!r}")

    @property
    def cropped(self) -> bool:
        """Whether this variation takes the crop-zoom path (`standard` and `strong`)."""
        return self.zoom != 1.0

    def as_dict(self) -> dict[str, Any]:
        """The effects as a JSON-ready dict (the manifest's and the database's form): the
        original's four always, the others where they differ from neutral."""
        neutral = Effects(rotation_rad=0.001, brightness=0.0, contrast=1.0, saturation=1.0)
        return {
            field.name: getattr(self, field.name)
            for field in fields(self)
            if field.name in CORE or getattr(self, field.name) != getattr(neutral, field.name)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Effects:
        """Rebuild effects from `as_dict()` output; raise ValueError naming a bad field."""
        names = [field.name for field in fields(cls)]
        missing = [name for name in CORE if name not in data]
        if missing:
            raise ValueError(f"effects lack {', '.join(missing)}")
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"effects have unknown fields {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name == "mirror":
                if not isinstance(value, bool):
                    raise ValueError(f"mirror must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            elif name in ("grain", "eq_hz"):
                if value != int(value):
                    raise ValueError(f"{name} must be a whole number, got {value!r}")
                value = int(value)
            else:
                value = float(value)
            values[name] = value
        return cls(**values)


def _check(name: str, value: float, low: float, high: float) -> None:
    # A tolerance of half the last kept decimal, so rounded bounds still pass.
    slack = 0.5 * 10 ** -DECIMALS[name]
    if not low - slack <= value <= high + slack:
        if name == "rotation_rad":
            raise ValueError(f"rotation_rad must be {low} to {high} either way, got {value!r}")
        raise ValueError(f"{name} must be from {low} to {high}, got {value!r}")


def _draw_subtle(rng: random.Random) -> Effects:
    def rounded(name: str, value: float) -> float:
        return round(value, DECIMALS[name])

    sign = rng.choice((-1.0, 1.0))
    return Effects(
        rotation_rad=rounded(
            "rotation_rad", sign * rng.uniform(MIN_ROTATION_RAD, MAX_ROTATION_RAD)
        ),
        brightness=rounded("brightness", rng.uniform(-MAX_BRIGHTNESS, MAX_BRIGHTNESS)),
        contrast=rounded("contrast", rng.uniform(MIN_CONTRAST, MAX_CONTRAST)),
        saturation=rounded("saturation", rng.uniform(MIN_SATURATION, MAX_SATURATION)),
    )


def generate(seed: int, count: int) -> list[Effects]:
    """Draw `count` distinct `subtle` effect sets from `seed`; the same seed gives the same
    list.

    Variation N's effects depend only on the seed and N, never on `count`, so a job may
    draw its whole list again after a restart and continue where it stopped.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be an int, got {count!r}")
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be from 1 to {MAX_COUNT}, got {count}")
    rng = random.Random(seed)
    drawn: list[Effects] = []
    colours: set[tuple[float, float, float]] = set()
    while len(drawn) < count:
        effects = _draw_subtle(rng)
        colour = (effects.brightness, effects.contrast, effects.saturation)
        # One in a million per pair (101³ colours); 1000 sets repeat one about half the time.
        if colour not in colours:
            colours.add(colour)
            drawn.append(effects)
    return drawn


@dataclass(frozen=True)
class Frame:
    """What a draw needs to know of its source: size, frame rate, whether it has sound."""

    width: int
    height: int
    fps: float
    has_audio: bool


def draw(
    strength: Strength,
    frame: Frame,
    *,
    seed: int,
    position: int,
    index: int,
    attempt: int = 1,
    mirror: bool = False,
) -> Effects:
    """Draw variation `index` (1-based) of the file at `position` at `strength`, try
    `attempt` (1-based: each try is the next seed); the same arguments give the same set.

    `mirror` allows mirroring (the job opted in): about half the variations are then
    mirrored. `frame` bounds the rotation by the room its zoom leaves, and its frame
    rate and sound decide which rate and audio changes apply.
    """
    if strength == Strength.SUBTLE:
        raise ValueError("subtle effects come from generate(), the original's draw")
    recipe = RECIPES[strength]
    rng = random.Random(f"{seed}:{strength}:{position}:{index}:{attempt}")
    zoom = recipe.zoom.draw(rng, DECIMALS["zoom"])
    room = geometry.max_rotation(frame.width, frame.height, zoom)
    limit = min(room, recipe.max_rotation_rad)
    rotation = rng.choice((-1.0, 1.0)) * recipe.rotation_share.draw(rng, 6) * limit
    rates = [0.0, *(rate for rate in FRAME_RATES if rate < frame.fps - 0.5)]
    chosen_rate = rng.choice(rates)
    gain = recipe.audio_gain_db.draw(rng, DECIMALS["audio_gain_db"])
    band = rng.choice(EQ_BANDS)
    band_gain = recipe.eq_gain_db.draw(rng, DECIMALS["eq_gain_db"])
    flipped = mirror and rng.random() < 0.5
    return Effects(
        rotation_rad=round(rotation, DECIMALS["rotation_rad"]),
        brightness=recipe.brightness.draw(rng, DECIMALS["brightness"]),
        contrast=recipe.contrast.draw(rng, DECIMALS["contrast"]),
        saturation=recipe.saturation.draw(rng, DECIMALS["saturation"]),
        zoom=zoom,
        anchor_x=Range(0, 1).draw(rng, DECIMALS["anchor_x"]),
        anchor_y=Range(0, 1).draw(rng, DECIMALS["anchor_y"]),
        gamma=recipe.gamma.draw(rng, DECIMALS["gamma"]),
        hue_deg=recipe.hue_deg.draw(rng, DECIMALS["hue_deg"]),
        tint_u=recipe.tint.draw(rng, DECIMALS["tint_u"]),
        tint_v=recipe.tint.draw(rng, DECIMALS["tint_v"]),
        grain=rng.randint(*recipe.grain),
        speed=recipe.speed.draw(rng, DECIMALS["speed"]),
        fps=chosen_rate,
        audio_gain_db=gain if frame.has_audio else 0.0,
        eq_hz=band if frame.has_audio else 0,
        eq_gain_db=band_gain if frame.has_audio else 0.0,
        mirror=flipped,
    )
