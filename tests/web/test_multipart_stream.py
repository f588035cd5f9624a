from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.forms import BOUNDARY, chunks, form_body
from web.http.multipart import FormRejected, boundary_of, display_name, receive_form


async def receive(body: AsyncIterator[bytes], directory: Path, **limits: int):  # type: ignore[no-untyped-def]
    options = {"max_files": 10, "max_file_bytes": 10_000, **limits}
    return await receive_form(
        body, BOUNDARY, directory, file_field="videos", limit_words="10 KB", **options
    )


@pytest.mark.parametrize("chunk_size", [1, 7, 1000, 10**6])
async def test_files_and_fields_arrive_intact_whatever_the_chunking(
    tmp_path: Path, chunk_size: int
) -> None:
    first, second = random.Random(1).randbytes(5000), b"\r\n--" + b"x" * 100
    body = form_body(
        [("videos", "ad one.mp4", first), ("variations", None, b"3"), ("videos", "b.mov", second)]
    )
    form = await receive(chunks(body, [chunk_size] * len(body)), tmp_path)
    assert form.fields == {"variations": "3"}
    assert [(f.name, f.size) for f in form.files] == [("ad one.mp4", 5000), ("b.mov", 104)]
    assert [f.path.read_bytes() for f in form.files] == [first, second]
    assert [f.path.name for f in form.files] == ["0.upload", "1.upload"]


async def test_file_over_the_limit_is_rejected_while_streaming(tmp_path: Path) -> None:
    body = form_body([("videos", "big.mp4", b"x" * 20_000)])
    with pytest.raises(FormRejected, match=r"^“big.mp4” is larger than the 10 KB limit.$") as err:
        await receive(chunks(body, [4096] * 10), tmp_path)
    assert err.value.status == 413


async def test_too_many_files_are_rejected(tmp_path: Path) -> None:
    body = form_body([("videos", f"{n}.mp4", b"data") for n in range(3)])
    with pytest.raises(FormRejected, match=r"^At most 2 videos per job; this upload has more.$"):
        await receive(chunks(body, [len(body)]), tmp_path, max_files=2)


async def test_file_in_another_field_is_rejected(tmp_path: Path) -> None:
    body = form_body([("attachment", "a.mp4", b"data")])
    with pytest.raises(FormRejected, match=r"^Send videos in the field “videos”, not “attachment”"):
        await receive(chunks(body, [len(body)]), tmp_path)


async def test_body_that_stops_early_is_rejected(tmp_path: Path) -> None:
    body = form_body([("videos", "a.mp4", b"x" * 1000)])
    with pytest.raises(FormRejected, match=r"^The upload ended before it was complete"):
        await receive(chunks(body[:600], [100] * 6), tmp_path)


async def test_empty_file_choice_is_skipped(tmp_path: Path) -> None:
    body = form_body([("videos", "", b""), ("variations", None, b"2")])
    form = await receive(chunks(body, [len(body)]), tmp_path)
    assert form.files == []
    assert form.fields == {"variations": "2"}


async def test_oversized_field_is_rejected(tmp_path: Path) -> None:
    body = form_body([("variations", None, b"9" * 10_000)])
    with pytest.raises(FormRejected, match=r"^The field “variations” is too long.$"):
        await receive(chunks(body, [len(body)]), tmp_path)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("ad.mp4", "ad.mp4"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\Ad.mov", "Ad.mov"),
        ("bad\x00na\x1bme.mp4", "badname.mp4"),
        ("résumé.mp4", "résumé.mp4"),
        ("", "video"),
        ("///", "video"),
    ],
)
def test_display_name_keeps_only_a_safe_name(raw: str, shown: str) -> None:
    assert display_name(raw) == shown


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ('multipart/form-data; boundary="abc"', b"abc"),
        ("multipart/form-data; boundary=abc", b"abc"),
        ("multipart/form-data", None),
        ("application/json", None),
        ("", None),
    ],
)
def test_boundary_of(content_type: str, boundary: bytes | None) -> None:
    assert boundary_of(content_type) == boundary
