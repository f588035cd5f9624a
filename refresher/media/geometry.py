"""Where a crop-zoomed, rotated variation's frame comes from in its source: pure arithmetic.

At `standard` and `strong` a variation shows a window of its source `zoom` times smaller
than the frame, anchored anywhere inside it, turned by a small angle and scaled back to
the frame's size. The turn is made by shearing (`refresher.media.filtergraph`), which needs
a margin of real picture around the window: so the region cut out of the source is the
window plus that margin, and the rotation is bounded by what the zoom leaves room for.
Every corner of the result is picture; no border ever shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Shear passes round to whole pixels; this much more margin keeps a rounded shift inside.
_SLACK_PX = 2


@dataclass(frozen=True)
class Window:
    """The source region (`region_*`, at `x`, `y`) rotated, then its centred window cut."""

    region_w: int
    region_h: int
    x: int
    y: int
    window_w: int
    window_h: int


def even(value: float) -> int:
    """`value` rounded down to an even whole number (4:2:0 chroma needs even sizes)."""
    whole = math.floor(value)
    return whole - whole % 2


def shear_margins(window_w: int, window_h: int, rotation_rad: float) -> tuple[int, int]:
    """The margins (horizontal, vertical) a shear rotation of a `window_w` x `window_h`
    window needs: rows shift sideways by up to sin·(region height)/2, columns up or down
    by up to sin·(window width)/2."""
    a = abs(math.sin(rotation_rad))
    if a == 0:
        return 0, 0
    margin_y = math.ceil(a * window_w / 2) + _SLACK_PX
    margin_y += margin_y % 2
    region_h = window_h + 2 * margin_y
    margin_x = math.ceil(a * region_h / 2) + _SLACK_PX
    margin_x += margin_x % 2
    return margin_x, margin_y


def window(
    width: int, height: int, *, zoom: float, anchor_x: float, anchor_y: float, rotation_rad: float
) -> Window:
    """The region and window for a frame of `width` x `height` (even sizes are used).

    `anchor_x`/`anchor_y` (0..1) place the region from the left/top edge to the right/
    bottom one. Raise ValueError if the rotation does not fit the zoom's room.
    """
    frame_w, frame_h = even(width), even(height)
    window_w, window_h = max(2, even(frame_w / zoom)), max(2, even(frame_h / zoom))
    margin_x, margin_y = shear_margins(window_w, window_h, rotation_rad)
    region_w, region_h = window_w + 2 * margin_x, window_h + 2 * margin_y
    if region_w > frame_w or region_h > frame_h:
        raise ValueError(
            f"a rotation of {rotation_rad} rad does not fit a zoom of {zoom} in {width}x{height}"
        )
    x = even(anchor_x * (frame_w - region_w))
    y = even(anchor_y * (frame_h - region_h))
    return Window(region_w, region_h, x, y, window_w, window_h)


def max_rotation(width: int, height: int, zoom: float) -> float:
    """The largest rotation (radians) a `zoom` crop of a `width` x `height` frame has room
    for, to 1e-4 rad (0 when it has none)."""
    low, high = 0.0, 0.2
    if not _fits(width, height, zoom, low):
        return 0.0
    while high - low > 1e-4:
        middle = (low + high) / 2
        if _fits(width, height, zoom, middle):
            low = middle
        else:
            high = middle
    return math.floor(low * 1e4) / 1e4


def _fits(width: int, height: int, zoom: float, rotation_rad: float) -> bool:
    try:
        window(width, height, zoom=zoom, anchor_x=0.5, anchor_y=0.5, rotation_rad=rotation_rad)
    except ValueError:
        return False
    return True
