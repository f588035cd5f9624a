"""FFmpeg filter graph and muxer text for a variation: pure string building, no I/O.

A variation's frame is padded with its own edge pixels, rotated in two shear passes built
from `crop` and `vstack`/`hstack` (see `_rotation_filter`), and colour-adjusted by `eq`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

from refresher.effects import DECIMALS, MAX_ROTATION_RAD, Effects
from refresher.probe import Probe


def variation_filter(effects: Effects, probed: Probe) -> str:
    """The filter graph of one variation: pad with edge pixels, rotate, adjust colour."""
    margin = _rotation_margin(probed.width, probed.height)
    return (
        f"format=yuv420p,pad=iw+{2 * margin}:ih+{2 * margin}:{margin}:{margin},"
        f"fillborders=left={margin}:right={margin}:top={margin}:bottom={margin}:mode=smear,"
        + _rotation_filter(probed, margin, effects.rotation_rad)
        + f",eq=brightness={effects.brightness:.{DECIMALS['brightness']}f}"
        f":contrast={effects.contrast:.{DECIMALS['contrast']}f}"
        f":saturation={effects.saturation:.{DECIMALS['saturation']}f},"
        "format=yuv420p"
    )


def tee_escape(path: str) -> str:
    """Escape a file name for the `tee` muxer's list (its `|`, quotes and backslashes)."""
    return "".join("\\" + char if char in "\\'|" else char for char in path)


def _rotation_margin(width: int, height: int) -> int:
    """Pixels to pad on each side so that the largest rotation stays inside the padding."""
    reach = math.hypot(width, height) / 2 * math.sin(MAX_ROTATION_RAD)
    margin = math.ceil(reach) + 2
    return margin + margin % 2  # even, for 4:2:0 chroma


def _bands(length: int, shift: Callable[[int], int]) -> list[tuple[int, int, int]]:
    """Split 0..length-1 into runs of one `shift` each: (start, size, shift) triples.

    Run boundaries are rounded to even positions, so every run but the last has a whole
    number of 4:2:0 chroma samples; the pixel beside a moved boundary is off by one.
    """
    boundaries = [0]
    for position in range(1, length):
        if shift(position) != shift(position - 1):
            even = position + position % 2
            if boundaries[-1] < even < length:
                boundaries.append(even)
    boundaries.append(length)
    return [
        (start, end - start, shift((start + end) // 2))
        for start, end in itertools.pairwise(boundaries)
    ]


def _stack(pieces: list[str], direction: str) -> str:
    """Filter graph text that crops each piece out of one input and stacks them."""
    if len(pieces) == 1:
        return pieces[0]
    fan_out = f"split={len(pieces)}" + "".join(f"[{direction}{i}]" for i in range(len(pieces)))
    crops = [f"[{direction}{i}]{piece}[{direction}p{i}]" for i, piece in enumerate(pieces)]
    gathered = "".join(f"[{direction}p{i}]" for i in range(len(pieces)))
    return ";".join([fan_out, *crops, f"{gathered}{direction}stack=inputs={len(pieces)}"])


def _rotation_filter(probed: Probe, margin: int, rotation_rad: float) -> str:
    """Rotate the padded frame clockwise by `rotation_rad`, in two shear passes.

    Pass one shifts each row sideways by round(a·y), pass two each column up or down by
    round(a·x), with a = sin(rotation) and x, y from the centre: together the rotation
    matrix but for terms in a² (at most 5e-5: 0.04 px at a 720p corner, 0.11 px at 4K),
    sampled nearest-neighbour like `v360`'s `interp=near`. Each pass is `crop`s of one
    frame (no copying) and one `vstack`/`hstack` (one copy): 0.09 CPU s a 720p variation
    against 0.31 s for `v360` and 2.4 s for the original's `rotate`.
    """
    out_w, out_h = probed.width - probed.width % 2, probed.height - probed.height % 2
    padded_h = probed.height + 2 * margin
    a = math.sin(rotation_rad)

    def row_shift(row: int) -> int:
        return math.floor(a * (row + 0.5 - padded_h / 2) + 0.5)

    def column_shift(column: int) -> int:
        return math.floor(a * (column + 0.5 - out_w / 2) + 0.5)

    rows = [
        f"crop=w={out_w}:h={size}:x={margin + shift}:y={start}:exact=1"
        for start, size, shift in _bands(padded_h, row_shift)
    ]
    columns = [
        f"crop=w={size}:h={out_h}:x={start}:y={margin - shift}:exact=1"
        for start, size, shift in _bands(out_w, column_shift)
    ]
    return _stack(rows, "v") + "," + _stack(columns, "h")
