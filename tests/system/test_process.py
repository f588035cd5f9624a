"""The service as a real process: started as users start it, stopped as Fly stops it."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from refresher.media.ffmpeg import find_leftover_encoders
from tests.support.clock import wait_for
from tests.support.http import finished, some_variation_done, upload, wait_for_job
from tests.support.process import (
    GRACE_S,
    assert_recovered,
    drain,
    integrity,
    running_service,
    settle_after_restart,
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_the_service_gracefully_with_status_0(
    tmp_path: Path, signum: signal.Signals
) -> None:
    async with (
        running_service(tmp_path / "data") as service,
        httpx.AsyncClient(base_url=service.url) as http,
    ):
        health = (await http.get("/api/health")).json()
        assert set(health["actors"]) == {
            "events", "download_tracker", "processor", "janitor", "evictor",
        }  # fmt: skip
        assert all(actor["state"] == "running" for actor in health["actors"].values())
        login = await http.post("/api/auth", json={"password": service.password})
        assert login.status_code == 200
        # An idle keep-alive connection stays open across the signal.
        service.process.send_signal(signum)
        started = trio.current_time()
        with trio.fail_after(GRACE_S + 10):
            output = await drain(service)
            status = await service.process.wait()
    assert status == 0, output
    assert trio.current_time() - started < GRACE_S + 5
    assert f"{signum.name} received" in output
    assert "stopped" in output


async def test_password_and_sessions_survive_a_kill_and_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with running_service(data_dir) as first:
        async with httpx.AsyncClient(base_url=first.url) as http:
            token = (await http.post("/api/auth", json={"password": first.password})).json()
        first.process.send_signal(signal.SIGKILL)
        assert await first.process.wait() == -signal.SIGKILL
    async with running_service(data_dir) as second:
        assert second.password == first.password
        async with httpx.AsyncClient(base_url=second.url) as http:
            headers = {"Authorization": f"Bearer {token['token']}"}
            assert (await http.get("/api/jobs", headers=headers)).status_code == 200
        second.process.send_signal(signal.SIGTERM)
        assert await second.process.wait() == 0


async def test_bad_configuration_exits_with_one_line(tmp_path: Path) -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "wiring", "serve"],
        env={**os.environ, "DATA_DIR": str(tmp_path), "EVICT_HIGH": "2"},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.decode() == (
        "video-refresher: EVICT_HIGH must be a number > 0 and <= 1, got '2'\n"
    )


@pytest.mark.slow
async def test_job_resumes_after_the_service_is_killed_mid_encode(
    tmp_path: Path, clips: Any
) -> None:
    data_dir = tmp_path / "data"
    async with running_service(data_dir) as first:
        async with httpx.AsyncClient(base_url=first.url, timeout=30) as http:
            login = await http.post("/api/auth", json={"password": first.password})
            http.headers["Authorization"] = f"Bearer {login.json()['token']}"
            job_id = (await upload(http, [clips.long], variations="12")).json()["jobId"]
            await wait_for_job(http, job_id, some_variation_done)

        # Between two FFmpeg runs (measuring a batch, starting the next) none is running:
        # wait for the next one, so the kill lands mid-encode.
        async def encoding() -> list[int]:
            return await trio.to_thread.run_sync(find_leftover_encoders, data_dir)

        with trio.fail_after(60):
            marked = await wait_for(encoding, polls=1200, step_s=0.05)
        first.process.send_signal(signal.SIGKILL)
        await first.process.wait()
    # kill -9 orphans the encoders; they die of a broken pipe at their next progress
    # report or are killed by the next start (tests/refresher/media/test_ffmpeg.py).
    assert marked
    async with running_service(data_dir, JANITOR_INTERVAL_S="0.5") as second:
        async with httpx.AsyncClient(base_url=second.url, timeout=30) as http:
            login = await http.post("/api/auth", json={"password": second.password})
            http.headers["Authorization"] = f"Bearer {login.json()['token']}"
            detail = await wait_for_job(http, job_id, finished, timeout_s=120)
            # The crash suite's checks (tests/system/test_crash.py), after a janitor pass.
            with trio.fail_after(60):
                recovery = await settle_after_restart(second, http, data_dir, job_id)
        second.process.send_signal(signal.SIGTERM)
        assert await second.process.wait() == 0
    assert detail["status"] == "completed"
    assert [out["variationIndex"] for out in detail["files"][0]["outputs"]] == list(range(1, 13))
    assert all(b"zombie" in _state(pid) for pid in marked)
    assert await trio.to_thread.run_sync(find_leftover_encoders, data_dir) == []
    assert_recovered(recovery, variations=12)
    assert await trio.to_thread.run_sync(integrity, data_dir) == "ok"


def _state(pid: int) -> bytes:
    """The process's status text; a process that is gone counts as a zombie."""
    try:
        return Path(f"/proc/{pid}/status").read_bytes().lower()
    except OSError:
        return b"zombie"
