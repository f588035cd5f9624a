"""Finding FFmpeg; finding and killing the encoders an earlier run left behind; running
FFmpeg niced in a process group of its own; and what its exit means."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from refresher.media.ffmpeg import (
    FFMPEG_NICE,
    EncodeFailed,
    FFmpegInterrupted,
    MediaError,
    encoder_mark,
    exit_failure,
    find_ffmpeg,
    find_leftover_encoders,
    kill_leftover_encoders,
    rerun_if_interrupted,
    run_ffmpeg,
)
from refresher.storage.full import StorageFull
from tests.support.clock import wait_for
from tests.support.cluster import alive

# --- find_ffmpeg -------------------------------------------------------------------------


def test_find_ffmpeg_takes_the_configured_executable(tmp_path: Path) -> None:
    fake = tmp_path / "my-ffmpeg"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert find_ffmpeg(str(fake)) == str(fake)


def test_find_ffmpeg_refuses_a_configured_path_that_cannot_run(tmp_path: Path) -> None:
    plain = tmp_path / "not-executable"
    plain.write_text("")
    for configured in (str(tmp_path / "missing"), str(plain)):
        with pytest.raises(MediaError, match=r"^FFMPEG '.+' is not an executable file$"):
            find_ffmpeg(configured)


def test_find_ffmpeg_prefers_path_then_the_bundled_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = tmp_path / "ffmpeg"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_ffmpeg(None) == str(on_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    bundled = find_ffmpeg(None)
    assert "imageio_ffmpeg" in bundled
    assert os.access(bundled, os.X_OK)


# --- leftover encoders -------------------------------------------------------------------


def spawn_sleeper(env_extra: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], env={**os.environ, **env_extra})


def test_only_encoders_marked_for_this_data_dir_are_killed(tmp_path: Path) -> None:
    ours = spawn_sleeper(encoder_mark(tmp_path / "data"))
    other_service = spawn_sleeper(encoder_mark(tmp_path / "other"))
    unmarked = spawn_sleeper({})
    try:
        assert find_leftover_encoders(tmp_path / "data") == [ours.pid]
        assert kill_leftover_encoders(tmp_path / "data") == [ours.pid]
        assert ours.wait(timeout=10) == -9
        assert other_service.poll() is None
        assert unmarked.poll() is None
        assert find_leftover_encoders(tmp_path / "data") == []
    finally:
        for process in (ours, other_service, unmarked):
            process.kill()
            process.wait()


# --- running FFmpeg: niced, in a process group of its own ------------------------------

# A source FFmpeg reads in real time (`-re`) for longer than any test here waits.
ENDLESS = ["-re", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=10:duration=60"]
PROGRESS = ["-hide_banner", "-loglevel", "error", "-nostats", "-progress", "pipe:1"]


def _nice_values(pid: int) -> set[int]:
    """The nice value of each of the process's threads (Linux keeps one per thread)."""
    return {
        int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
        for task in Path(f"/proc/{pid}/task").iterdir()
    }


def _autogroup(pid: int) -> str | None:
    """The scheduling group the kernel put the process in by session. None without
    autogroup: no file, or an empty one when the process's CPU cgroup schedules it
    instead (as in many containers)."""
    try:
        words = Path(f"/proc/{pid}/autogroup").read_text().split()
    except OSError:
        return None
    return words[0] if words else None


async def test_ffmpeg_runs_niced_in_a_process_group_of_its_own_in_our_session(
    ffmpeg: str,
) -> None:
    pids: list[int] = []
    seen: dict[str, object] = {}
    with trio.fail_after(30), trio.CancelScope() as scope:

        def on_out_time_us(value: int) -> None:
            # FFmpeg is running (not `nice` about to start it) and has made its threads.
            pid = pids[0]
            seen["comm"] = Path(f"/proc/{pid}/comm").read_text().strip()
            seen["session"] = os.getsid(pid)
            seen["group"] = os.getpgid(pid)
            seen["nice"] = _nice_values(pid)
            seen["autogroup"] = _autogroup(pid)
            scope.cancel()

        await run_ffmpeg(
            [ffmpeg, *PROGRESS, *ENDLESS, "-f", "null", "-"],
            on_out_time_us=on_out_time_us,
            on_started=pids.append,
        )
    assert scope.cancelled_caught
    [pid] = pids
    assert str(seen["comm"]).startswith("ffmpeg")
    assert seen["group"] == pid
    assert seen["group"] != os.getpgrp()
    # Our session, so our scheduling group: only there does its nice value weigh.
    assert seen["session"] == os.getsid(0)
    assert seen["autogroup"] == _autogroup(os.getpid())
    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + FFMPEG_NICE)
    assert seen["nice"] == {expected}


# Runs in a session of its own: it catches SIGINT as the service does, runs FFmpeg and,
# at FFmpeg's first progress report, sends SIGINT to its own process group, as a
# terminal's Ctrl-C does. It prints what got the signal.
CTRL_C_CHILD = """
import os, signal, sys
import trio
from refresher.media.ffmpeg import run_ffmpeg

async def main():
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        sent = []

        def on_out_time_us(value):
            if not sent:
                sent.append(True)
                os.killpg(os.getpgrp(), signal.SIGINT)

        returncode, _ = await run_ffmpeg(sys.argv[1:], on_out_time_us=on_out_time_us)
        with trio.move_on_after(5):
            async for signum in signals:
                print("the service got", signal.Signals(signum).name)
                break
        print("FFmpeg exited with status", returncode)

trio.run(main)
"""


async def test_ctrl_c_to_the_services_process_group_reaches_only_the_service(
    ffmpeg: str,
) -> None:
    # Three seconds of output in real time: FFmpeg ends on its own unless signalled.
    command = [ffmpeg, *PROGRESS, *ENDLESS, "-t", "3", "-f", "null", "-"]
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-c", CTRL_C_CHILD, *command],
            start_new_session=True,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert (result.returncode, result.stdout.decode(), result.stderr.decode()) == (
        0,
        "the service got SIGINT\nFFmpeg exited with status 0\n",
        "",
    )


# --- what an exit means, and running again after a signal from outside ------------------


def test_an_exit_is_a_signal_from_outside_a_full_storage_or_a_failed_encode() -> None:
    interrupted = [exit_failure(status, "", writing="the variations") for status in (255, -9)]
    assert [str(error) for error in interrupted] == [
        "FFmpeg was stopped by SIGINT or SIGTERM from outside the service",
        "FFmpeg was stopped by SIGKILL from outside the service",
    ]
    assert all(isinstance(error, FFmpegInterrupted) for error in interrupted)
    full = [
        exit_failure(228, "", writing="the variations"),  # FFmpeg's AVERROR(ENOSPC)
        exit_failure(1, "Error writing trailer: No space left on device", writing="the thumbnail"),
    ]
    assert [str(error) for error in full] == [
        "The storage is full: there was no room to write the variations.",
        "The storage is full: there was no room to write the thumbnail.",
    ]
    assert all(isinstance(error, StorageFull) for error in full)
    failed = exit_failure(183, "moov atom not found", writing="the variations")
    assert isinstance(failed, EncodeFailed)
    assert str(failed) == (
        "FFmpeg could not make the variations from this video (it stopped with status 183)."
    )
    assert failed.detail == "moov atom not found"


async def test_an_ffmpeg_stopped_from_outside_runs_again_after_a_pause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []

    async def encode() -> str:
        starts.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if len(starts) < 3:
            raise FFmpegInterrupted(-signal.SIGKILL)
        return "variations"

    assert await rerun_if_interrupted(encode, what="job=j file=f") == "variations"
    # Pauses of 2 s times the attempt: 2 s, then 4 s.
    assert starts == [0.0, 2.0, 6.0]


async def test_an_ffmpeg_stopped_from_outside_every_time_fails_naming_the_signal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def encode() -> str:
        await trio.lowlevel.checkpoint()
        raise FFmpegInterrupted(-signal.SIGKILL)

    with pytest.raises(
        MediaError,
        match=r"^FFmpeg was stopped by SIGKILL from outside the service, 3 times in a row\.$",
    ):
        await rerun_if_interrupted(encode, what="job=j file=f")
    assert trio.current_time() == 6.0


async def test_a_stop_of_the_service_ends_the_pause_before_another_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs = 0

    async def encode() -> str:
        nonlocal runs
        runs += 1
        await trio.lowlevel.checkpoint()
        raise FFmpegInterrupted(255)

    with trio.move_on_after(1) as stop:
        await rerun_if_interrupted(encode, what="job=j file=f")
    assert stop.cancelled_caught
    assert runs == 1


# --- FFmpeg dies with its service ----------------------------------------------------------

# A service that starts FFmpeg (through run_ffmpeg) and prints its PID. trio's idle worker
# threads end after a fraction of a second here: FFmpeg must outlive the thread that
# happened to be around when it started, yet not the service.
SERVICE = """
import sys

import trio
import trio._core._thread_cache as thread_cache

from refresher.media.ffmpeg import run_ffmpeg

thread_cache.IDLE_TIMEOUT = 0.2


async def main() -> None:
    async def threads_come_and_go() -> None:
        while True:
            await trio.to_thread.run_sync(lambda: None)
            await trio.sleep(0.5)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(threads_come_and_go)
        await run_ffmpeg(
            [sys.argv[1], "-hide_banner", "-re", "-f", "lavfi", "-i",
             "testsrc=size=160x120:rate=10", "-t", "600", "-f", "null", "-"],
            on_started=lambda pid: print(pid, flush=True),
        )


trio.run(main)
"""


async def test_ffmpeg_outlives_worker_threads_but_not_its_service(tmp_path: Path) -> None:
    script = tmp_path / "service.py"
    script.write_text(SERVICE)
    service = await trio.lowlevel.open_process(
        [sys.executable, str(script), find_ffmpeg(None)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[3],
    )
    encoder = 0
    try:
        assert service.stdout is not None
        with trio.fail_after(30):
            line = b""
            while not line.endswith(b"\n"):
                line += await service.stdout.receive_some(64)
        encoder = int(line)
        # Threads came and went meanwhile; FFmpeg runs on.
        await trio.sleep(2.0)
        assert alive(encoder)
        service.kill()  # as the kernel's OOM killer or `kill -9` would
        await service.wait()

        async def gone() -> bool:
            return not alive(encoder)

        await wait_for(gone, polls=200, step_s=0.05)
    finally:
        service.kill()
        await service.wait()
        if encoder and alive(encoder):
            os.kill(encoder, signal.SIGKILL)
