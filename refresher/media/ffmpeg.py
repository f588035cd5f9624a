"""Find, run and stop FFmpeg, and find the encoders an earlier run of this service left.

Every FFmpeg runs niced below the service, in a process group of its own, reports its progress
on stdout and keeps the tail of its stderr for an error message; cancelled, it is asked to
quit (`q`), then terminated, then killed, and always reaped. It writes its outputs under
temporary names (`partial_path`) that its callers rename into place when it succeeded.

Its own process group keeps a terminal's Ctrl-C (or `kill -- -PGID`) from reaching it:
only the service gets the signal, and stops its FFmpegs itself, by cancelling them. So an FFmpeg
that ends by a signal while not cancelled was stopped from outside: no fault of the
video, and never reported as one (`exit_failure` tells it apart as `FFmpegInterrupted`,
and `rerun_if_interrupted` runs it again). A group, not a session: where the kernel
groups processes by session for scheduling (autogroup, on by default), a session of its
own would weigh FFmpeg as much as the whole service, whatever its nice value (measured:
a nice-10 busy loop in a session of its own took 50 % of a core against a nice-0 one,
9 % in a process group of its own).

FFmpeg dies with the process that started it, even by `kill -9`: it is started through
`setpriv --pdeathsig KILL` (util-linux), which asks the kernel to kill it when its parent
dies. The kernel's "parent" is the *thread* that started it, so FFmpeg is started from
the event loop's thread, which lives as long as the process (`Child.start`), never from a
worker thread: trio's own `open_process` starts children in its cached threads, which end
after a while idle and would take a running FFmpeg with them.

Each FFmpeg the processor starts also carries an environment variable naming the data
directory it writes into (`encoder_mark`). Where no `setpriv` exists, an FFmpeg outlives a
crash of its service; the next start of a service that alone uses the data directory
looks for processes carrying that mark and kills them. Matching on the mark rather than
on a remembered PID is safe against PID reuse: a process that merely got an old PID does
not carry it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import trio

from refresher.storage.full import FULL_ERRNOS, StorageFull

LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

# FFmpeg runs below the web server and the database threads. It is started through
# `nice`, so that every thread it makes runs niced: Linux keeps a nice value per thread,
# and setting it from here after the start would miss threads FFmpeg made meanwhile
# (and a `preexec_fn` is unsafe in a process with threads).
FFMPEG_NICE = 10
NICE = "nice"
# FFmpeg's exit status after it caught SIGINT or SIGTERM and cut its outputs short.
SIGNALLED_STATUS = 255
# An FFmpeg stopped by a signal from outside runs again after this pause times its
# attempt, up to this many attempts. A signal meant for the whole service (a stop that
# signals every process of the machine or the group) is followed by the service's own
# stop, which cancels the pause or the run after it, and the job resumes on the next
# start; an FFmpeg killed again and again (by the kernel's out-of-memory killer) fails.
INTERRUPTED_PAUSE_S = 2.0
INTERRUPTED_ATTEMPTS = 3
# Cancellation: after `q` FFmpeg finishes its trailers; give it this long, then SIGTERM,
# then this long again, then SIGKILL.
QUIT_WAIT_S = 2.0
TERM_WAIT_S = 1.0
# The end of FFmpeg's stderr kept for an error message; the rest is dropped as it comes.
STDERR_TAIL_BYTES = 4096
STDERR_TAIL_LINES = 8
# Appended to an output's name while FFmpeg writes it, so that a file under its final
# name is always complete (and a crash's leftovers are recognisable).
PARTIAL_SUFFIX = ".part"

# Prepended to FFmpeg's command line: the kernel kills FFmpeg when its parent dies.
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL")
# The environment variable that marks an encoder; its value is the resolved data dir.
MARK_VARIABLE = "VIDEO_REFRESHER_ENCODER"
# Where running processes' environments are read from (a parameter, for tests).
PROC = Path("/proc")


class MediaError(Exception):
    """FFmpeg or a media file cannot do what was asked."""


class EncodeFailed(MediaError):
    """FFmpeg did not make what it was asked to (`writing`, in words); the message is a
    sentence for people, with no path and none of FFmpeg's own words. `detail` keeps the
    end of FFmpeg's stderr (or why it could not start) for the log; `returncode` is its
    exit status when it ran, else None."""

    def __init__(self, returncode: int | None, detail: str, *, writing: str = "the variations"):
        self.returncode = returncode
        self.detail = detail
        if returncode is None:
            super().__init__(f"FFmpeg could not make {writing}: it could not start.")
        else:
            super().__init__(
                f"FFmpeg could not make {writing} from this video "
                f"(it stopped with status {returncode})."
            )


class FFmpegInterrupted(MediaError):
    """A signal the service did not send stopped FFmpeg (the service stops its own FFmpegs
    by cancelling them, and then no exit status is returned)."""

    def __init__(self, returncode: int) -> None:
        self.returncode = returncode
        if returncode == SIGNALLED_STATUS:
            how = "SIGINT or SIGTERM"
        else:
            try:
                how = signal.Signals(-returncode).name
            except ValueError:
                how = f"signal {-returncode}"
        super().__init__(f"FFmpeg was stopped by {how} from outside the service")


def exit_failure(returncode: int, stderr_tail: str, *, writing: str) -> MediaError | StorageFull:
    """What FFmpeg's non-zero exit means: stopped from outside, no room for `writing` (what
    it was writing, in words), or a failed encode."""
    if returncode < 0 or returncode == SIGNALLED_STATUS:
        return FFmpegInterrupted(returncode)
    # FFmpeg exits with its negative error code's low byte (ENOSPC: 228), and names it.
    if any(
        returncode == (-code & 0xFF) or os.strerror(code) in stderr_tail for code in FULL_ERRNOS
    ):
        return StorageFull(f"there was no room to write {writing}")
    return EncodeFailed(returncode, stderr_tail, writing=writing)


def failure_sentence(err: MediaError | StorageFull | OSError) -> str:
    """Why a file failed, as a sentence for people: never a path or FFmpeg's own words."""
    if isinstance(err, OSError):
        return f"The video could not be made: {err.strerror or 'an input/output error'}."
    return str(err)


def failure_detail(err: BaseException) -> str:
    """What the log keeps of a failure: FFmpeg's last words where it spoke."""
    return f"{err} FFmpeg said: {err.detail}" if isinstance(err, EncodeFailed) else repr(err)


async def rerun_if_interrupted(run: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Return `run()`, run again after a pause each time a signal from outside stopped its
    FFmpeg (`FFmpegInterrupted`), up to INTERRUPTED_ATTEMPTS runs in all.

    After the last, raise `MediaError` naming the signal. `what` names the work in the
    log. Cancellation (the service stopping) ends a pause at once.
    """
    attempt = 1
    while True:
        try:
            return await run()
        except FFmpegInterrupted as err:
            if attempt == INTERRUPTED_ATTEMPTS:
                raise MediaError(f"{err}, {attempt} times in a row.") from err
            pause_s = INTERRUPTED_PAUSE_S * attempt
            LOGGER.warning("%s: %s; running it again in %g s", what, err, pause_s)
            await trio.sleep(pause_s)
            attempt += 1


def find_ffmpeg(configured: str | None) -> str:
    """Return the FFmpeg to run: `configured` (a path or a name on PATH), else PATH, else
    the binary bundled with `imageio-ffmpeg`."""
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise MediaError(f"FFMPEG {configured!r} is not an executable file")
        return found
    found = shutil.which("ffmpeg")
    if found is not None:
        return found
    import imageio_ffmpeg  # type: ignore[import-untyped]

    try:
        bundled: str = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as err:
        raise MediaError(f"no FFmpeg on PATH and none bundled: {err}") from err
    return bundled


# --- temporary outputs -------------------------------------------------------------------


def partial_path(output: Path) -> Path:
    """Where FFmpeg writes `output` until it is complete (a crash may leave it behind)."""
    return output.with_name(output.name + PARTIAL_SUFFIX)


def remove_files(paths: Sequence[Path]) -> None:
    """Remove each of `paths`; one that is already gone is no error (blocking)."""
    for path in paths:
        path.unlink(missing_ok=True)


# --- leftover encoders -------------------------------------------------------------------


def encoder_mark(data_dir: Path) -> dict[str, str]:
    """The environment entries that mark an encoder as belonging to `data_dir`."""
    return {MARK_VARIABLE: str(data_dir.resolve())}


def find_leftover_encoders(data_dir: Path, *, proc: Path = PROC) -> list[int]:
    """PIDs of running processes marked as encoders of `data_dir` (blocking)."""
    ((name, value),) = encoder_mark(data_dir).items()
    wanted = f"{name}={value}".encode()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read: not one of our encoders
            continue
        if wanted in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_leftover_encoders(data_dir: Path) -> list[int]:
    """SIGKILL every leftover encoder of `data_dir`; return their PIDs (blocking)."""
    killed = []
    for pid in find_leftover_encoders(data_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed.append(pid)
        LOGGER.warning("killed leftover encoder pid=%d from an earlier run", pid)
    return killed


# --- running FFmpeg ----------------------------------------------------------------------


async def run_ffmpeg(
    command: list[str],
    *,
    on_out_time_us: Callable[[int], None] | None = None,
    on_started: Callable[[int], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, str]:
    """Run FFmpeg to the end; return its exit status and the tail of its stderr.

    `command` should include `-progress pipe:1` for `on_out_time_us` to get FFmpeg's
    clock (microseconds into the output); `on_started` gets FFmpeg's PID; `env` adds
    variables to FFmpeg's environment. FFmpeg runs niced by FFMPEG_NICE, in a new
    process group of its own, and dies with this process. Raise
    `EncodeFailed` if FFmpeg cannot start. On cancellation stop it (see `_stop`) and reap
    it before Cancelled propagates.
    """
    try:
        process = Child.start(
            [*die_with_parent(), NICE, "-n", str(FFMPEG_NICE), *command],
            env={**os.environ, **env} if env else None,
        )
    except OSError as err:
        raise EncodeFailed(None, f"FFmpeg could not start: {err}") from err
    tail = bytearray()
    try:
        if on_started is not None:
            on_started(process.pid)
        assert process.stdout is not None
        assert process.stderr is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_progress, process.stdout, on_out_time_us)
            nursery.start_soon(_read_tail, process.stderr, tail)
            await process.wait()
    except BaseException:
        with trio.CancelScope(shield=True):
            await _stop(process)
        raise
    finally:
        with trio.CancelScope(shield=True):
            await process.aclose()
    lines = bytes(tail).decode("utf-8", "replace").strip().splitlines()
    assert process.returncode is not None
    return process.returncode, " | ".join(lines[-STDERR_TAIL_LINES:])


def die_with_parent() -> tuple[str, ...]:
    return DIE_WITH_PARENT if shutil.which(DIE_WITH_PARENT[0]) else ()


class Child:
    """A child process with trio streams on its pipes, started from the calling thread."""

    def __init__(self, popen: subprocess.Popen[bytes], pipes: list[int]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdin = trio.lowlevel.FdStream(pipes[0])
        self.stdout = trio.lowlevel.FdStream(pipes[1])
        self.stderr = trio.lowlevel.FdStream(pipes[2])

    @classmethod
    def start(cls, command: list[str], *, env: Mapping[str, str] | None) -> Child:
        """Start `command` with stdin, stdout and stderr piped, in a process group of its
        own (in the service's session: see the module's note on scheduling).

        Call it from trio's thread: see the module's note on the parent's death. Starting
        blocks for the fork and exec, well under a millisecond where Python can vfork.
        """
        stdin_read, stdin_write = os.pipe()
        stdout_read, stdout_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        ours = [stdin_write, stdout_read, stderr_read]
        try:
            popen = subprocess.Popen(
                command,
                stdin=stdin_read,
                stdout=stdout_write,
                stderr=stderr_write,
                process_group=0,
                env=env,
            )
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in (stdin_read, stdout_write, stderr_write):
                os.close(fd)
        return cls(popen, ours)

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    async def wait(self) -> int:
        """Wait for the child to exit, and reap it; return its exit status."""
        if self._popen.poll() is None:
            try:
                pidfd = os.pidfd_open(self.pid)
            except (OSError, AttributeError):  # no pidfd (an old kernel): wait in a thread
                return await trio.to_thread.run_sync(self._popen.wait, abandon_on_cancel=True)
            else:
                try:
                    await trio.lowlevel.wait_readable(pidfd)
                finally:
                    os.close(pidfd)
        return self._popen.wait()

    def terminate(self) -> None:
        self._popen.terminate()

    def kill(self) -> None:
        self._popen.kill()

    async def aclose(self) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            await stream.aclose()


async def _stop(process: Child) -> None:
    """Ask FFmpeg to quit, then insist: `q` on stdin, SIGTERM, SIGKILL; reap it."""
    if process.returncode is not None:
        return
    with trio.move_on_after(QUIT_WAIT_S):
        try:
            assert process.stdin is not None
            await process.stdin.send_all(b"q")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # FFmpeg closed its stdin: it is on its way out already
        await process.wait()
    if process.returncode is None:
        process.terminate()
        with trio.move_on_after(TERM_WAIT_S):
            await process.wait()
    if process.returncode is None:
        LOGGER.warning("FFmpeg %d ignored q and SIGTERM; killing it", process.pid)
        process.kill()
        await process.wait()


async def _read_progress(
    stream: trio.abc.ReceiveStream, on_out_time_us: Callable[[int], None] | None
) -> None:
    pending = b""
    async for chunk in stream:
        *lines, pending = (pending + chunk).split(b"\n")
        pending = pending[-256:]  # a progress line is short; never grow without bound
        for line in lines:
            key, _, value = line.strip().partition(b"=")
            if key == b"out_time_us" and on_out_time_us is not None and value.isdigit():
                on_out_time_us(int(value))


async def _read_tail(stream: trio.abc.ReceiveStream, tail: bytearray) -> None:
    async for chunk in stream:
        tail += chunk
        del tail[:-STDERR_TAIL_BYTES]
