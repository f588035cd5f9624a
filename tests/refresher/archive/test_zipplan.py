from __future__ import annotations

import random
import zipfile
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from refresher.archive.zipplan import MAX_32, Member, ZipPlan, dos_datetime
from tests.support.zips import check_with_all_tools, render, write_archive

MODIFIED = datetime(2026, 11, 25, 12, 30, 14, tzinfo=UTC)


def file_member(directory: Path, name: str, content: bytes) -> Member:
    path = directory / f"{zlib.crc32(name.encode()):08x}.bin"
    path.write_bytes(content)
    return Member(name, len(content), zlib.crc32(content), path)


def members_of(directory: Path, count: int, *, seed: int = 0) -> list[Member]:
    rng = random.Random(seed)
    manifest = b'{"note": "first"}'
    members = [Member("manifest.json", len(manifest), zlib.crc32(manifest), manifest)]
    for number in range(count - 1):
        content = rng.randbytes(rng.randrange(0, 3000))
        members.append(file_member(directory, f"ad {number % 7}/ad_var{number}.mp4", content))
    return members


@pytest.mark.parametrize("count", [1, 60])
def test_archive_passes_every_tool_and_holds_the_bytes(tmp_path: Path, count: int) -> None:
    members = members_of(tmp_path, count)
    plan = ZipPlan(members, modified=MODIFIED)
    archive = write_archive(plan, tmp_path / "out.zip")
    assert archive.stat().st_size == plan.size
    check_with_all_tools(archive, [member.name for member in members])
    with zipfile.ZipFile(archive) as opened:
        for member in members:
            expected = (
                member.content if isinstance(member.content, bytes)
                else member.content.read_bytes()
            )  # fmt: skip
            assert opened.read(member.name) == expected
            assert opened.getinfo(member.name).date_time == (2026, 11, 25, 12, 30, 14)
    assert not plan.uses_zip64


@pytest.mark.slow
def test_seventy_thousand_entries_use_zip64_end_records(tmp_path: Path) -> None:
    # More than 65 535 entries do not fit the classic end record's 16-bit counts.
    members = [Member("manifest.json", 2, zlib.crc32(b"{}"), b"{}")]
    content = b"x"
    shared = tmp_path / "one.bin"
    shared.write_bytes(content)
    members += [
        Member(f"v{number // 1000}/clip_var{number}.mp4", 1, zlib.crc32(content), shared)
        for number in range(70_000)
    ]
    plan = ZipPlan(members, modified=MODIFIED)
    assert plan.uses_zip64
    archive = write_archive(plan, tmp_path / "many.zip")
    check_with_all_tools(archive, [member.name for member in members])


@pytest.mark.slow
def test_archive_past_4_gib_uses_zip64_sizes_and_offsets(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    size = MAX_32 + 64 * 1024**2  # just over 4 GiB, sparse on disk
    with open(big, "wb") as file:
        file.truncate(size)
    crc = 0
    with open(big, "rb") as file:
        while chunk := file.read(64 * 1024**2):
            crc = zlib.crc32(chunk, crc)
    manifest = b"{}"
    after = b"after the big one"
    members = [
        Member("manifest.json", 2, zlib.crc32(manifest), manifest),
        Member("big/big_var1.mp4", size, crc, big),
        # Its local header sits past 4 GiB: the central directory needs a ZIP64 offset.
        Member("small/small_var1.mp4", len(after), zlib.crc32(after), after),
    ]
    plan = ZipPlan(members, modified=MODIFIED)
    assert plan.uses_zip64
    archive = write_archive(plan, tmp_path / "big.zip")
    assert archive.stat().st_size == plan.size > MAX_32
    check_with_all_tools(archive, [member.name for member in members])
    with zipfile.ZipFile(archive) as opened:
        assert opened.read("small/small_var1.mp4") == after
        assert opened.getinfo("big/big_var1.mp4").file_size == size
    # The first entry keeps the plain form (Safari's extractor trips on ZIP64 there).
    first_header = render(plan, 0, 30)
    assert first_header[4:6] == (20).to_bytes(2, "little")


def test_any_range_equals_the_same_slice_of_the_whole(tmp_path: Path) -> None:
    plan = ZipPlan(members_of(tmp_path, 25, seed=3), modified=MODIFIED)
    whole = render(plan)
    assert len(whole) == plan.size
    rng = random.Random(7)
    for _ in range(500):
        start = rng.randrange(0, plan.size + 1)
        end = rng.randrange(start, plan.size + 1)
        assert render(plan, start, end) == whole[start:end]
    for start, end in [(0, 0), (0, 1), (plan.size - 1, plan.size), (plan.size, plan.size)]:
        assert render(plan, start, end) == whole[start:end]


def test_layout_is_deterministic(tmp_path: Path) -> None:
    members = members_of(tmp_path, 10)
    first = render(ZipPlan(members, modified=MODIFIED))
    assert render(ZipPlan(members, modified=MODIFIED)) == first


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([Member("a", 1, 0, b"x"), Member("a", 1, 0, b"y")], r"^member names must be unique$"),
    ],
)
def test_plan_refuses_bad_members(members: list[Member], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ZipPlan(members, modified=MODIFIED)


def test_member_checks_its_fields() -> None:
    with pytest.raises(ValueError, match=r"^member 'a': size 2 != 1$"):
        Member("a", 2, 0, b"x")
    with pytest.raises(ValueError, match=r"^member 'a': crc32 must fit 32 bits$"):
        Member("a", 1, 2**32, b"x")


def test_range_outside_the_archive_is_refused(tmp_path: Path) -> None:
    plan = ZipPlan(members_of(tmp_path, 2), modified=MODIFIED)
    with pytest.raises(ValueError, match=r"is outside the archive"):
        list(plan.pieces(0, plan.size + 1))


def test_dos_datetime_clamps_before_1980() -> None:
    assert dos_datetime(datetime(1970, 1, 1, tzinfo=UTC)) == (0, (0 << 9) | (1 << 5) | 1)
