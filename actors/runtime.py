"""Actors and their supervisor.

An actor is an object with a `name`, state it owns, and `async def run(*, task_status)`
that calls `task_status.started()` once it can serve and then loops until cancelled. Its
inbox is a `Mailbox` created with the actor and owned by it for the life of the process,
not by one run: a restarted actor finds the messages sent while it was down. Because the
database is the source of truth and a message only a doorbell, an actor rebuilds
whatever else it needs at the top of `run()`.

The `Supervisor` runs each actor in its own task and restarts it when it crashes, returns,
or is killed from outside (`kill(name)`, for chaos tests), after a backoff that starts
well under a second and doubles for an actor that keeps failing. Past the restart
intensity (more than `max_restarts` restarts of one actor within `period_s`), it gives
up: `run()` raises `SupervisorGaveUp`, which ends the process with a non-zero status so
the platform restarts the machine.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import trio

from refresher import metrics

LOGGER = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# First restart after this long: quick enough that a user never notices, slow enough that
# a crash loop does not spin the CPU.
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0
# Erlang's default intensity is 1 restart in 5 s; actors here restart on transient
# trouble (a full disk, a killed FFmpeg), so allow more before declaring the system sick.
MAX_RESTARTS = 5
PERIOD_S = 60.0


class Actor(Protocol):
    @property
    def name(self) -> str: ...

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...


class Mailbox(Generic[T]):
    """An actor's inbox: a bounded memory channel that outlives any one run of the actor.

    Producers `post()` without waiting; the actor iterates `receive` and must not close
    it (the supervisor may start the actor again on the same mailbox).
    """

    def __init__(self, max_buffer_size: int) -> None:
        self._send, self.receive = trio.open_memory_channel[T](max_buffer_size)

    def post(self, message: T) -> bool:
        """Put `message` in the inbox if there is room; return whether it went in.

        Use for doorbells, whose content is also in the database: a full inbox already
        holds a ring that will make the actor look.
        """
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            return False
        return True

    async def send(self, message: T) -> None:
        """Put `message` in the inbox, waiting for room."""
        await self._send.send(message)

    async def ask(
        self, make_request: Callable[[trio.MemorySendChannel[R]], T], *, attempts: int
    ) -> R:
        """Send a request carrying a reply channel, and return the reply.

        The actor answers on the channel and closes it when done with the request
        (`with request.reply:`), also when it is killed mid-way: the caller then sends
        the request again, so requests must be idempotent. Raise `NoReply` after
        `attempts` requests went unanswered. Bound the wait with a cancel scope: a
        request still queued while the actor is down waits for its restart.
        """
        for _attempt in range(attempts):
            send, receive = trio.open_memory_channel[R](1)
            async with receive:
                await self.send(make_request(send))
                try:
                    return await receive.receive()
                except trio.EndOfChannel:
                    LOGGER.warning("request %s ended unanswered; asking again", make_request)
        raise NoReply(attempts)


class NoReply(RuntimeError):
    def __init__(self, attempts: int) -> None:
        super().__init__(f"no reply after {attempts} requests")


class SupervisorGaveUp(RuntimeError):
    def __init__(self, actor: str, restarts: int, period_s: float) -> None:
        self.actor = actor
        super().__init__(
            f"actor {actor!r} needed {restarts} restarts within {period_s:g} s; giving up"
        )


@dataclass
class ActorStatus:
    """What health reports of one actor: `state` and how often it was restarted."""

    state: str = "starting"  # starting | running | restarting | stopped
    restarts: int = 0
    last_error: str | None = None
    _scope: trio.CancelScope | None = field(default=None, repr=False)
    _restart_times: deque[float] = field(default_factory=deque, repr=False)


class Supervisor:
    """Start actors, keep them running, and report on them."""

    def __init__(
        self,
        actors: Sequence[Actor],
        *,
        max_restarts: int = MAX_RESTARTS,
        period_s: float = PERIOD_S,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        names = [actor.name for actor in actors]
        if len(set(names)) != len(names):
            raise ValueError(f"actor names must be unique, got {names}")
        if max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")
        self._actors = list(actors)
        self._max_restarts = max_restarts
        self._period_s = period_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._status = {name: ActorStatus() for name in names}
        self._changed = trio.Event()

    def status(self) -> dict[str, ActorStatus]:
        return dict(self._status)

    async def wait_until(self, name: str, predicate: Callable[[ActorStatus], bool]) -> ActorStatus:
        """Wait until `predicate(status of name)` holds, and return that status."""
        while not predicate(status := self._status[name]):
            await self._changed.wait()
        return status

    def _set_state(self, status: ActorStatus, state: str) -> None:
        status.state = state
        self._changed.set()
        self._changed = trio.Event()

    def kill(self, name: str) -> None:
        """Cancel the running incarnation of actor `name` now; the supervisor restarts it.

        Simulates an actor dying at an arbitrary await point, for chaos tests.
        """
        try:
            status = self._status[name]
        except KeyError:
            raise KeyError(f"no actor named {name!r}") from None
        if status._scope is not None:
            status._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every actor, report started once all are running, and supervise them.

        Runs until cancelled (which stops every actor) or until an actor passes the
        restart intensity, when it raises `SupervisorGaveUp` after stopping the rest.
        """
        async with trio.open_nursery() as nursery:
            for actor in self._actors:
                await nursery.start(self._supervise, actor)
            task_status.started()

    async def _supervise(self, actor: Actor, *, task_status: trio.TaskStatus[None]) -> None:
        status = self._status[actor.name]
        started = False

        def on_running() -> None:
            nonlocal started
            self._set_state(status, "running")
            if not started:
                started = True
                task_status.started()

        failures_in_a_row = 0
        while True:
            began = trio.current_time()
            outcome = await self._run_once(actor, status, on_running)
            if trio.current_time() - began > self._period_s:
                failures_in_a_row = 0  # it was healthy for a while: start backoff afresh
            failures_in_a_row += 1
            self._count_restart(actor.name, status)
            delay = min(
                self._backoff_max_s,
                self._backoff_initial_s * math.pow(2, failures_in_a_row - 1),
            )
            LOGGER.warning(
                "actor=%s %s; restart %d in %.2f s", actor.name, outcome, status.restarts, delay
            )
            self._set_state(status, "restarting")
            await trio.sleep(delay)

    async def _run_once(
        self, actor: Actor, status: ActorStatus, on_running: Callable[[], None]
    ) -> str:
        """Run one incarnation of `actor`; return how it ended, in words for the log."""
        self._set_state(status, "starting")
        with trio.CancelScope() as scope:
            status._scope = scope
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(actor.run)
                    on_running()
            except Exception as error:  # a crash: log it and let the loop restart it
                status.last_error = _describe(error)
                LOGGER.error("actor=%s crashed", actor.name, exc_info=error)
                return f"crashed ({status.last_error})"
            finally:
                status._scope = None
        if scope.cancelled_caught:
            status.last_error = "killed"
            return "was killed"
        status.last_error = "returned"
        return "returned unexpectedly"

    def _count_restart(self, name: str, status: ActorStatus) -> None:
        now = trio.current_time()
        times = status._restart_times
        times.append(now)
        while times and times[0] <= now - self._period_s:
            times.popleft()
        if len(times) > self._max_restarts:
            self._set_state(status, "stopped")
            raise SupervisorGaveUp(name, len(times), self._period_s)
        status.restarts += 1
        metrics.ACTOR_RESTARTS.labels(name).inc()


def _describe(error: BaseException) -> str:
    """Name the error, looking through the single-error groups that nurseries wrap."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}"
