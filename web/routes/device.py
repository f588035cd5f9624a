"""`POST /api/jobs/device`: keep the variations a device made as a completed job.

The original client's device mode: it encodes in the browser and sends the results with
a list of their sources (`refresher.jobs.device` tells the form and its rules). The job
that comes of it is like any finished one: the same ZIP, expiry, eviction and leases.

    bearer token ─► form streamed to uploads/<job>/, room asked as the bytes arrive
      ─► names matched to sources ─► each result probed ─► size and CRC-32 measured
      ─► renamed to the processor's names in jobs/<job>/ ─► thumbnail (best effort)
      ─► kept (a bucket takes them) ─► the job's rows, completed ─► 201

The token is checked before a byte of the body is read (the app reads no body ahead for
this route: `BODY_LIMITS_KEY`). A refusal, a client that goes away, or a fault removes
both folders and anything kept from them: nothing is left behind.
"""

from __future__ import annotations

import logging
import uuid
import zlib
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

import trio
from quart import Blueprint, Response, jsonify, request

from refresher.jobs.device import (
    DEVICE_EFFECTS,
    MAX_RESULTS,
    DeviceFile,
    DeviceResultsRefused,
    ResultMatch,
    SourceFile,
    match_results,
    parse_source_files,
)
from refresher.jobs.outputstore import NewOutput
from refresher.jobs.status import JobStatus
from refresher.media import thumbnails
from refresher.media.ffmpeg import MediaError, encoder_mark, find_ffmpeg
from refresher.media.probe import Probe
from refresher.storage.blobs import StorageUnavailable
from refresher.storage.full import StorageFull, files_written
from refresher.storage.paths import remove_tree
from refresher.timestamps import duration_words
from web.http.access import require_login
from web.http.errors import ApiError
from web.http.multipart import (
    FormRejected,
    ReceivedFile,
    ReceivedForm,
    boundary_of,
)
from web.intake import (
    NO_ROOM,
    STORAGE_UNREACHABLE,
    ask_for_room,
    byte_words,
    probe_upload,
    receive_videos,
)
from web.state import FORM_OVERHEAD_BYTES, AppState, state

LOGGER = logging.getLogger(__name__)

RESULTS_FIELD = "results"
SOURCES_FIELD = "sourceFiles"
# Read in pieces this large to measure a result: few thread hops, little memory.
CRC_CHUNK_BYTES = 1024 * 1024

blueprint = Blueprint("device", __name__)


def body_limit(app_state: AppState) -> int:
    """The most bytes one device job may send: min(MAX_RESULTS, MAX_FILES) results of
    MAX_UPLOAD_BYTES and the form around them, so never past the app's limit on any body
    (MAX_CONTENT_LENGTH, MAX_FILES uploads' worth), which Quart holds too."""
    config = app_state.config
    return _most_results(app_state) * config.max_upload_bytes + FORM_OVERHEAD_BYTES


def _most_results(app_state: AppState) -> int:
    return min(MAX_RESULTS, app_state.config.max_files)


async def _bounded(body: AsyncIterable[bytes], app_state: AppState) -> AsyncIterator[bytes]:
    """Pass the body through; past `body_limit` bytes in all (chunked bodies too), a 413."""
    limit, received = body_limit(app_state), 0
    async for chunk in body:
        received += len(chunk)
        if received > limit:
            raise ApiError(413, _too_large(app_state))
        yield chunk


def _too_large(app_state: AppState) -> str:
    return (
        f"The results add up to more than {_most_results(app_state)} videos of "
        f"{byte_words(app_state.config.max_upload_bytes)}, the most one device job may send."
    )


def _measure_and_move(received: Path, target: Path) -> tuple[int, int]:
    """Size and CRC-32 of a received result, then rename it to `target` (blocking)."""
    crc, size = 0, 0
    with received.open("rb") as file:
        while chunk := file.read(CRC_CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    received.replace(target)
    return size, crc


async def _receive(app_state: AppState, boundary: bytes, directory: Path) -> ReceivedForm:
    """Stream the form into `directory` under every limit (raise `ApiError` past one)."""
    return await receive_videos(
        app_state, _bounded(request.body, app_state), boundary, directory,
        file_field=RESULTS_FIELD, max_files=MAX_RESULTS, declared=request.content_length,
        too_slow=(
            f"The results took longer than {duration_words(app_state.config.upload_timeout_s)} "
            "to arrive, the longest an upload may take; try again on a faster connection."
        ),
    )  # fmt: skip


async def _place(
    app_state: AppState,
    job_id: str,
    sources: list[SourceFile],
    received: list[tuple[ReceivedFile, ResultMatch, Probe]],
) -> list[DeviceFile]:
    """Measure each result and rename it to the name the processor gives that variation,
    in the job's folder; the job's files, as they will be recorded."""
    paths = app_state.paths
    file_ids = [str(uuid.uuid4()) for _ in sources]
    outputs: list[list[NewOutput]] = [[] for _ in sources]
    durations: list[float | None] = [None for _ in sources]
    for upload, match, probed in received:
        target = paths.output(job_id, file_ids[match.source], match.variation_index)
        size, crc = await trio.to_thread.run_sync(_measure_and_move, upload.path, target)
        output = NewOutput(
            output_id=str(uuid.uuid4()),
            variation_index=match.variation_index,
            path=paths.relative(target),
            size=size,
            crc32=crc,
            effects=dict(DEVICE_EFFECTS),
        )
        outputs[match.source].append(output)
        if durations[match.source] is None:
            durations[match.source] = probed.duration_s
    return [
        DeviceFile(
            id=file_id,
            name=source.name,
            duration_s=duration_s,
            outputs=tuple(sorted(made, key=lambda output: output.variation_index)),
        )
        for file_id, source, made, duration_s in zip(
            file_ids, sources, outputs, durations, strict=True
        )
    ]


async def _thumbnail(app_state: AppState, job_id: str, video: Path, probed: Probe) -> Path | None:
    """A WebP still of `video` in the job's folder, or None: best effort, like the
    processor's (a thumbnail is never worth refusing a job for)."""
    root = app_state.paths.root
    try:
        ffmpeg = await trio.to_thread.run_sync(find_ffmpeg, app_state.config.ffmpeg)
    except MediaError as err:
        LOGGER.warning("job=%s no thumbnail: %s", job_id, err)
        return None
    output = app_state.paths.thumbnail(job_id)
    made = await thumbnails.make_thumbnail(
        ffmpeg, video, output, probed=probed, limits=app_state.config.media_limits,
        env=encoder_mark(root),
    )  # fmt: skip
    return output if made else None


@blueprint.post("/api/jobs/device")
@require_login
async def create_device_job() -> tuple[Response, int]:
    app_state = state()
    config, paths = app_state.config, app_state.paths
    try:
        boundary = boundary_of(request.headers.get("Content-Type", ""))
    except FormRejected as err:
        raise ApiError(err.status, err.message) from None
    if boundary is None:
        raise ApiError(
            400,
            f"Send the results as multipart/form-data: “{SOURCES_FIELD}” and the videos in "
            f"“{RESULTS_FIELD}”.",
        )
    declared = request.content_length
    if declared is not None and declared > body_limit(app_state):
        raise ApiError(413, _too_large(app_state))
    # A length that could never fit is refused now; only bytes that arrive make room.
    await ask_for_room(app_state, declared or 0, evict=False)
    job_id = str(uuid.uuid4())
    incoming, job_dir = paths.upload_dir(job_id), paths.job_dir(job_id)
    await trio.Path(incoming).mkdir(parents=True)
    blobs = app_state.lifecycle.blobs
    try:
        form = await _receive(app_state, boundary, incoming)
        try:
            sources = parse_source_files(
                form.fields.get(SOURCES_FIELD),
                max_files=config.max_files,
                max_variations=config.max_variations,
            )
            matches = match_results(sources, [upload.name for upload in form.files])
        except DeviceResultsRefused as err:
            raise ApiError(400, str(err)) from None
        probes = [await probe_upload(upload, app_state) for upload in form.files]
        with files_written("there was no room for the results"):
            await trio.Path(job_dir).mkdir(parents=True)
        files = await _place(
            app_state, job_id, sources, list(zip(form.files, matches, probes, strict=True))
        )
        first = paths.output(job_id, files[matches[0].source].id, matches[0].variation_index)
        thumbnail = await _thumbnail(app_state, job_id, first, probes[0])
        kept = [paths.absolute(output.path) for file in files for output in file.outputs]
        try:
            for path in [*kept, *([thumbnail] if thumbnail else [])]:
                await trio.to_thread.run_sync(blobs.keep, path)
        except StorageUnavailable as err:
            LOGGER.error("job=%s device results could not be kept: %s", job_id, err)
            raise ApiError(503, STORAGE_UNREACHABLE) from None
        await app_state.lifecycle.record_device_job(
            job_id=job_id,
            files=files,
            variations_per_video=max(source.variation_count for source in sources),
            thumbnail_path=paths.relative(thumbnail) if thumbnail else None,
        )
    except BaseException as err:
        # Bad input, a client that went away, or a crash: nothing of it stays, on disk or
        # in a bucket. Room is an answer, not a reservation: the rows may find it full.
        with trio.CancelScope(shield=True):
            for folder in (incoming, job_dir):
                try:
                    await trio.to_thread.run_sync(blobs.remove, folder)
                except StorageUnavailable as gone:  # the janitor removes it once it can
                    LOGGER.error("job=%s refused results not yet removed: %s", job_id, gone)
        if isinstance(err, StorageFull):
            raise ApiError(507, NO_ROOM) from None
        raise
    await trio.to_thread.run_sync(remove_tree, incoming)  # emptied: each result was moved
    total = sum(len(file.outputs) for file in files)
    LOGGER.info("job=%s made on a device: %d videos, %d variations", job_id, len(files), total)
    body = {
        "jobId": job_id,
        "status": JobStatus.COMPLETED,
        "totalVideos": len(files),
        "totalVariations": total,
        "source": "device",
    }
    return jsonify(body), 201
