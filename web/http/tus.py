"""The tus 1.0 protocol's headers (https://tus.io/protocols/resumable-upload), read and
written: pure functions, their refusals `ApiError`s with a sentence."""

from __future__ import annotations

import base64
import binascii
import email.utils

from quart import request

from refresher.media.probe import ACCEPTED_EXTENSIONS, ACCEPTED_TYPES
from web.http.errors import ApiError
from web.http.multipart import display_name

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,termination,expiration"
OFFSET_OCTET_STREAM = "application/offset+octet-stream"
# Upload-Metadata: at most this many pairs, each key this long.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64


def tus_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store", **(extra or {})}


def http_date(unix_s: float) -> str:
    return email.utils.formatdate(unix_s, usegmt=True)


def length_header(name: str, raw: str | None) -> int:
    """A header holding a byte count: ASCII digits only, at most 18 of them."""
    if raw is None:
        raise ApiError(400, f"The {name} header is missing.", headers=tus_headers())
    value = raw.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 18):
        raise ApiError(
            400, f"{name} must be a whole number of bytes; got “{value[:20]}”.",
            headers=tus_headers(),
        )  # fmt: skip
    return int(value)


def parse_metadata(raw: str) -> dict[str, str]:
    """Upload-Metadata: comma-separated `key base64(value)` pairs (tus 1.0, creation).

    Raise `ApiError` (400) for anything else: a key repeated, too many, or a value that
    is not base64 of UTF-8 text."""
    found: dict[str, str] = {}
    pairs = [pair.strip() for pair in raw.split(",") if pair.strip()]
    if len(pairs) > MAX_METADATA_PAIRS:
        raise ApiError(400, f"Upload-Metadata has more than {MAX_METADATA_PAIRS} pairs.")
    for pair in pairs:
        key, _, encoded = pair.partition(" ")
        if not key.isascii() or not key.isprintable() or len(key) > MAX_METADATA_KEY_CHARS:
            raise ApiError(400, "An Upload-Metadata key is not a short ASCII word.")
        if key in found:
            raise ApiError(400, f"Upload-Metadata names “{key}” twice.")
        try:
            value = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ApiError(
                400, f"Upload-Metadata's “{key}” is not base64-encoded UTF-8 text."
            ) from None
        found[key] = value
    return found


def declared_video(metadata: dict[str, str]) -> str:
    """The name to show for a declared upload, refusing what cannot be a video."""
    raw_name = metadata.get("filename") or metadata.get("name")
    if raw_name is None:
        raise ApiError(400, "Name the file in Upload-Metadata (filename).")
    name = display_name(raw_name)
    filetype = (metadata.get("filetype") or metadata.get("type") or "").strip().lower()
    extension = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if extension not in ACCEPTED_EXTENSIONS and filetype not in ACCEPTED_TYPES:
        raise ApiError(415, f"“{name}” is not an MP4 or MOV video. Upload MP4 or MOV videos.")
    return name


def check_version() -> None:
    if request.headers.get("Tus-Resumable") != TUS_VERSION:
        raise ApiError(
            412,
            f"This server speaks tus {TUS_VERSION}; send Tus-Resumable: {TUS_VERSION}.",
            headers=tus_headers({"Tus-Version": TUS_VERSION}),
        )
