"""`web.http.serving.file_chunks`: the reads behind both download routes, one chunk ahead."""

from __future__ import annotations

import os
from contextlib import aclosing
from pathlib import Path

import pytest
import trio

from web.http import serving
from web.http.serving import CHUNK_BYTES, file_chunks


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(2 * CHUNK_BYTES + 12345)
    path = tmp_path / "output.mp4"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (0, 2 * CHUNK_BYTES + 12345),  # whole: two full chunks and a short one
        (1, CHUNK_BYTES),  # exactly one chunk, not aligned
        (CHUNK_BYTES - 7, 14),  # across a chunk boundary
        (100, 0),  # nothing
    ],
)
async def test_the_bytes_asked_for_come_back_in_order(
    data_file: tuple[Path, bytes], offset: int, length: int
) -> None:
    path, data = data_file
    got = bytearray()
    sizes = []
    async with aclosing(file_chunks(str(path), offset, length)) as chunks:
        async for chunk in chunks:
            got += chunk
            sizes.append(len(chunk))
    assert bytes(got) == data[offset : offset + length]
    assert all(size <= CHUNK_BYTES for size in sizes)


async def test_a_file_shorter_than_recorded_raises_and_closes_it(
    data_file: tuple[Path, bytes],
) -> None:
    path, data = data_file
    before = _open_fds()
    got = bytearray()

    async def read_all() -> None:
        async with aclosing(file_chunks(str(path), 0, len(data) + 1)) as chunks:
            async for chunk in chunks:
                got.extend(chunk)

    with pytest.raises(OSError, match="shorter than recorded"):
        await read_all()
    assert bytes(got) == data[: 2 * CHUNK_BYTES]  # every whole chunk before the short one
    assert _open_fds() == before


async def test_stopping_early_waits_for_the_read_ahead_then_closes_the_file(
    data_file: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read started ahead must end before its file closes: a descriptor closed under a
    running `pread` could be reused by another open and read from the wrong file."""
    path, _ = data_file
    started, release = trio.Event(), trio.Event()
    token = trio.lowlevel.current_trio_token()
    real_pread = os.pread
    reads = []

    def slow_pread(fd: int, length: int, offset: int) -> bytes:
        reads.append(offset)
        if len(reads) == 2:  # the read ahead of the first chunk
            token.run_sync_soon(started.set)
            trio.from_thread.run(release.wait, trio_token=token)
        return real_pread(fd, length, offset)

    monkeypatch.setattr(serving.os, "pread", slow_pread)
    before = _open_fds()
    chunks = file_chunks(str(path), 0, 2 * CHUNK_BYTES)
    first = await chunks.__anext__()
    assert len(first) == CHUNK_BYTES
    await started.wait()
    async with trio.open_nursery() as nursery:
        closed = trio.Event()

        async def close() -> None:
            await chunks.aclose()
            closed.set()

        nursery.start_soon(close)
        await trio.sleep(0.05)
        assert not closed.is_set()  # still waiting for the read in flight
        assert _open_fds() == before + 1
        release.set()
    assert closed.is_set()
    assert _open_fds() == before
