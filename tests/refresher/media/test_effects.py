from __future__ import annotations

import json

import pytest

from refresher.media import effects
from refresher.media.effects import DECIMALS, Effects


def test_same_seed_draws_the_same_list() -> None:
    assert effects.generate(42, 20) == effects.generate(42, 20)
    assert effects.generate(42, 20) != effects.generate(43, 20)


def test_a_variation_does_not_depend_on_how_many_are_drawn() -> None:
    # A job that resumes draws its whole list again: the first five must not move.
    assert effects.generate(7, 5) == effects.generate(7, 20)[:5]


def test_every_set_is_distinct_at_the_filter_graph_precision() -> None:
    drawn = effects.generate(1, effects.MAX_COUNT)
    rounded = {
        tuple(round(value, DECIMALS[name]) for name, value in e.as_dict().items()) for e in drawn
    }
    assert len(rounded) == effects.MAX_COUNT
    # The colour alone tells any two apart: rotations may become the same pixel shifts.
    assert len({(e.brightness, e.contrast, e.saturation) for e in drawn}) == effects.MAX_COUNT
    for chosen in drawn:
        for name, value in chosen.as_dict().items():
            assert value == round(value, DECIMALS[name]), name


def test_effects_stay_within_their_ranges_and_rotate_both_ways() -> None:
    drawn = effects.generate(3, effects.MAX_COUNT)
    assert all(0.001 <= abs(e.rotation_rad) <= 0.01 for e in drawn)
    assert all(-0.05 <= e.brightness <= 0.05 for e in drawn)
    assert all(0.95 <= e.contrast <= 1.05 for e in drawn)
    assert all(0.95 <= e.saturation <= 1.05 for e in drawn)
    clockwise = sum(e.rotation_rad > 0 for e in drawn)
    # 1000 fair coin flips: fewer than 400 of one side has odds below 1e-9.
    assert 400 < clockwise < 600


def test_effects_round_trip_through_json() -> None:
    for chosen in effects.generate(5, 10):
        assert Effects.from_dict(json.loads(json.dumps(chosen.as_dict()))) == chosen


def test_from_dict_names_the_bad_field() -> None:
    good = effects.generate(5, 1)[0].as_dict()
    with pytest.raises(ValueError, match=r"^effects lack saturation$"):
        Effects.from_dict({k: v for k, v in good.items() if k != "saturation"})
    with pytest.raises(ValueError, match=r"^effects have unknown fields sharpen$"):
        Effects.from_dict({**good, "sharpen": 1.02})
    with pytest.raises(ValueError, match=r"^contrast must be a number, got '1.0'$"):
        Effects.from_dict({**good, "contrast": "1.0"})
    with pytest.raises(ValueError, match=r"^brightness must be from -0.05 to 0.05, got 0.2$"):
        Effects.from_dict({**good, "brightness": 0.2})
    with pytest.raises(
        ValueError, match=r"^rotation_rad must be 0.001 to 0.01 either way, got 0.0$"
    ):
        Effects.from_dict({**good, "rotation_rad": 0})


def test_generate_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match=r"^count must be from 1 to 1000, got 0$"):
        effects.generate(1, 0)
    with pytest.raises(ValueError, match=r"^count must be from 1 to 1000, got 1001$"):
        effects.generate(1, 1001)
    with pytest.raises(TypeError, match=r"^seed must be an int, got '1'$"):
        effects.generate("1", 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^count must be an int, got 2.0$"):
        effects.generate(1, 2.0)  # type: ignore[arg-type]
