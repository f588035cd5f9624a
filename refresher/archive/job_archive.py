"""A job's ZIP: which entries it holds, under which names, and its validators.

`<source name>/<source name>_var<N>.mp4` for every finished variation, plus a first
`manifest.json` recording each variation's source, name, size and effects. Names are
made safe for every extractor (no folders of their own, no `..`, no characters Windows
refuses) and distinct (a second `ad.mp4` gets the folder `ad (2)`). Everything here
derives from the database rows alone, so the same job always gives the same bytes: the
ETag is strong and a resumed download continues the very same archive.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from refresher import timestamps
from refresher.archive.zipplan import Member, ZipPlan
from refresher.media.measure import Measured

if TYPE_CHECKING:  # jobstore keeps each finished job's archive size, so it imports this
    from refresher.jobs.records import JobRecord
    from refresher.storage.paths import Paths

MANIFEST_NAME = "manifest.json"
MAX_STEM_CHARS = 80
# Characters Windows forbids in names, plus the path separators.
FORBIDDEN = set('<>:"/\\|?*')
# Names Windows keeps for devices, in any case and whatever follows a dot ("con.mp4"
# names the console too): a folder so named cannot be made there, so it gets a prefix.
WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{port}{digit}" for port in ("COM", "LPT") for digit in "0123456789\u00b9\u00b2\u00b3"]
)


@dataclass(frozen=True)
class JobArchive:
    plan: ZipPlan
    etag: str  # strong: quoted, no W/ prefix
    last_modified: datetime
    filename: str

    @property
    def size(self) -> int:
        return self.plan.size


def safe_stem(original_name: str) -> str:
    """The source's name without extension, safe as a folder name in any extractor."""
    stem = PurePosixPath(original_name.replace("\\", "/")).name
    if "." in stem.strip("."):
        stem = stem.rsplit(".", 1)[0]
    cleaned = "".join(
        "_" if ch in FORBIDDEN else ch
        for ch in unicodedata.normalize("NFC", stem)
        if unicodedata.category(ch)[0] != "C"
    )
    cleaned = cleaned.strip(" .")[:MAX_STEM_CHARS].strip(" .")
    return cleaned or "video"


def windows_safe(stem: str) -> str:
    """`stem` with a `_` ahead of it when Windows would take it for a device."""
    base = stem.split(".", 1)[0].rstrip(" ")
    return f"_{stem}" if base.upper() in WINDOWS_DEVICES else stem


def folder_names(original_names: list[str]) -> list[str]:
    """One distinct, safe folder per source, in order; repeats get " (2)", " (3)"...

    No folder takes the manifest's name (an archive with a file and a folder of one name
    cannot be extracted), or a name Windows keeps for a device; names are compared as
    Windows and macOS compare them, without regard to case."""
    taken: set[str] = {MANIFEST_NAME.casefold()}
    folders = []
    for name in original_names:
        stem = windows_safe(safe_stem(name))
        candidate, number = stem, 1
        while candidate.casefold() in taken:
            number += 1
            candidate = f"{stem} ({number})"
        taken.add(candidate.casefold())
        folders.append(candidate)
    return folders


def output_names(job: JobRecord) -> dict[str, str]:
    """Each output's file name in the job's archive, by output id: `<folder>_var<N>.mp4`,
    inside the folder of its source (so a single variation downloads under that name)."""
    folders = folder_names([file.original_name for file in job.files])
    return {
        output.id: f"{folder}_var{output.variation_index}.mp4"
        for file, folder in zip(job.files, folders, strict=True)
        for output in file.outputs
    }


def build(job: JobRecord, paths: Paths) -> JobArchive:
    """Lay out the job's archive from its rows (no file is read)."""
    members = _members(job, paths.absolute)
    modified = timestamps.parse(job.finished_at or job.updated_at)
    digest = hashlib.sha256(job.id.encode())
    for member in members:
        digest.update(f"\0{member.name}\0{member.size}\0{member.crc32}".encode())
    return JobArchive(
        plan=ZipPlan(members, modified=modified),
        etag=f'"{digest.hexdigest()[:32]}"',
        last_modified=modified,
        filename=f"video-refresher-{job.id[:8]}.zip",
    )


def size_of(job: JobRecord) -> int:
    """The size of the job's archive in bytes, from its rows alone (no path is touched)."""
    modified = timestamps.parse(job.finished_at or job.updated_at)
    return ZipPlan(_members(job, Path), modified=modified).size


def _members(job: JobRecord, locate: Callable[[str], Path]) -> list[Member]:
    """The manifest, then every output under its archive name; `locate` maps stored paths."""
    folders = folder_names([file.original_name for file in job.files])
    names = output_names(job)
    entries: list[tuple[str, int, int, str]] = []
    variations = []
    for file, folder in zip(job.files, folders, strict=True):
        for output in file.outputs:
            name = f"{folder}/{names[output.id]}"
            entries.append((name, output.size, output.crc32, output.path))
            variations.append(
                {
                    "source": file.original_name,
                    "file": name,
                    "variation": output.variation_index,
                    "size": output.size,
                    "effects": output.effects,
                    "attempts": output.attempts,
                    "measured": Measured.from_json(output.measured).shown()
                    if output.measured
                    else None,
                }
            )
    manifest = json.dumps(
        {
            "jobId": job.id,
            "seed": job.seed,
            "strength": job.strength,
            "createdAt": job.created_at,
            "finishedAt": job.finished_at,
            "variations": variations,
        },
        indent=2,
        sort_keys=True,
        ensure_ascii=False,
    ).encode("utf-8")
    members = [Member(MANIFEST_NAME, len(manifest), zlib.crc32(manifest), manifest)]
    members += [Member(name, size, crc32, locate(stored)) for name, size, crc32, stored in entries]
    return members
