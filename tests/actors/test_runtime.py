from __future__ import annotations

import pytest
import trio
import trio.testing

from actors.runtime import Mailbox, NoReply, Supervisor, SupervisorGaveUp


class Worker:
    """An actor whose faults the test controls: it records each start and each message."""

    def __init__(self, name: str = "worker", *, crash_on_start: bool = False) -> None:
        self.name = name
        self.inbox: Mailbox[str] = Mailbox(8)
        self.starts: list[float] = []
        self.received: list[str] = []
        self.crash_on_start = crash_on_start

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.starts.append(trio.current_time())
        if self.crash_on_start:
            raise OSError("disk on fire")
        task_status.started()
        async for message in self.inbox.receive:
            if message == "crash":
                raise ValueError("asked to crash")
            if message == "return":
                return
            self.received.append(message)


async def test_supervisor_reports_started_once_every_actor_runs(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    workers = [Worker("a"), Worker("b")]
    supervisor = Supervisor(workers)
    await nursery.start(supervisor.run)
    assert {name: status.state for name, status in supervisor.status().items()} == {
        "a": "running",
        "b": "running",
    }
    assert [len(worker.starts) for worker in workers] == [1, 1]


@pytest.mark.parametrize("how", ["crash", "return", "kill"])
async def test_actor_is_restarted_within_a_second(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, how: str
) -> None:
    worker, bystander = Worker(), Worker("bystander")
    supervisor = Supervisor([worker, bystander])
    await nursery.start(supervisor.run)
    died_at = trio.current_time()
    if how == "kill":
        supervisor.kill("worker")
    else:
        worker.inbox.post(how)
    await trio.testing.wait_all_tasks_blocked()
    assert supervisor.status()["worker"].state == "restarting"
    status = await supervisor.wait_until("worker", lambda status: status.state == "running")
    assert len(worker.starts) == 2
    assert worker.starts[1] - died_at < 1.0
    assert status.restarts == 1
    expected_error = {"crash": "ValueError", "return": "returned", "kill": "killed"}[how]
    assert expected_error in (status.last_error or "")
    # The other actor was not disturbed.
    assert len(bystander.starts) == 1
    assert supervisor.status()["bystander"].restarts == 0


async def test_messages_sent_while_down_reach_the_restarted_actor(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    worker = Worker()
    supervisor = Supervisor([worker])
    await nursery.start(supervisor.run)
    supervisor.kill("worker")
    await trio.testing.wait_all_tasks_blocked()
    assert supervisor.status()["worker"].state == "restarting"
    assert worker.inbox.post("while you were out")
    await trio.sleep(1)
    assert worker.received == ["while you were out"]


async def test_backoff_doubles_for_an_actor_that_keeps_crashing(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    worker = Worker()
    supervisor = Supervisor([worker], max_restarts=10, backoff_initial_s=0.1, backoff_max_s=0.5)
    await nursery.start(supervisor.run)
    for crashes in range(1, 5):
        worker.inbox.post("crash")
        await supervisor.wait_until(
            "worker", lambda status, n=crashes: status.restarts == n and status.state == "running"
        )
    gaps = [
        later - earlier for earlier, later in zip(worker.starts, worker.starts[1:], strict=False)
    ]
    # Delays 0.1, 0.2, 0.4, then capped at 0.5; crashes happen at once after each start.
    assert gaps == pytest.approx([0.1, 0.2, 0.4, 0.5], abs=0.01)


async def test_supervisor_gives_up_past_the_restart_intensity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    worker, bystander = Worker(crash_on_start=True), Worker("bystander")
    supervisor = Supervisor([bystander, worker], max_restarts=3, period_s=60)
    with (
        trio.fail_after(60),
        pytest.RaisesGroup(
            pytest.RaisesExc(
                SupervisorGaveUp,
                match=r"^actor 'worker' needed 4 restarts within 60 s; giving up$",
            )
        ),
    ):
        await supervisor.run()
    # First run plus three restarts; the fourth failure is one too many.
    assert len(worker.starts) == 4
    assert supervisor.status()["worker"].state == "stopped"


async def test_restarts_spread_over_time_stay_within_intensity(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    worker = Worker()
    supervisor = Supervisor([worker], max_restarts=2, period_s=10)
    await nursery.start(supervisor.run)
    # One crash every 6 s: never more than 2 within any 10 s window.
    for _ in range(6):
        worker.inbox.post("crash")
        await trio.sleep(6)
    status = supervisor.status()["worker"]
    assert (status.state, status.restarts) == ("running", 6)


def test_supervisor_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match=r"^actor names must be unique"):
        Supervisor([Worker("same"), Worker("same")])


def test_kill_of_unknown_actor_names_it() -> None:
    with pytest.raises(KeyError, match="no actor named 'ghost'"):
        Supervisor([Worker()]).kill("ghost")


def test_full_mailbox_refuses_a_post_without_blocking() -> None:
    mailbox: Mailbox[int] = Mailbox(2)
    assert [mailbox.post(number) for number in range(3)] == [True, True, False]


async def test_ask_sends_again_when_a_request_ends_unanswered(nursery: trio.Nursery) -> None:
    mailbox: Mailbox[tuple[int, trio.MemorySendChannel[str]]] = Mailbox(4)
    seen: list[int] = []

    async def responder() -> None:
        async for number, reply in mailbox.receive:
            seen.append(number)
            with reply:  # the first request dies unanswered, as in a killed actor
                if len(seen) > 1:
                    reply.send_nowait(f"answer to {number}")

    nursery.start_soon(responder)
    assert await mailbox.ask(lambda reply: (7, reply), attempts=3) == "answer to 7"
    assert seen == [7, 7]


async def test_ask_gives_up_after_its_attempts(nursery: trio.Nursery) -> None:
    mailbox: Mailbox[trio.MemorySendChannel[str]] = Mailbox(4)

    async def silent() -> None:
        async for reply in mailbox.receive:
            reply.close()

    nursery.start_soon(silent)
    with pytest.raises(NoReply, match=r"^no reply after 2 requests$"):
        await mailbox.ask(lambda reply: reply, attempts=2)
