"""`POST /api/jobs`: receive 1 to MAX_FILES videos, check each really is one, queue the job."""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

import trio
from quart import Blueprint, Response, jsonify, request

from actors.evictor import EvictorUnavailable
from refresher.config import DEFAULT_VARIATIONS, Config
from refresher.jobs.status import JobStatus
from refresher.jobs.transitions import NewFile
from refresher.media.effects import Strength
from refresher.media.probe import BY, FrameTooLarge, NotAVideo, Probe, TooLong, probe
from refresher.storage.blobs import StorageUnavailable
from refresher.storage.full import StorageFull
from refresher.timestamps import duration_words
from web.http.access import require_login
from web.http.errors import ApiError
from web.http.multipart import FormRejected, ReceivedFile, boundary_of, receive_form
from web.state import AppState, state

LOGGER = logging.getLogger(__name__)

FILE_FIELD = "videos"
# A body asks the evictor for room as it arrives, in steps (never past its declared
# length) that start small, so a small upload fits a small volume, and double up to the
# largest, so a 5 GiB body asks 85 times, not thousands.
FIRST_ROOM_STEP_BYTES = 1024 * 1024
LARGEST_ROOM_STEP_BYTES = 64 * 1024 * 1024
NO_ROOM = (
    "There is no room for this upload right now: the storage is full even after removing "
    "older results. Try fewer or smaller videos, or try again later."
)

blueprint = Blueprint("uploads", __name__)


STORAGE_UNREACHABLE = (
    "The storage for results cannot be reached right now; nothing was kept. Try again in a minute."
)


def byte_words(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} bytes"


def parse_variations(raw: str | None, maximum: int) -> int:
    if raw is None or not raw.strip():
        return min(DEFAULT_VARIATIONS, maximum)
    digits = raw.strip()
    rule = f"variations must be a whole number from 1 to {maximum}; got “{digits[:20]}”."
    # ASCII digits only: int() alone also takes "1_0", "+3" and other scripts' digits ("٣").
    # Short, too, so int() never meets a thousand digits; 0 stands for "not a count".
    value = int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 9 else 0
    if not 1 <= value <= maximum:
        raise ApiError(400, rule)
    return value


def parse_strength(raw: str | None, default: str) -> str:
    """The `strength` field: one of `Strength`'s values, the configured default if absent."""
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value not in set(Strength):
        names = ", ".join(Strength)
        raise ApiError(400, f"strength must be one of {names}; got “{raw.strip()[:20]}”.")
    return value


# What a form may send for a yes/no field (a checkbox sends "on").
_YES = {"true", "1", "on", "yes"}
_NO = {"false", "0", "off", "no", ""}


def parse_mirror(raw: str | None) -> bool:
    """The `mirror` field: opt-in mirroring (it flips text and logos), off if absent."""
    value = (raw or "").strip().lower()
    if value in _YES:
        return True
    if value in _NO:
        return False
    raise ApiError(400, f"mirror must be true or false; got “{(raw or '').strip()[:20]}”.")


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


async def _ask_for_room(app_state: AppState, nbytes: int, *, evict: bool = True) -> None:
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


@blueprint.post("/api/jobs")
@require_login
async def create_job() -> tuple[Response, int]:
    app_state = state()
    config = app_state.config
    try:
        boundary = boundary_of(request.headers.get("Content-Type", ""))
    except FormRejected as err:
        raise ApiError(err.status, err.message) from None
    if boundary is None:
        raise ApiError(400, f"Send the videos as multipart/form-data in the field “{FILE_FIELD}”.")
    declared = request.content_length
    if declared is not None and declared > app_state.max_body_bytes:
        raise ApiError(
            413,
            f"The upload is larger than {config.max_files} videos of "
            f"{byte_words(config.max_upload_bytes)} each.",
        )
    # What a client declares is weighed, never acted on: a length that could never fit is
    # refused now, but only the bytes that arrive make room (evict), step by step.
    await _ask_for_room(app_state, declared or 0, evict=False)
    job_id = str(uuid.uuid4())
    directory = app_state.paths.upload_dir(job_id)
    await trio.Path(directory).mkdir(parents=True)
    try:
        try:
            with trio.move_on_after(config.upload_timeout_s) as deadline:
                form = await receive_form(
                    room_checked(
                        request.body,
                        0,
                        lambda nbytes: _ask_for_room(app_state, nbytes),
                        declared=declared,
                    ),
                    boundary,
                    directory,
                    file_field=FILE_FIELD,
                    max_files=config.max_files,
                    max_file_bytes=config.max_upload_bytes,
                    limit_words=f"{byte_words(config.max_upload_bytes)} per-file",
                )
        except FormRejected as err:
            raise ApiError(err.status, err.message) from None
        except StorageFull:
            raise ApiError(507, NO_ROOM) from None
        if deadline.cancelled_caught:
            LOGGER.info("job=%s upload timed out after %g s", job_id, config.upload_timeout_s)
            raise ApiError(
                408,
                f"The upload took longer than {duration_words(config.upload_timeout_s)}, the "
                "longest an upload may take; try again with fewer or smaller videos, or on a "
                "faster connection.",
            )
        variations = parse_variations(form.fields.get("variations"), config.max_variations)
        strength = parse_strength(form.fields.get("strength"), config.default_strength)
        mirror = parse_mirror(form.fields.get("mirror"))
        if mirror and strength == Strength.SUBTLE:
            raise ApiError(400, "mirror applies only at the standard or strong strength.")
        if not form.files:
            raise ApiError(400, f"Choose at least one video to upload (field “{FILE_FIELD}”).")
        probes = [await probe_upload(upload, app_state) for upload in form.files]
        files = [
            NewFile(
                id=str(uuid.uuid4()),
                original_name=upload.name,
                upload_path=app_state.paths.relative(upload.path),
                file_size=upload.size,
                duration_s=probe.duration_s,
            )
            for upload, probe in zip(form.files, probes, strict=True)
        ]
        # Kept before the job's row exists, so a worker never claims what is not there
        # (in a bucket: uploaded in parts, the local copy dropped).
        blobs = app_state.lifecycle.blobs
        try:
            for upload in form.files:
                await trio.to_thread.run_sync(blobs.keep, upload.path)
        except StorageUnavailable as err:
            LOGGER.error("job=%s upload could not be kept: %s", job_id, err)
            raise ApiError(503, STORAGE_UNREACHABLE) from None
        seed = secrets.randbits(63)
        try:
            # Announced before the processor hears of it, so every open page sees the job
            # queued before it sees it processing.
            await app_state.lifecycle.queue(
                job_id=job_id,
                files=files,
                variations_per_video=variations,
                seed=seed,
                strength=strength,
                mirror=mirror,
            )
        except StorageFull:
            # Room is an answer, not a reservation: uploads sent together may fill the
            # volume between the answer and the job's row.
            raise ApiError(507, NO_ROOM) from None
    except BaseException:
        # Bad input, a client that went away, or a crash: nothing of it stays on disk.
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(app_state.lifecycle.blobs.remove, directory)
            except StorageUnavailable as err:  # the janitor removes it once it can
                LOGGER.error("job=%s refused upload not yet removed: %s", job_id, err)
        raise
    LOGGER.info("job=%s queued: %d videos x %d variations", job_id, len(files), variations)
    body = {
        "jobId": job_id,
        "status": JobStatus.QUEUED,
        "files": [{"id": f.id, "name": f.original_name, "size": f.file_size} for f in files],
        "variationsPerVideo": variations,
        "totalVariations": variations * len(files),
        "strength": strength,
        "mirror": mirror,
        "statusUrl": f"/api/jobs/{job_id}",
    }
    return jsonify(body), 202
