"""`POST /api/jobs`: receive 1 to MAX_FILES videos, check each really is one, queue the job."""

from __future__ import annotations

import logging
import secrets
import uuid

import trio
from quart import Blueprint, Response, jsonify, request

from actors.processor import JobQueued
from refresher import jobstore, media
from refresher.storage import remove_tree
from web.auth import require_login
from web.errors import ApiError
from web.multipart_stream import FormRejected, ReceivedFile, boundary_of, receive_form
from web.state import state

LOGGER = logging.getLogger(__name__)

FILE_FIELD = "videos"
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


async def probe_upload(upload: ReceivedFile) -> media.Probe:
    if upload.size == 0:
        raise ApiError(400, f"“{upload.name}” is empty.")
    try:
        return await trio.to_thread.run_sync(media.probe, upload.path)
    except media.NotAVideo as err:
        raise ApiError(415, f"“{upload.name}” {err.reason}. Upload MP4 or MOV videos.") from None


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
    job_id = str(uuid.uuid4())
    directory = app_state.paths.upload_dir(job_id)
    await trio.Path(directory).mkdir(parents=True)
    try:
        try:
            form = await receive_form(
                request.body,
                boundary,
                directory,
                file_field=FILE_FIELD,
                max_files=config.max_files,
                max_file_bytes=config.max_upload_bytes,
                limit_words=f"{byte_words(config.max_upload_bytes)} per-file",
            )
        except FormRejected as err:
            raise ApiError(err.status, err.message) from None
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
        "status": "queued",
        "files": [{"id": f.id, "name": f.original_name, "size": f.file_size} for f in files],
        "variationsPerVideo": variations,
        "totalVariations": variations * len(files),
        "statusUrl": f"/api/jobs/{job_id}",
    }
    return jsonify(body), 202
