"""Check an archive with independent tools: unzip, 7z, bsdtar and Python's zipfile."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

from refresher.archive.zipplan import ZipPlan


def render(plan: ZipPlan, start: int = 0, end: int | None = None) -> bytes:
    """The archive's bytes [start, end), read the way the download route reads them."""
    out = bytearray()
    for piece in plan.pieces(start, end):
        if piece.data is not None:
            out += piece.data
        else:
            assert piece.path is not None
            with open(piece.path, "rb") as file:
                file.seek(piece.offset)
                out += file.read(piece.length)
    return bytes(out)


def write_archive(plan: ZipPlan, target: Path) -> Path:
    with open(target, "wb") as out:
        for piece in plan.pieces():
            if piece.data is not None:
                out.write(piece.data)
                continue
            assert piece.path is not None
            with open(piece.path, "rb") as source:
                source.seek(piece.offset)
                remaining = piece.length
                while remaining:
                    chunk = source.read(min(remaining, 8 * 1024 * 1024))
                    out.write(chunk)
                    remaining -= len(chunk)
    return target


def check_with_all_tools(path: Path, expected_names: list[str]) -> None:
    """Fail unless unzip, 7z, bsdtar and zipfile all accept the archive and its names."""
    unzip = subprocess.run(["unzip", "-tqq", str(path)], capture_output=True, text=True)
    assert unzip.returncode == 0, unzip.stdout + unzip.stderr
    seven = subprocess.run(["7z", "t", str(path)], capture_output=True, text=True)
    assert seven.returncode == 0, seven.stdout + seven.stderr
    assert "Everything is Ok" in seven.stdout
    bsdtar = subprocess.run(["bsdtar", "-tf", str(path)], capture_output=True)
    assert bsdtar.returncode == 0, bsdtar.stderr
    assert bsdtar.stdout.decode("utf-8").splitlines() == expected_names
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert [info.filename for info in infos] == expected_names
        assert all(info.compress_type == zipfile.ZIP_STORED for info in infos)
        assert all(info.flag_bits & 0x800 for info in infos)


def extract_with_all_tools(path: Path, into: Path) -> dict[str, list[str]]:
    """Extract the archive with unzip, 7z, bsdtar and zipfile, each into a folder of its
    own under `into`; fail unless each exits cleanly. Return each tool's extracted files,
    relative to its folder."""
    commands = {
        "unzip": ["unzip", "-qq", str(path), "-d"],
        "7z": ["7z", "x", "-y", str(path)],
        "bsdtar": ["bsdtar", "-xf", str(path), "-C"],
    }
    found: dict[str, list[str]] = {}
    for tool, command in commands.items():
        target = into / tool
        target.mkdir(parents=True)
        args = [*command, f"-o{target}"] if tool == "7z" else [*command, str(target)]
        done = subprocess.run(args, capture_output=True, text=True)
        assert done.returncode == 0, f"{tool}: {done.stdout}{done.stderr}"
        found[tool] = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    target = into / "zipfile"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(target)
    found["zipfile"] = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    return found
