"""Job routes: the list of jobs (creation, detail and control arrive with processing)."""

from __future__ import annotations

import sqlite3

from quart import Blueprint, Response, jsonify

from refresher import db as queries
from web.auth import require_login
from web.state import state

blueprint = Blueprint("jobs", __name__)


def job_summary(row: sqlite3.Row) -> dict[str, object]:
    names = row["file_names"]
    return {
        "id": row["id"],
        "status": row["status"],
        "totalVideos": row["total_videos"],
        "totalVariations": row["total_variations"],
        "fileNames": names.split("\0") if names else [],
        "thumbnailUrl": f"/api/jobs/{row['id']}/thumbnail" if row["thumbnail_path"] else None,
        "createdAt": row["created_at"],
        "expiresAt": row["expires_at"],
        "source": "upload",
        "error": row["error"] or row["deleted_reason"],
    }


@blueprint.get("/api/jobs")
@require_login
async def list_jobs() -> Response:
    rows = await state().db.read(queries.list_jobs)
    return jsonify([job_summary(row) for row in rows])
