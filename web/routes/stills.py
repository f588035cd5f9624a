"""`GET /api/jobs/:id/stills/:name`: the comparison stills of a job's sources and variations.

`source-<file id>` is a source at the moment its variations are compared; an output's id
is that variation at the same moment. JPEGs made while the job ran (`refresher.media.measure`),
so they outlive the uploads; a bearer token or the job's signed `stills` link opens them.
"""

from __future__ import annotations

from quart import Blueprint, Response

from refresher.auth import tokens
from web.http.access import check_bearer
from web.http.errors import ApiError
from web.http.serving import send_private_image
from web.state import state
from web.views import load_or_404

blueprint = Blueprint("stills", __name__)

SOURCE_PREFIX = "source-"


@blueprint.get("/api/jobs/<job_id>/stills/<name>")
async def still(job_id: str, name: str) -> Response:
    check_bearer(also_scope=tokens.job_scope(job_id, "stills"))
    job = await load_or_404(state(), job_id)
    if name.startswith(SOURCE_PREFIX):
        file_id = name.removeprefix(SOURCE_PREFIX)
        stored = next((file.still_path for file in job.files if file.id == file_id), None)
    else:
        stored = next((out.still_path for out in job.outputs if out.id == name), None)
    missing = "There is no such still; the job may have expired or been removed."
    if stored is None:
        raise ApiError(404, missing)
    app_state = state()
    path = app_state.paths.absolute(stored)
    return await send_private_image(app_state.lifecycle.blobs, path, "image/jpeg", missing=missing)
