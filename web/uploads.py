"""`POST /api/jobs`: receive 1 to MAX_FILES videos, check each really is one, queue the job."""

from __future__ import annotations

import errno
import logging
import secrets
import uuid
from collections.abc import AsyncIterable, AsyncIterator

import trio
from quart import Blueprint, Response, jsonify, request

from actors.evictor import EvictorUnavailable
from actors.processor import JobQueued
from refresher import jobstore
from refresher.probe import NotAVideo, Probe, probe
from refresher.status import JobStatus
from refresher.storage import remove_tree
from web.access import require_login
from web.errors import ApiError
from web.multipart_stream import FormRejected, ReceivedFile, boundary_of, receive_form
from web.state import AppState, state

LOGGER = logging.getLogger(__name__)

FILE_FIELD = "videos"
# A body of unknown length asks the evictor for room in steps of this size.
ROOM_STEP_BYTES = 64 * 1024 * 1024
NO_ROOM = (
    "There is no room for this upload right now: the storage is full even after removing "
    "older results. Try fewer or smaller videos, or try again later."
)
DEFAULT_VARIATIONS = 5

blueprint = Blueprint("uploads", __name__)


def byte_words(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} bytes"


def parse_variations(raw: str | None, maximum: int) -> int:
    if raw is None or not raw.strip():
        return min(DEFAULT_VARIATIONS, maximum)
    rule = f"variations must be a whole number from 1 to {maximum}; got “{raw.strip()[:20]}”."
    try:
        value = int(raw.strip())
    except ValueError:
        raise ApiError(400, rule) from None
    if not 1 <= value <= maximum:
        raise ApiError(400, rule)
    return value


async def probe_upload(upload: ReceivedFile) -> Probe:
    if upload.size == 0:
        raise ApiError(400, f"“{upload.name}” is empty.")
    try:
        return await trio.to_thread.run_sync(probe, upload.path)
    except NotAVideo as err:
        raise ApiError(415, f"“{upload.name}” {err.reason}. Upload MP4 or MOV videos.") from None


async def _ask_for_room(app_state: AppState, nbytes: int) -> None:
    try:
        granted = await app_state.evictor.request_room(nbytes)
    except EvictorUnavailable:
        raise ApiError(503, "Uploads are briefly unavailable; try again in a moment.") from None
    if not granted:
        raise ApiError(507, NO_ROOM)


async def _room_checked(
    app_state: AppState, body: AsyncIterable[bytes], granted: int
) -> AsyncIterator[bytes]:
    """Pass the body through, asking the evictor for more room whenever the bytes received
    pass what was granted (a body without Content-Length, or one longer than declared)."""
    received = 0
    async for chunk in body:
        received += len(chunk)
        if received > granted:
            step = max(ROOM_STEP_BYTES, received - granted)
            await _ask_for_room(app_state, step)
            granted += step
        yield chunk


@blueprint.post("/api/jobs")
@require_login
async def create_job() -> tuple[Response, int]:
    app_state = state()
    config = app_state.config
    boundary = boundary_of(request.headers.get("Content-Type", ""))
    if boundary is None:
        raise ApiError(400, f"Send the videos as multipart/form-data in the field “{FILE_FIELD}”.")
    declared = request.content_length
    if declared is not None and declared > app_state.max_body_bytes:
        raise ApiError(
            413,
            f"The upload is larger than {config.max_files} videos of "
            f"{byte_words(config.max_upload_bytes)} each.",
        )
    await _ask_for_room(app_state, declared or 0)
    job_id = str(uuid.uuid4())
    directory = app_state.paths.upload_dir(job_id)
    await trio.Path(directory).mkdir(parents=True)
    try:
        try:
            form = await receive_form(
                _room_checked(app_state, request.body, declared or 0),
                boundary,
                directory,
                file_field=FILE_FIELD,
                max_files=config.max_files,
                max_file_bytes=config.max_upload_bytes,
                limit_words=f"{byte_words(config.max_upload_bytes)} per-file",
            )
        except FormRejected as err:
            raise ApiError(err.status, err.message) from None
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            raise ApiError(507, NO_ROOM) from None
        variations = parse_variations(form.fields.get("variations"), config.max_variations)
        if not form.files:
            raise ApiError(400, f"Choose at least one video to upload (field “{FILE_FIELD}”).")
        probes = [await probe_upload(upload) for upload in form.files]
        files = [
            jobstore.NewFile(
                id=str(uuid.uuid4()),
                original_name=upload.name,
                upload_path=app_state.paths.relative(upload.path),
                file_size=upload.size,
                duration_s=probe.duration_s,
            )
            for upload, probe in zip(form.files, probes, strict=True)
        ]
        seed = secrets.randbits(63)
        await app_state.db.write(
            lambda conn: jobstore.insert_job(
                conn,
                job_id=job_id,
                files=files,
                variations_per_video=variations,
                seed=seed,
                now=app_state.now(),
                ttl_s=config.job_ttl_s,
            )
        )
    except BaseException:
        # Bad input, a client that went away, or a crash: nothing of it stays on disk.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(remove_tree, directory)
        raise
    app_state.processor_inbox.post(JobQueued(job_id))
    LOGGER.info("job=%s queued: %d videos x %d variations", job_id, len(files), variations)
    body = {
        "jobId": job_id,
        "status": JobStatus.QUEUED,
        "files": [{"id": f.id, "name": f.original_name, "size": f.file_size} for f in files],
        "variationsPerVideo": variations,
        "totalVariations": variations * len(files),
        "statusUrl": f"/api/jobs/{job_id}",
    }
    return jsonify(body), 202
