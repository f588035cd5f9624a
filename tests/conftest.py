"""Shared fixtures: a configuration in a temporary data dir, and the real service on port 0."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from refresher.config import Config
from refresher.media.ffmpeg import find_ffmpeg
from refresher.storage.blobs import BlobStore, LocalBlobs
from refresher.storage.paths import Paths
from tests.support import s3
from tests.support.clips import Clips, make_clips
from tests.support.clock import WallClock
from tests.support.footage import make_footage
from tests.support.http import TEST_PASSWORD, StartService
from tests.support.postgres import PostgresServer, drop_database, fresh_database, running_server
from wiring.service import RunningService, serve


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    """Small generated clips carrying source metadata, made once per test session."""
    return make_clips(find_ffmpeg(None), tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="session")
def footage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Natural footage (a pan across photographs, with sound): 640x360, 10 s, made once."""
    path = tmp_path_factory.mktemp("footage") / "pan.mp4"
    return make_footage(find_ffmpeg(None), path, width=640, height=360, seconds=10.0)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session, started only when a test asks for one. Its
    folder is outside pytest's (root's, which the server's own user cannot enter)."""
    root = Path(tempfile.mkdtemp(prefix="refresher-pg-"))
    try:
        with running_server(root) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """An empty database of the test's own on the session's PostgreSQL server."""
    url = fresh_database(postgres)
    yield url
    drop_database(postgres, url)


STORES = ("sqlite", "postgresql")


BLOB_STORES = ("files", "s3")
SCALED_PAIRS = [("sqlite", "files"), ("postgresql", "files"), ("postgresql", "s3")]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `both_stores` run once on each backend of the store; tests marked
    `both_blob_stores` once with the bytes in the data directory, once in a bucket."""
    stores = metafunc.definition.get_closest_marker("both_stores") is not None
    blobs = metafunc.definition.get_closest_marker("both_blob_stores") is not None
    # A test that names its own blob store keeps it.
    blobs = blobs and not any(
        "blobs_kind" in str(mark.args[0])
        for mark in metafunc.definition.iter_markers("parametrize")
    )
    if stores and blobs and {"store", "blobs_kind"} <= set(metafunc.fixturenames):
        # Each backend once, and the scaled-out pair: PostgreSQL with a bucket.
        metafunc.parametrize(("store", "blobs_kind"), SCALED_PAIRS, indirect=True,
                             ids=[f"{store}-{kind}" for store, kind in SCALED_PAIRS])  # fmt: skip
    elif stores and "store" in metafunc.fixturenames:
        metafunc.parametrize("store", STORES, indirect=True)
    elif blobs and "blobs_kind" in metafunc.fixturenames:
        metafunc.parametrize("blobs_kind", BLOB_STORES, indirect=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[s3.S3Server]:
    """A real S3 server (SeaweedFS) for the session, started only when a test asks."""
    root = Path(tempfile.mkdtemp(prefix="refresher-s3-"))
    try:
        with s3.running_server(root) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def blobs_kind(request: pytest.FixtureRequest) -> str:
    """Where a test's bytes live: the data directory unless marked `both_blob_stores`."""
    kind: str = getattr(request, "param", "files")
    return kind


@pytest.fixture
def storage_url(blobs_kind: str, request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The service's STORAGE_URL: none (the data directory), or a fresh bucket of the
    session's S3 server, with the AWS_* variables that reach it set for the test."""
    if blobs_kind == "files":
        yield None
        return
    server: s3.S3Server = request.getfixturevalue("s3_server")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    bucket = server.fresh_bucket()
    environment = server.env(bucket, prefix="refresher")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    yield environment["STORAGE_URL"]
    server.drop_bucket(bucket)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    data = Paths(tmp_path / "data")
    data.create()
    return data


@pytest.fixture
def blob_store(paths: Paths, storage_url: str | None) -> BlobStore:
    """The blob store of a test's data directory: its files, or a bucket."""
    if storage_url is None:
        return LocalBlobs(paths)
    from refresher.storage.s3 import S3Blobs

    return S3Blobs.from_environment(paths, storage_url, os.environ)


@pytest.fixture
def store(request: pytest.FixtureRequest) -> str:
    """The store's backend a test runs on: SQLite unless marked `both_stores`."""
    backend: str = getattr(request, "param", "sqlite")
    return backend


@pytest.fixture
def database_url(store: str, request: pytest.FixtureRequest) -> str | None:
    """The service's DATABASE_URL: none (its SQLite file), or a fresh PostgreSQL database."""
    if store == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=STORES)
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a store is opened, once for each backend: a SQLite file, a PostgreSQL URL."""
    if request.param == "sqlite":
        return tmp_path / "db.sqlite3"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def config(tmp_path: Path, database_url: str | None, storage_url: str | None) -> Config:
    return Config(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path / "data",
        auth_password=TEST_PASSWORD,
        shutdown_grace_s=2.0,
        database_url=database_url,
        storage_url=storage_url,
    )


@pytest.fixture
def wall_clock() -> WallClock:
    return WallClock()


@pytest.fixture
async def start_service(
    nursery: trio.Nursery, config: Config, wall_clock: WallClock
) -> AsyncIterator[StartService]:
    """Start the whole service in this test's nursery; `**changes` alter the config, but
    the restart policy (`restart_limit`, `restart_backoff_max_s`) goes to `serve`."""
    shutdowns: list[trio.Event] = []

    async def start(**changes: Any) -> RunningService:
        shutdown = trio.Event()
        shutdowns.append(shutdown)
        policy = ("restart_limit", "restart_backoff_max_s")
        options = {name: changes.pop(name) for name in policy if name in changes}
        service: RunningService = await nursery.start(
            lambda task_status: serve(
                dataclasses.replace(config, **changes),
                shutdown=shutdown,
                now=wall_clock,
                task_status=task_status,
                **options,
            )
        )
        return service

    yield start
    for shutdown in shutdowns:
        shutdown.set()


@pytest.fixture
async def service(start_service: StartService) -> RunningService:
    return await start_service()


@pytest.fixture
async def client(service: RunningService) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        yield http


@pytest.fixture
async def token(client: httpx.AsyncClient) -> str:
    response = await client.post("/api/auth", json={"password": TEST_PASSWORD})
    assert response.status_code == 200, response.text
    value: str = response.json()["token"]
    return value


@pytest.fixture
async def authed(client: httpx.AsyncClient, token: str) -> httpx.AsyncClient:
    client.headers["Authorization"] = f"Bearer {token}"
    return client
