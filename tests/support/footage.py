"""Natural footage for measuring variations: a slow pan across real photographs, with sound.

Perceptual hashes behave on test patterns (`testsrc`, noise, gradients) unlike on real
video: flat colour fields and hard synthetic edges make PDQ either blind or over-sensitive.
So distinctness is measured on photographs, panned and zoomed by FFmpeg like a slideshow
ad. The photos come from scikit-image's sample data (a test and benchmark dependency), all
free of copyright restrictions:

- `astronaut.png`: NASA, public domain;
- `coffee.png`: Rachel Michetti, CC0;
- `chelsea.png`: Stefan van der Walt, CC0;
- `rocket.jpg`: SpaceX, public domain;
- `hubble_deep_field.jpg`: NASA, public domain.

The sound is a chord with a slow tremolo over quiet pink noise: enough spectrum for an
equaliser or a tempo change to act on.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg")
# How much larger than the frame each photo is scaled, so that the pan has room to move.
OVERSCAN = 1.35


def photo_dir() -> Path:
    """Where scikit-image keeps its sample photos (without importing scikit-image)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-image is not installed: pip install -e '.[test]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def footage_graph(width: int, height: int, seconds: float, fps: int, photos: int) -> str:
    """The filter graph text: each photo scaled to cover the frame with room to spare,
    then a window panning diagonally across it (alternating directions), concatenated."""
    each = seconds / photos
    big_w = 2 * round(width * OVERSCAN / 2)
    big_h = 2 * round(height * OVERSCAN / 2)
    parts = []
    for index in range(photos):
        # Alternate the pan's direction, so consecutive shots move differently.
        x = f"(iw-ow)*t/{each:.4f}" if index % 2 == 0 else f"(iw-ow)*(1-t/{each:.4f})"
        y = f"(ih-oh)*t/{each:.4f}" if index % 3 else f"(ih-oh)*(1-t/{each:.4f})"
        parts.append(
            f"[{index}:v]scale={big_w}:{big_h}:force_original_aspect_ratio=increase,"
            f"crop={big_w}:{big_h},fps={fps},trim=duration={each:.4f},setpts=PTS-STARTPTS,"
            f"crop={width}:{height}:x='{x}':y='{y}',setsar=1,format=yuv420p[p{index}]"
        )
    joined = "".join(f"[p{index}]" for index in range(photos))
    parts.append(f"{joined}concat=n={photos}:v=1:a=0[video]")
    parts.append(
        "sine=frequency=220:sample_rate=48000,volume=0.25[s1];"
        "sine=frequency=277.18:sample_rate=48000,volume=0.2[s2];"
        "sine=frequency=329.63:sample_rate=48000,volume=0.2[s3];"
        "anoisesrc=color=pink:amplitude=0.05:sample_rate=48000:seed=5[noise];"
        f"[s1][s2][s3][noise]amix=inputs=4:normalize=0,tremolo=f=2:d=0.4,"
        f"atrim=duration={seconds},aformat=channel_layouts=stereo[audio]"
    )
    return ";".join(parts)


def make_footage(
    ffmpeg: str,
    path: Path,
    *,
    width: int = 1280,
    height: int = 720,
    seconds: float = 12.0,
    fps: int = 30,
    audio: bool = True,
) -> Path:
    """Write an H.264/AAC MP4 panning across the photos to `path` (blocking); return it."""
    folder = photo_dir()
    args = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    for name in PHOTOS:
        args += ["-loop", "1", "-framerate", str(fps), "-i", str(folder / name)]
    args += ["-filter_complex", footage_graph(width, height, seconds, fps, len(PHOTOS))]
    args += ["-map", "[video]", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18"]
    args += ["-pix_fmt", "yuv420p", "-t", f"{seconds}"]
    if audio:
        args += ["-map", "[audio]", "-c:a", "aac", "-b:a", "128k"]
    args += ["-movflags", "+faststart", str(path)]
    subprocess.run(args, check=True, capture_output=True, timeout=300)
    return path
