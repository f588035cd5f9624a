"""The tests' S3 server (`tests/support/s3.py`, SeaweedFS) does what the object store relies
on: signed requests only, whole and ranged reads, multipart uploads (completed and
aborted), listings by prefix a page at a time, batch deletes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import botocore.exceptions
import pytest

from refresher.storage.s3 import client_from_environment, parse_storage_url
from tests.support.s3 import S3Server, running_server

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def bucket(s3: S3Server) -> Iterator[str]:
    name = s3.fresh_bucket()
    yield name
    s3.drop_bucket(name)


def test_signed_requests_only(s3: S3Server, bucket: str) -> None:
    s3.client().put_object(Bucket=bucket, Key="a", Body=b"secret")
    status = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{s3.endpoint}/{bucket}/a"],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    assert status == "403"
    wrong = S3Server(s3.root, s3.endpoint, secret_key="not-the-secret").client()
    with pytest.raises(botocore.exceptions.ClientError, match="SignatureDoesNotMatch"):
        wrong.get_object(Bucket=bucket, Key="a")


def test_put_get_and_ranges(s3: S3Server, bucket: str) -> None:
    client = s3.client()
    data = os.urandom(MIB + 17)
    client.put_object(Bucket=bucket, Key="dir/blob", Body=data)
    assert client.get_object(Bucket=bucket, Key="dir/blob")["Body"].read() == data
    for header, first, last in [
        ("bytes=0-9", 0, 9),
        ("bytes=1000-600000", 1000, 600000),
        (f"bytes={len(data) - 5}-", len(data) - 5, len(data) - 1),
        ("bytes=-7", len(data) - 7, len(data) - 1),
    ]:
        got = client.get_object(Bucket=bucket, Key="dir/blob", Range=header)
        assert got["Body"].read() == data[first : last + 1]
        assert got["ContentRange"] == f"bytes {first}-{last}/{len(data)}"
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidRange"):
        client.get_object(Bucket=bucket, Key="dir/blob", Range=f"bytes={len(data)}-")
    with pytest.raises(botocore.exceptions.ClientError, match="NoSuchKey"):
        client.get_object(Bucket=bucket, Key="dir/missing")


def test_multipart_upload_completed(s3: S3Server, bucket: str) -> None:
    client = s3.client()
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(1234)]
    upload = client.create_multipart_upload(Bucket=bucket, Key="big")["UploadId"]
    done = [
        {
            "PartNumber": number,
            "ETag": client.upload_part(
                Bucket=bucket, Key="big", UploadId=upload, PartNumber=number, Body=part
            )["ETag"],
        }
        for number, part in enumerate(parts, 1)
    ]
    client.complete_multipart_upload(
        Bucket=bucket, Key="big", UploadId=upload, MultipartUpload={"Parts": done}
    )
    whole = b"".join(parts)
    got = client.get_object(Bucket=bucket, Key="big")
    assert got["ContentLength"] == len(whole)
    assert got["ETag"].endswith('-3"')
    assert got["Body"].read() == whole
    across = client.get_object(Bucket=bucket, Key="big", Range=f"bytes={5 * MIB - 3}-{5 * MIB + 2}")
    assert across["Body"].read() == whole[5 * MIB - 3 : 5 * MIB + 3]
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_abandoned_multipart_upload_is_listed_until_aborted(s3: S3Server, bucket: str) -> None:
    client = s3.client()
    upload = client.create_multipart_upload(Bucket=bucket, Key="left")["UploadId"]
    client.upload_part(Bucket=bucket, Key="left", UploadId=upload, PartNumber=1, Body=b"x" * 100)
    listed = client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in listed] == [("left", upload)]
    client.abort_multipart_upload(Bucket=bucket, Key="left", UploadId=upload)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_listing_by_prefix_a_page_at_a_time_and_batch_delete(s3: S3Server, bucket: str) -> None:
    client = s3.client()
    keys = [f"jobs/j1/{i:03d}" for i in range(25)]
    for key in [*keys, "jobs/j2/a", "uploads/u1/a"]:
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    pages = list(
        client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="jobs/j1/", PaginationConfig={"PageSize": 10}
        )
    )
    assert [len(page["Contents"]) for page in pages] == [10, 10, 5]
    assert [item["Key"] for page in pages for item in page["Contents"]] == keys
    deleted = client.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": key} for key in [*keys, "jobs/nothing"]]}
    )
    assert len(deleted["Deleted"]) == len(keys) + 1
    assert "Errors" not in deleted
    left = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [item["Key"] for item in left] == ["jobs/j2/a", "uploads/u1/a"]


def test_env_points_the_services_client_at_the_bucket(s3: S3Server, bucket: str) -> None:
    env = s3.env(bucket, "pre/fix")
    assert s3.env(bucket)["STORAGE_URL"] == f"s3://{bucket}"
    named, prefix = parse_storage_url(env["STORAGE_URL"])
    assert (named, prefix) == (bucket, "pre/fix/")
    client_from_environment(env).put_object(Bucket=named, Key=f"{prefix}a", Body=b"hello")
    got = s3.client().get_object(Bucket=bucket, Key="pre/fix/a")
    assert got["Body"].read() == b"hello"
