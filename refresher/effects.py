"""The random mix of effects that makes one variation of a video distinct.

Every effect is small enough that people see the same ad: a real rotation of 0.001 to
0.01 rad (0.06 to 0.57 degrees) either way, and brightness, contrast and saturation
nudged by up to 5 %. `generate` draws them from a seed, so a job that resumes after a
restart draws the same list again and the variations it already made stay valid.

Values are rounded when drawn to the decimals FFmpeg is given, and no two sets in a list
share brightness, contrast and saturation: so any two variations differ in FFmpeg's
filter graph, even where two rotations come out as the same whole-pixel shifts.

Left out on purpose (measured on a 10 s 720p clip): a zoom/crop of even 1 % costs more
SSIM to the source (-0.035) than the largest rotation; FFmpeg's `hue` filter costs 10 %
more CPU per variation for a change nobody asked to see; noise eats the bitrate the
picture needs; a speed change shifts every later frame and needs resampled audio.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

MIN_ROTATION_RAD = 0.001
MAX_ROTATION_RAD = 0.01
MAX_BRIGHTNESS = 0.05
MIN_CONTRAST, MAX_CONTRAST = 0.95, 1.05
MIN_SATURATION, MAX_SATURATION = 0.95, 1.05
# More variations than a job can hold (10 videos x 20); a bound keeps a bad argument
# from drawing forever.
MAX_COUNT = 1000

# Decimals kept per field: the filter graph's precision. 1e-5 rad moves a corner of a
# 4K frame by 0.02 px, finer than the whole-pixel shifts it becomes.
DECIMALS = {
    "rotation_rad": 5,
    "brightness": 3,
    "contrast": 3,
    "saturation": 3,
}


@dataclass(frozen=True)
class Effects:
    """One variation's effects, as FFmpeg applies them.

    `rotation_rad` is clockwise when positive (FFmpeg's `rotate` convention); `brightness`
    is added to luma on a -1..1 scale; `contrast` and `saturation` are factors.
    """

    rotation_rad: float
    brightness: float
    contrast: float
    saturation: float

    def __post_init__(self) -> None:
        _check_range("rotation_rad", abs(self.rotation_rad), MIN_ROTATION_RAD, MAX_ROTATION_RAD)
        _check_range("brightness", self.brightness, -MAX_BRIGHTNESS, MAX_BRIGHTNESS)
        _check_range("contrast", self.contrast, MIN_CONTRAST, MAX_CONTRAST)
        _check_range("saturation", self.saturation, MIN_SATURATION, MAX_SATURATION)

    def as_dict(self) -> dict[str, float]:
        """Return the effects as a JSON-ready dict (the manifest's and the database's form)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Effects:
        """Rebuild effects from `as_dict()` output; raise ValueError naming a bad field."""
        names = [field.name for field in fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise ValueError(f"effects lack {', '.join(missing)}")
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"effects have unknown fields {', '.join(unknown)}")
        values: dict[str, float] = {}
        for name in names:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            values[name] = float(value)
        return cls(**values)


def _check_range(name: str, value: float, low: float, high: float) -> None:
    # A tolerance of half the last kept decimal, so rounded bounds still pass.
    slack = 0.5 * 10 ** -DECIMALS[name]
    if not low - slack <= value <= high + slack:
        if name == "rotation_rad":
            raise ValueError(f"rotation_rad must be {low} to {high} either way, got {value!r}")
        raise ValueError(f"{name} must be from {low} to {high}, got {value!r}")


def _draw(rng: random.Random) -> Effects:
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
    """Draw `count` distinct effect sets from `seed`; the same seed gives the same list.

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
        effects = _draw(rng)
        colour = (effects.brightness, effects.contrast, effects.saturation)
        # One in a million per pair (101³ colours); 1000 sets repeat one about half the time.
        if colour not in colours:
            colours.add(colour)
            drawn.append(effects)
    return drawn
