"""`POST /api/jobs`: receive 1 to MAX_FILES videos, check each really is one, queue the job."""

from __future__ import annotations

import contextlib
import logging
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import trio
from quart import Blueprint, Response, jsonify, request

from refresher.config import DEFAULT_VARIATIONS, Config
from refresher.jobs import records
from refresher.jobs.status import JobStatus
from refresher.jobs.transitions import NewFile
from refresher.media.effects import Strength
from refresher.storage.blobs import StorageUnavailable
from refresher.storage.full import StorageFull
from refresher.timestamps import duration_words
from refresher.uploads import received as upload_bytes
from refresher.uploads import records as upload_records
from refresher.uploads.received import drop_uploads
from refresher.uploads.records import UPLOAD_ID
from web.http.access import require_login
from web.http.bodies import BodyLimit, MalformedJSON, read_json
from web.http.errors import ApiError
from web.http.multipart import FormRejected, ReceivedFile, boundary_of
from web.intake import (
    NO_ROOM,
    STORAGE_UNREACHABLE,
    ask_for_room,
    byte_words,
    probe_upload,
    receive_videos,
)
from web.state import AppState, state

LOGGER = logging.getLogger(__name__)

FILE_FIELD = "videos"

blueprint = Blueprint("uploads", __name__)


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


@dataclass(frozen=True)
class JobChoices:
    """What a job asks for besides its videos."""

    variations: int
    strength: str
    mirror: bool


def parse_choices(fields: Mapping[str, str | None], config: Config) -> JobChoices:
    """The job's variations, strength and mirror from a form's (or JSON's) fields."""
    variations = parse_variations(fields.get("variations"), config.max_variations)
    strength = parse_strength(fields.get("strength"), config.default_strength)
    mirror = parse_mirror(fields.get("mirror"))
    if mirror and strength == Strength.SUBTLE:
        raise ApiError(400, "mirror applies only at the standard or strong strength.")
    return JobChoices(variations, strength, mirror)


@blueprint.post("/api/jobs")
@require_login
async def create_job() -> tuple[Response, int]:
    """A job from a multipart form of videos, or (JSON) from finished resumable uploads."""
    content_type = request.headers.get("Content-Type", "")
    if content_type.split(";")[0].strip().lower() == "application/json":
        return await _create_job_from_uploads()
    return await _create_job_from_form(content_type)


async def _create_job_from_form(content_type: str) -> tuple[Response, int]:
    app_state = state()
    config = app_state.config
    try:
        boundary = boundary_of(content_type)
    except FormRejected as err:
        raise ApiError(err.status, err.message) from None
    if boundary is None:
        raise ApiError(
            400,
            f"Send the videos as multipart/form-data in the field “{FILE_FIELD}”, or JSON "
            'naming finished uploads ({"uploads": [...]}).',
        )
    declared = request.content_length
    if declared is not None and declared > app_state.max_body_bytes:
        raise ApiError(
            413,
            f"The upload is larger than {config.max_files} videos of "
            f"{byte_words(config.max_upload_bytes)} each.",
        )
    # What a client declares is weighed, never acted on: a length that could never fit is
    # refused now, but only the bytes that arrive make room (evict), step by step.
    await ask_for_room(app_state, declared or 0, evict=False)
    job_id = str(uuid.uuid4())
    directory = app_state.paths.upload_dir(job_id)
    await trio.Path(directory).mkdir(parents=True)
    try:
        form = await receive_videos(
            app_state, request.body, boundary, directory,
            file_field=FILE_FIELD, max_files=config.max_files, declared=declared,
            too_slow=(
                f"The upload took longer than {duration_words(config.upload_timeout_s)}, the "
                "longest an upload may take; try again with fewer or smaller videos, or on a "
                "faster connection."
            ),
        )  # fmt: skip
        choices = parse_choices(form.fields, config)
        if not form.files:
            raise ApiError(400, f"Choose at least one video to upload (field “{FILE_FIELD}”).")
        body = await queue_received(app_state, job_id, form.files, choices)
    except BaseException:
        # Bad input, a client that went away, or a crash: nothing of it stays on disk.
        await remove_refused(app_state, job_id)
        raise
    return jsonify(body), 202


async def remove_refused(app_state: AppState, job_id: str) -> None:
    """Remove what a refused job's upload left (shielded: also when cancelled)."""
    with trio.CancelScope(shield=True):
        try:
            await trio.to_thread.run_sync(
                app_state.lifecycle.blobs.remove, app_state.paths.upload_dir(job_id)
            )
        except StorageUnavailable as err:  # the janitor removes it once it can
            LOGGER.error("job=%s refused upload not yet removed: %s", job_id, err)


async def queue_received(
    app_state: AppState, job_id: str, received: Sequence[ReceivedFile], choices: JobChoices
) -> dict[str, object]:
    """Check the received videos against the media limits, keep them, queue the job;
    return the 202's body. Raise `ApiError` for a video refused (nothing is queued)."""
    probes = [await probe_upload(upload, app_state) for upload in received]
    files = [
        NewFile(
            id=str(uuid.uuid4()),
            original_name=upload.name,
            upload_path=app_state.paths.relative(upload.path),
            file_size=upload.size,
            duration_s=probe.duration_s,
        )
        for upload, probe in zip(received, probes, strict=True)
    ]
    # Kept before the job's row exists, so a worker never claims what is not there
    # (in a bucket: uploaded in parts, the local copy dropped).
    blobs = app_state.lifecycle.blobs
    try:
        for upload in received:
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
            variations_per_video=choices.variations,
            seed=seed,
            strength=choices.strength,
            mirror=choices.mirror,
        )
    except StorageFull:
        # Room is an answer, not a reservation: uploads sent together may fill the
        # volume between the answer and the job's row.
        raise ApiError(507, NO_ROOM) from None
    LOGGER.info("job=%s queued: %d videos x %d variations", job_id, len(files), choices.variations)
    return accepted(
        job_id, JobStatus.QUEUED, [(f.id, f.original_name, f.file_size) for f in files], choices
    )


def accepted(
    job_id: str, status: str, files: Sequence[tuple[str, str, int]], choices: JobChoices
) -> dict[str, object]:
    """The 202's body for a job: its files as (id, name, size)."""
    return {
        "jobId": job_id,
        "status": status,
        "files": [{"id": file_id, "name": name, "size": size} for file_id, name, size in files],
        "variationsPerVideo": choices.variations,
        "totalVariations": choices.variations * len(files),
        "strength": choices.strength,
        "mirror": choices.mirror,
        "statusUrl": f"/api/jobs/{job_id}",
    }


# --- a job from finished resumable uploads (`web.routes.resumable`) -------------------

JOB_JSON = BodyLimit(16 * 1024, "A job's JSON is larger than 16 KiB, the most this route accepts.")
# A job that took uploads and never came (the process died) lets them expire after this.
TAKEN_GRACE_S = 3600.0


def _field_text(payload: Mapping[str, object], key: str) -> str | None:
    """A JSON field as the form's text: numbers and booleans as written, null as absent."""
    value = payload.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    raise ApiError(400, f"{key} must be a number, a word or true/false.")


def _upload_ids(payload: Mapping[str, object], max_files: int) -> list[str]:
    ids = payload.get("uploads")
    if not isinstance(ids, list) or not ids:
        raise ApiError(400, 'Name at least one finished upload: {"uploads": ["<id>", ...]}.')
    if len(ids) > max_files:
        raise ApiError(413, f"A job takes at most {max_files} videos; {len(ids)} were named.")
    for upload_id in ids:
        if not isinstance(upload_id, str) or not UPLOAD_ID.match(upload_id):
            raise ApiError(400, f"“{str(upload_id)[:40]}” is not an upload's id.")
    if len(set(ids)) != len(ids):
        raise ApiError(400, "The same upload is named twice.")
    return ids


async def _create_job_from_uploads() -> tuple[Response, int]:
    app_state = state()
    config = app_state.config
    try:
        payload = await read_json(JOB_JSON)
    except MalformedJSON:
        raise ApiError(400, "The body is not JSON in UTF-8.") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "Send a JSON object naming the uploads.")
    ids = _upload_ids(payload, config.max_files)
    choices = parse_choices(
        {key: _field_text(payload, key) for key in ("variations", "strength", "mirror")}, config
    )
    job_id = str(uuid.uuid4())
    expires_at = app_state.now() + TAKEN_GRACE_S
    try:
        taken = await app_state.db.write(
            lambda conn: upload_records.take(conn, ids, job_id, expires_at=expires_at)
        )
    except upload_records.UploadNotFound as err:
        raise ApiError(
            400, f"There is no upload “{err.upload_id}”; it may have expired or been cancelled."
        ) from None
    except upload_records.UploadTaken as err:
        made = await _made_from(app_state, ids, err.job_id)
        if made is not None:  # asked again (its answer was lost): the same job
            return jsonify(made), 202
        raise ApiError(409, f"The upload “{err.upload_id}” is already another job's.") from None
    except upload_records.UploadUnfinished as err:
        raise ApiError(
            409,
            f"“{err.name}” has not finished uploading ({byte_words(err.received)} of "
            f"{byte_words(err.length)}); finish it first.",
        ) from None
    blobs, paths = app_state.lifecycle.blobs, app_state.paths
    directory = paths.upload_dir(job_id)
    assembled: list[ReceivedFile] = []
    try:
        await trio.Path(directory).mkdir(parents=True)
        for upload in taken:
            dest = directory / f"{len(assembled)}.upload"
            try:
                await trio.to_thread.run_sync(upload_bytes.assemble, blobs, paths, upload, dest)
            except FileNotFoundError:  # removed meanwhile (expired, or by hand)
                raise ApiError(
                    400, f"The bytes of “{upload.name}” are gone; upload it again."
                ) from None
            assembled.append(ReceivedFile("uploads", upload.name, dest, upload.length))
        body = await queue_received(app_state, job_id, assembled, choices)
    except BaseException as err:
        refused_media = isinstance(err, ApiError) and err.code in (400, 415)
        with trio.CancelScope(shield=True):
            if refused_media:  # not a video this service takes: the uploads are of no use
                await drop_uploads(
                    app_state.db,
                    app_state.lifecycle.blobs,
                    app_state.paths,
                    [upload.id for upload in taken],
                )
            else:  # kept for another try
                await _give_back(app_state, taken, assembled, job_id)
            await remove_refused(app_state, job_id)
        raise
    # Queued: the job's rows name the bytes now; what the uploads held goes. Their rows
    # stay, taken, until they expire: the same request again gets the same job.
    for upload_id in ids:
        with contextlib.suppress(StorageUnavailable):  # the janitor's, when they expire
            await trio.to_thread.run_sync(upload_bytes.remove_upload, blobs, paths, upload_id)
    return jsonify(body), 202


async def _made_from(
    app_state: AppState, ids: Sequence[str], job_id: str | None
) -> dict[str, object] | None:
    """The answer that made job `job_id` from exactly these uploads, if it did."""
    if job_id is None:
        return None
    takers = await app_state.db.read(lambda conn: upload_records.taken_by(conn, ids))
    job = await app_state.db.read(lambda conn: records.load_job(conn, job_id))
    if takers != {job_id} or job is None or len(job.files) != len(ids):
        return None
    files = [(file.id, file.original_name, file.file_size) for file in job.files]
    return accepted(job.id, job.status, files, JobChoices(job.variations_per_video,
                                                          job.strength, job.mirror))  # fmt: skip


async def _give_back(
    app_state: AppState,
    taken: Sequence[upload_records.UploadRecord],
    assembled: Sequence[ReceivedFile],
    job_id: str,
) -> None:
    blobs, paths = app_state.lifecycle.blobs, app_state.paths
    for upload, file in zip(taken, assembled, strict=False):
        await trio.to_thread.run_sync(upload_bytes.put_back, blobs, paths, upload, file.path)
    expires_at = app_state.now() + app_state.config.resumable_upload_ttl_s
    await app_state.db.write(
        lambda conn: upload_records.give_back(
            conn, [upload.id for upload in taken], job_id, expires_at=expires_at
        )
    )
