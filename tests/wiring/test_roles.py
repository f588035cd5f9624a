"""The roles a process plays: one does everything, or web and worker processes share a
PostgreSQL store; what each runs, how each says it is healthy, and the deployment files
that start them."""

from __future__ import annotations

import dataclasses
import shlex
import tomllib
from pathlib import Path

import httpx
import pytest
import trio

from refresher.config import Config
from tests.support.s3 import S3Server
from wiring import cli
from wiring.service import NeedsSharedStore, Role, RunningService, serve

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("argv", [["worker"], ["serve", "--role", "web"]])
def test_a_web_or_worker_process_needs_a_shared_store(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert cli.main(argv) == 2
    assert "set DATABASE_URL to the PostgreSQL database they share" in capsys.readouterr().err


async def test_serve_refuses_a_role_without_a_shared_store(config: Config) -> None:
    with pytest.raises(NeedsSharedStore):
        await serve(config, shutdown=trio.Event(), role=Role.WORKER)


async def start(config: Config, role: Role, nursery: trio.Nursery) -> RunningService:
    service: RunningService = await nursery.start(
        lambda task_status: serve(config, shutdown=trio.Event(), role=role, task_status=task_status)
    )
    return service


async def test_each_role_runs_its_own_actors_and_says_so(
    config: Config, postgres_url: str, nursery: trio.Nursery
) -> None:
    shared = dataclasses.replace(config, database_url=postgres_url, metrics_port=0)
    web = await start(shared, Role.WEB, nursery)
    worker = await start(shared, Role.WORKER, nursery)
    assert web.state is not None
    assert worker.state is None
    assert worker.urls == []
    async with httpx.AsyncClient(timeout=10) as http:
        health = (await http.get(f"{web.url}/api/health")).json()
        assert set(health["actors"]) == {
            "bus", "events", "download_tracker", "janitor", "evictor",
        }  # fmt: skip
        assert worker.metrics_url is not None
        worker_health = await http.get(worker.metrics_url.replace("/metrics", "/health"))
        assert worker_health.status_code == 200
        assert worker_health.json()["role"] == "worker"
        assert set(worker_health.json()["actors"]) == {
            "bus", "download_tracker", "processor", "evictor",
        }  # fmt: skip
        metrics = await http.get(worker.metrics_url)
        assert "refresher_jobs_queued" in metrics.text
    nursery.cancel_scope.cancel()


def test_the_scaled_out_fly_config_starts_each_role_with_a_valid_command() -> None:
    fly = tomllib.loads((ROOT / "fly.scaled.toml").read_text())
    commands = fly["processes"]
    assert set(commands) == {"web", "worker"}
    for command in commands.values():
        program, *argv = shlex.split(command)
        assert program == "video-refresher"
        cli._parser().parse_args(argv)  # exits on a command the program does not know
    assert fly["http_service"]["processes"] == ["web"]
    assert fly["checks"]["worker_health"]["processes"] == ["worker"]
    assert fly["checks"]["worker_health"]["port"] == fly["metrics"]["port"]


@pytest.mark.parametrize("value", ["http://bucket", "s3://", "bucket/prefix"])
def test_storage_url_must_name_a_bucket(
    value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORAGE_URL", value)
    assert cli.main(["serve"]) == 2
    assert "STORAGE_URL must be s3://bucket or s3://bucket/prefix" in capsys.readouterr().err


def test_a_bucket_that_cannot_be_used_stops_the_start_with_a_sentence(
    s3_server: S3Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in s3_server.env("no-such-bucket", prefix="results").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PORT", "0")
    assert cli.main(["serve"]) == 2
    error = capsys.readouterr().err
    assert "the bucket 'no-such-bucket' cannot be used" in error
    assert s3_server.secret_key not in error
