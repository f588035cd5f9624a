"""The blob seam's contract (`refresher.storage.blobs`), on the data directory's files and
on a real S3 server: what is kept can be read back, by range and whole, listed, judged by
age and removed; downloads read it chunk by chunk, one chunk (or more) ahead."""

from __future__ import annotations

import os
import time
from contextlib import aclosing
from pathlib import Path

import pytest
import trio

from refresher.storage import blobs as blobs_module
from refresher.storage.blobs import CHUNK_BYTES, BlobStore, LocalBlobs
from refresher.storage.paths import Paths
from tests.support.s3 import S3Server
from tests.support.throttle import throttled

pytestmark = pytest.mark.both_blob_stores


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def kept(blob_store: BlobStore, paths: Paths) -> tuple[Path, bytes]:
    """A kept output of two full chunks and a short one."""
    data = os.urandom(2 * CHUNK_BYTES + 12345)
    path = paths.job_dir("job-1") / "file-1_var1.mp4"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    blob_store.keep(path)
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
    blob_store: BlobStore, kept: tuple[Path, bytes], offset: int, length: int
) -> None:
    path, data = kept
    got = bytearray()
    sizes = []
    async with aclosing(blob_store.chunks(path, offset, length)) as chunks:
        async for chunk in chunks:
            got += chunk
            sizes.append(len(chunk))
    assert bytes(got) == data[offset : offset + length]
    assert all(size <= CHUNK_BYTES for size in sizes)
    some = min(length, 1000)
    assert blob_store.read(path, offset, some) == data[offset : offset + some]


async def test_a_blob_shorter_than_recorded_raises(
    blob_store: BlobStore, kept: tuple[Path, bytes]
) -> None:
    path, data = kept
    got = bytearray()

    async def read_all() -> None:
        async with aclosing(blob_store.chunks(path, 0, len(data) + 1)) as chunks:
            async for chunk in chunks:
                got.extend(chunk)

    with pytest.raises(OSError, match="shorter than recorded"):
        await read_all()
    assert bytes(got) == data[: 2 * CHUNK_BYTES]  # every whole chunk before the short one
    with pytest.raises(OSError, match="shorter than recorded"):
        blob_store.read(path, len(data) - 10, 20)


async def test_kept_blobs_are_listed_aged_loaded_and_removed(
    blob_store: BlobStore, paths: Paths, kept: tuple[Path, bytes]
) -> None:
    path, _ = kept
    still = paths.stills("job-1") / "file-1_var1.jpg"
    still.parent.mkdir(parents=True)
    still.write_bytes(b"jpeg")
    blob_store.keep(still)
    if blob_store.remote:  # the bucket keeps them; the data directory was only scratch
        assert not path.exists()
        assert not still.exists()
    assert blob_store.entries(paths.jobs) == {"job-1"}
    assert blob_store.entries(paths.job_dir("job-1")) == {"file-1_var1.mp4", "stills"}
    assert blob_store.entries(paths.job_dir("job-2")) == frozenset()
    assert blob_store.exists(path)
    assert blob_store.exists(still)
    assert not blob_store.exists(paths.job_dir("job-1") / "file-1_var2.mp4")
    assert blob_store.load(still) == b"jpeg"
    assert abs(blob_store.last_written(paths.job_dir("job-1")) - blob_store.now()) < 60
    with pytest.raises(FileNotFoundError):
        blob_store.last_written(paths.job_dir("job-2"))
    with pytest.raises(FileNotFoundError):
        blob_store.load(paths.stills("job-1") / "gone.jpg")

    blob_store.remove(still)
    assert blob_store.entries(paths.stills("job-1")) == frozenset()
    blob_store.remove(paths.job_dir("job-1"))
    blob_store.remove(paths.job_dir("job-1"))  # what is missing is fine
    assert blob_store.entries(paths.jobs) == frozenset()
    assert not blob_store.exists(path)


async def test_a_fetched_blob_is_whole_on_disk(
    blob_store: BlobStore, kept: tuple[Path, bytes], paths: Paths
) -> None:
    path, data = kept
    blob_store.fetch(path)
    assert path.read_bytes() == data
    with pytest.raises(FileNotFoundError):
        blob_store.fetch(paths.upload_dir("job-9") / "0.upload")
    assert not [name for name in os.listdir(path.parent) if name.startswith(".")]


async def test_a_large_upload_goes_in_parts_and_comes_back_whole(
    blob_store: BlobStore, paths: Paths
) -> None:
    """Past a part's size a bucket gets a multipart upload; every byte is where it was."""
    data = os.urandom(20 * 1024 * 1024 + 7)
    path = paths.upload_dir("job-3") / "0.upload"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    blob_store.keep(path)
    if blob_store.remote:  # fetched back from the bucket
        assert not path.exists()
    blob_store.fetch(path)
    assert path.read_bytes() == data
    assert blob_store.read(path, 9 * 1024 * 1024 - 3, 6) == data[9 * 1024 * 1024 - 3 :][:6]


async def test_no_upload_is_abandoned_on_a_fresh_store(blob_store: BlobStore) -> None:
    assert blob_store.abort_abandoned(0) == 0


async def test_stopping_early_waits_for_the_read_ahead(
    blob_store: BlobStore, kept: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read started ahead must end before its source closes: a descriptor closed under
    a running `pread` could be reused by another open and read from the wrong file."""
    path, _ = kept
    started, release = trio.Event(), trio.Event()
    token = trio.lowlevel.current_trio_token()
    reads = []
    real_pread = os.pread

    def hold_second(offset: int) -> None:
        reads.append(offset)
        if len(reads) == 2:  # the read ahead of the first chunk
            token.run_sync_soon(started.set)
            trio.from_thread.run(release.wait, trio_token=token)

    if blob_store.remote:
        from refresher.storage import s3

        real = s3._RangeReader.read

        def slow_read(reader: s3._RangeReader, offset: int, length: int) -> bytes:
            hold_second(offset)
            return real(reader, offset, length)

        monkeypatch.setattr(s3._RangeReader, "read", slow_read)
    else:

        def slow_pread(fd: int, length: int, offset: int) -> bytes:
            hold_second(offset)
            return real_pread(fd, length, offset)

        monkeypatch.setattr(blobs_module.os, "pread", slow_pread)
    before = _open_fds()
    chunks = blob_store.chunks(path, 0, 2 * CHUNK_BYTES)
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
        release.set()
    assert closed.is_set()
    if not blob_store.remote:
        assert _open_fds() == before


def test_local_blobs_are_the_files_themselves(paths: Paths) -> None:
    blobs = LocalBlobs(paths)
    path = paths.job_dir("job-1") / "a.mp4"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    blobs.keep(path)
    assert path.read_bytes() == b"x"
    assert blobs.last_written(path) <= time.time()


@pytest.mark.parametrize("blobs_kind", ["s3"], indirect=True)
async def test_a_download_whose_connection_breaks_reads_on_from_where_it_broke(
    blob_store: BlobStore, paths: Paths, s3_server: S3Server
) -> None:
    from refresher.storage.s3 import S3Blobs, client_from_environment

    assert isinstance(blob_store, S3Blobs)
    data = os.urandom(3 * CHUNK_BYTES + 999)
    path = paths.job_dir("job-1") / "file-1_var1.mp4"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    blob_store.keep(path)
    async with throttled(s3_server.endpoint, bytes_per_s=1e12) as relay:
        environment = {
            **s3_server.env(blob_store.bucket),
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{relay.port}",
        }
        through = S3Blobs(paths, client_from_environment(environment), blob_store.bucket,
                          blob_store.prefix)  # fmt: skip
        relay.cut_after = CHUNK_BYTES + 12345  # part-way through the second chunk
        got = bytearray()
        async with aclosing(through.chunks(path, 5, len(data) - 5)) as chunks:
            async for chunk in chunks:
                got += chunk
    assert relay.cuts == 1
    assert bytes(got) == data[5:]
