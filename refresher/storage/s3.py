"""Blobs in S3-compatible object storage (`STORAGE_URL=s3://bucket/prefix`).

A blob's key is the prefix and its name under the data directory (`jobs/<id>/…`,
`uploads/<id>/…`); the data directory holds scratch copies only. AWS's own client
(boto3) does the protocol: signing, retries, multipart uploads that abort themselves on
an error, ranged reads. It is thread-safe and blocking, so every call runs in a worker
thread, as the SQLite and PostgreSQL stores do. The endpoint and credentials come from
the standard `AWS_*` variables (what `fly storage create` sets), `S3_ENDPOINT_URL` too.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import boto3
import boto3.exceptions
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as ClientConfig

from refresher.storage.blobs import StorageUnavailable, read_ahead
from refresher.storage.paths import Paths, remove_tree

# Parts of a multipart upload: S3's least is 5 MiB; 8 MiB, two at a time, keeps an
# upload's memory near 16 MiB whatever the file's size.
PART_BYTES = 8 * 1024 * 1024
UPLOAD_CONCURRENCY = 2
# How often a download's GET that broke part-way is opened again from where it broke.
REOPEN_ATTEMPTS = 3
DELETE_BATCH = 1000  # S3's most per DeleteObjects

P = ParamSpec("P")
T = TypeVar("T")


def parse_storage_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` as (bucket, prefix with a trailing slash, or "")."""
    parts = urlsplit(url.strip())
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError("must be s3://bucket or s3://bucket/prefix")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


def client_from_environment(environ: Mapping[str, str]) -> Any:
    """An S3 client configured by the standard variables (`AWS_ENDPOINT_URL` or
    `S3_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`)."""
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    endpoint = endpoint or environ.get("S3_ENDPOINT_URL") or None
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "auto"
    config = ClientConfig(
        region_name=region,
        signature_version="s3v4",
        # Path-style works with every S3-compatible server; virtual hosts need DNS.
        s3={"addressing_style": "path"},
        # AWS_MAX_ATTEMPTS, as every AWS client reads it, or five tries.
        retries={"max_attempts": int(environ.get("AWS_MAX_ATTEMPTS") or 5), "mode": "standard"},
        max_pool_connections=32,
        connect_timeout=10,
        read_timeout=60,
        # Checksums only where the API needs them: not every S3-compatible server
        # takes the checksums newer clients send on every upload by default.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session(
        aws_access_key_id=environ.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=environ.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=environ.get("AWS_SESSION_TOKEN"),
    )
    return session.client("s3", endpoint_url=endpoint, config=config)


def _answered(method: Callable[P, T]) -> Callable[P, T]:
    """`method` with the storage's own failures (unreachable, refused, a bucket gone) raised
    as `StorageUnavailable`; a missing blob stays FileNotFoundError."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
                boto3.exceptions.Boto3Error) as err:  # fmt: skip
            raise StorageUnavailable(f"the object storage failed: {err}") from err

    return call


def _missing(err: botocore.exceptions.ClientError) -> bool:
    code = str(err.response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


class S3Blobs:
    """Blobs in a bucket, under `prefix`, named by their paths under `paths.root`."""

    remote = True

    def __init__(self, paths: Paths, client: Any, bucket: str, prefix: str = "") -> None:
        self.paths = paths
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self._transfer = TransferConfig(
            multipart_threshold=PART_BYTES,
            multipart_chunksize=PART_BYTES,
            max_concurrency=UPLOAD_CONCURRENCY,
            use_threads=True,
        )

    @classmethod
    def from_environment(cls, paths: Paths, url: str, environ: Mapping[str, str]) -> S3Blobs:
        bucket, prefix = parse_storage_url(url)
        return cls(paths, client_from_environment(environ), bucket, prefix)

    def key(self, path: Path) -> str:
        return self.prefix + self.paths.relative(path)

    def check(self) -> None:
        """Fail at start, in words, when the bucket cannot be reached (blocking)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as err:
            code = err.response.get("Error", {}).get("Code", "?")
            raise StorageUnavailable(
                f"STORAGE_URL: the bucket {self.bucket!r} cannot be used (the storage "
                f"answered {code}): check the bucket's name, AWS_ENDPOINT_URL and the keys"
            ) from None
        except botocore.exceptions.BotoCoreError as err:
            raise StorageUnavailable(
                f"STORAGE_URL: the object storage cannot be reached ({err}): check "
                "AWS_ENDPOINT_URL and the AWS_* keys"
            ) from None

    # --- writing and fetching ---

    @_answered
    def keep(self, path: Path) -> None:
        """Upload `path` (in parts past PART_BYTES; a failed upload aborts its parts), then
        drop the local copy."""
        self.client.upload_file(str(path), self.bucket, self.key(path), Config=self._transfer)
        path.unlink(missing_ok=True)

    @_answered
    def fetch(self, path: Path) -> None:
        """Download the blob to `path` under a temporary name, renamed when complete, so a
        file at `path` is always whole."""
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.fetching")
        try:
            self.client.download_file(
                self.bucket, self.key(path), str(partial), Config=self._transfer
            )
            os.replace(partial, path)
        except botocore.exceptions.ClientError as err:
            if _missing(err):
                raise FileNotFoundError(f"no blob {self.paths.relative(path)}") from None
            raise
        finally:
            partial.unlink(missing_ok=True)

    # --- reading ---

    @_answered
    def read(self, path: Path, offset: int, length: int) -> bytes:
        """One ranged GET, read by the same reader as downloads (short: OSError)."""
        if length <= 0:
            return b""
        reader = _RangeReader(self, path, offset + length)
        try:
            return reader.read(offset, length)
        finally:
            reader.close()

    @_answered
    def load(self, path: Path) -> bytes:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key(path))
        except botocore.exceptions.ClientError as err:
            if _missing(err):
                raise FileNotFoundError(f"no blob {self.paths.relative(path)}") from None
            raise
        with contextlib.closing(answer["Body"]) as body:
            data: bytes = body.read()
        return data

    async def chunks(self, path: Path, offset: int, length: int) -> AsyncGenerator[bytes, None]:
        """One GET of the whole range, its body read a chunk at a time in a thread, one
        chunk ahead of the send (measured, 1 GiB ZIP from SeaweedFS on loopback: 2 MiB
        ranged GETs two in flight ~340-400 MB/s at ~1.9 CPU s/GB; one GET ~950-1000 MB/s
        at ~0.57 CPU s/GB, 0.74 of what SeaweedFS serves to curl). A body cut short is
        read on from where it broke."""
        body = _RangeReader(self, path, offset + length)
        reads = read_ahead(body.read, offset, length, self.paths.relative(path))
        try:
            async with contextlib.aclosing(reads):
                async for chunk in reads:
                    yield chunk
        finally:
            body.close()

    # --- listing ---

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Every page of the listing of the keys under `prefix`."""
        yield from self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )

    @_answered
    def exists(self, path: Path) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(path))
        except botocore.exceptions.ClientError as err:
            if _missing(err):
                return bool(self.entries(path))
            raise
        return True

    @_answered
    def entries(self, folder: Path) -> frozenset[str]:
        """From the keys themselves, not a delimited listing: some S3-compatible servers
        (SeaweedFS) list a folder whose objects were all deleted as a common prefix."""
        below = self.key(folder) + "/"
        return frozenset(
            item["Key"][len(below) :].split("/", 1)[0]
            for page in self._objects(below)
            for item in page.get("Contents", [])
            if len(item["Key"]) > len(below)
        )

    @_answered
    def last_written(self, path: Path) -> float:
        key = self.key(path)
        newest: datetime | None = None
        for page in self._objects(key):
            for item in page.get("Contents", []):
                if item["Key"] == key or item["Key"].startswith(key + "/"):
                    moment: datetime = item["LastModified"]
                    newest = moment if newest is None else max(newest, moment)
        if newest is None:
            raise FileNotFoundError(f"no blob {self.paths.relative(path)}")
        return newest.timestamp()

    def now(self) -> float:
        return time.time()

    # --- removing ---

    @_answered
    def remove(self, path: Path) -> None:
        # The local copy first: it goes even when the bucket cannot be reached.
        if path.is_dir() and not path.is_symlink():
            remove_tree(path)
        else:
            path.unlink(missing_ok=True)
        key = self.key(path)
        doomed = [
            item["Key"]
            for page in self._objects(key)
            for item in page.get("Contents", [])
            if item["Key"] == key or item["Key"].startswith(key + "/")
        ]
        for start in range(0, len(doomed), DELETE_BATCH):
            batch = doomed[start : start + DELETE_BATCH]
            answer = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": name} for name in batch], "Quiet": True},
            )
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise OSError(f"could not delete {first.get('Key')}: {first.get('Message')}")

    def volume(self) -> tuple[int, int]:
        return 0, 0  # a bucket has no volume to fill: the quota alone counts

    @_answered
    def abort_abandoned(self, older_than_s: float) -> int:
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        aborted = 0
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Initiated"] > cutoff:
                    continue
                with contextlib.suppress(botocore.exceptions.ClientError):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted


class _RangeReader:
    """The body of one ranged GET, up to `end`, read in order by `read(at, size)` (one
    call at a time, each in a worker thread): reopened from `at` when the connection
    breaks part-way, since the client retries requests but not a body's reads."""

    def __init__(self, blobs: S3Blobs, path: Path, end: int) -> None:
        self.blobs, self.path, self.end = blobs, path, end
        self.body: Any = None
        self.position = -1

    def _open(self, at: int) -> None:
        self.close()
        try:
            answer = self.blobs.client.get_object(
                Bucket=self.blobs.bucket, Key=self.blobs.key(self.path),
                Range=f"bytes={at}-{self.end - 1}",
            )  # fmt: skip
        except botocore.exceptions.ClientError as err:
            if _missing(err):
                raise FileNotFoundError(f"no blob {self.blobs.paths.relative(self.path)}") from None
            if str(err.response.get("Error", {}).get("Code", "")) == "InvalidRange":
                raise self._short() from None
            raise
        self.body, self.position = answer["Body"], at

    def _short(self) -> OSError:
        return OSError(f"{self.blobs.paths.relative(self.path)} is shorter than recorded")

    @_answered
    def read(self, at: int, size: int) -> bytes:
        for attempt in range(REOPEN_ATTEMPTS + 1):
            if self.body is None or self.position != at:
                self._open(at)
            try:
                data = self._read_exactly(size)
            except (botocore.exceptions.IncompleteReadError,
                    botocore.exceptions.ReadTimeoutError,
                    botocore.exceptions.ResponseStreamingError) as err:  # fmt: skip
                self.close()
                if attempt == REOPEN_ATTEMPTS:
                    raise StorageUnavailable(f"the object storage broke off a read: {err}") from err
                continue
            self.position += len(data)
            if len(data) < size:  # the body ended where it should not: the object is short
                raise self._short()
            return data
        raise AssertionError("unreachable")

    def _read_exactly(self, size: int) -> bytes:
        parts, wanted = [], size
        while wanted > 0:
            part: bytes = self.body.read(wanted)
            if not part:
                break
            parts.append(part)
            wanted -= len(part)
        return b"".join(parts)

    def close(self) -> None:
        if self.body is not None:
            with contextlib.suppress(Exception):
                self.body.close()
            self.body = None
