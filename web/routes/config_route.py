"""`GET /api/config`: the limits the page holds an upload to before it sends a byte.

No login needed: these are the service's configured limits, which every refusal names
anyway. The server checks each of them again; the page only spares people a wasted
upload.
"""

from __future__ import annotations

from quart import Blueprint, Response, jsonify

from refresher.auth import tokens
from refresher.media import effects, probe
from web.state import state

blueprint = Blueprint("config", __name__)


@blueprint.get("/api/config")
async def limits() -> Response:
    config = state().config
    return jsonify(
        {
            "maxFiles": config.max_files,
            "maxUploadBytes": config.max_upload_bytes,
            "maxVariations": config.max_variations,
            "defaultVariations": config.default_variations,
            "acceptedTypes": list(probe.ACCEPTED_TYPES),
            "acceptedExtensions": list(probe.ACCEPTED_EXTENSIONS),
            "maxDurationS": config.max_duration_s,
            "maxLongSidePx": config.max_long_side_px,
            "maxShortSidePx": config.max_short_side_px,
            "maxFps": config.max_fps,
            "resultsLifetimeS": config.job_ttl_s,
            "sessionLifetimeS": tokens.SESSION_TTL_S,
            "strengths": [
                {
                    "value": strength.value,
                    "label": strength.value.capitalize(),
                    "description": effects.DESCRIPTIONS[strength],
                }
                for strength in effects.Strength
            ],
            "defaultStrength": config.default_strength,
            "mirrorAvailable": True,
        }
    )
