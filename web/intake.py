"""What every route that takes videos in does with them: room asked for as the bytes arrive,
and each video probed and held to the media limits before anything is kept.

Shared by the upload (`web.routes.uploads`) and the device results (`web.routes.device`):
route modules share through modules of their own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from pathlib import Path

import trio

from actors.evictor import EvictorUnavailable
from refresher.config import Config
from refresher.media.probe import BY, FrameTooLarge, NotAVideo, Probe, TooLong, probe
from refresher.storage.full import StorageFull
from web.http.errors import ApiError
from web.http.multipart import FormRejected, ReceivedFile, ReceivedForm, receive_form
from web.state import AppState

LOGGER = logging.getLogger(__name__)

# A body asks the evictor for room as it arrives, in steps (never past its declared
# length) that start small, so a small upload fits a small volume, and double up to the
# largest, so a 5 GiB body asks 85 times, not thousands.
FIRST_ROOM_STEP_BYTES = 1024 * 1024
LARGEST_ROOM_STEP_BYTES = 64 * 1024 * 1024
NO_ROOM = (
    "There is no room for this upload right now: the storage is full even after removing "
    "older results. Try fewer or smaller videos, or try again later."
)
STORAGE_UNREACHABLE = (
    "The storage for results cannot be reached right now; nothing was kept. Try again in a minute."
)


def byte_words(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} bytes"


def media_limit_breach(name: str, probed: Probe, config: Config) -> str | None:
    """Say how the video `name` breaks a configured media limit, or None if it does not."""
    limits = config.media_limits
    if not limits.frame_fits(probed.width, probed.height):
        return f"“{name}” is {probed.width}{BY}{probed.height}; {limits.largest_words()}."
    # Average rates wobble around the nominal one (119.88, 120.0002): judge what is shown.
    fps = round(probed.fps, 2)
    if fps > config.max_fps:
        return (
            f"“{name}” runs at {fps:g} frames per second; the most accepted is {config.max_fps:g}."
        )
    if probed.duration_s > config.max_duration_s:
        return f"“{name}” {limits.too_long_words(probed.duration_s)}."
    return None


async def probe_upload(upload: ReceivedFile, app_state: AppState) -> Probe:
    """Probe `upload` and hold it to the media limits; raise `ApiError` naming the file.

    Probes take turns (`AppState.probes`): each may hold a decoded frame of the largest
    accepted size, and many uploads checked at once must not add up past the machine."""
    config = app_state.config
    if upload.size == 0:
        raise ApiError(400, f"“{upload.name}” is empty.")
    try:
        probed = await trio.to_thread.run_sync(
            probe, upload.path, config.media_limits, limiter=app_state.probes
        )
    except (FrameTooLarge, TooLong) as err:
        raise ApiError(415, f"“{upload.name}” {err.reason}.") from None
    except NotAVideo as err:
        raise ApiError(415, f"“{upload.name}” {err.reason}. Upload MP4 or MOV videos.") from None
    # 415 like any other video this service cannot take: the request is well formed, the
    # media is what is refused (400 would blame the request, 413 means too many bytes).
    breach = media_limit_breach(upload.name, probed, config)
    if breach is not None:
        raise ApiError(415, breach)
    return probed


async def ask_for_room(app_state: AppState, nbytes: int, *, evict: bool = True) -> None:
    """Ask the evictor for `nbytes` more; raise `ApiError` 507 when there is no room, 503
    when the evictor does not answer."""
    try:
        granted = await app_state.evictor.request_room(nbytes, evict=evict)
    except EvictorUnavailable:
        raise ApiError(503, "Uploads are briefly unavailable; try again in a moment.") from None
    if not granted:
        raise ApiError(507, NO_ROOM)


async def room_checked(
    body: AsyncIterable[bytes],
    granted: int,
    ask_for_room: Callable[[int], Awaitable[None]],
    *,
    declared: int | None = None,
) -> AsyncIterator[bytes]:
    """Pass the body through, asking for more room whenever the bytes received pass what
    was granted: room is made for bytes that arrive, never for a length announced.

    Each ask is for the bytes beyond what was granted, in steps from
    `FIRST_ROOM_STEP_BYTES` doubling up to `LARGEST_ROOM_STEP_BYTES` (more when one chunk
    overshoots further), and never past the `declared` length, when there is one (a
    small upload asks for no more than itself); `ask_for_room` raises to refuse.
    """
    received = 0
    step = FIRST_ROOM_STEP_BYTES
    async for chunk in body:
        received += len(chunk)
        if received > granted:
            ahead = step if declared is None else max(0, min(step, declared - granted))
            wanted = max(ahead, received - granted)
            await ask_for_room(wanted)
            granted += wanted
            step = min(2 * step, LARGEST_ROOM_STEP_BYTES)
        yield chunk


async def receive_videos(
    app_state: AppState,
    body: AsyncIterable[bytes],
    boundary: bytes,
    directory: Path,
    *,
    file_field: str,
    max_files: int,
    declared: int | None,
    too_slow: str,
) -> ReceivedForm:
    """Stream a multipart form of videos into `directory`: room asked as the bytes arrive,
    `MAX_UPLOAD_BYTES` a file, `UPLOAD_TIMEOUT_S` in all. Raise the `ApiError` a refusal
    gets: the form's own (400, 413), 507 without room, 408 with `too_slow` past the time."""
    config = app_state.config
    try:
        with trio.move_on_after(config.upload_timeout_s) as deadline:
            form = await receive_form(
                room_checked(
                    body, 0, lambda nbytes: ask_for_room(app_state, nbytes), declared=declared
                ),
                boundary,
                directory,
                file_field=file_field,
                max_files=max_files,
                max_file_bytes=config.max_upload_bytes,
                limit_words=f"{byte_words(config.max_upload_bytes)} per-file",
            )
    except FormRejected as err:
        raise ApiError(err.status, err.message) from None
    except StorageFull:
        raise ApiError(507, NO_ROOM) from None
    if deadline.cancelled_caught:
        LOGGER.info("upload into %s timed out after %g s", directory.name, config.upload_timeout_s)
        raise ApiError(408, too_slow)
    return form
