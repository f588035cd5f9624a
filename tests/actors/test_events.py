from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import pytest
import trio
import trio.testing

from actors.events import INBOX_SIZE, SUBSCRIBER_BUFFER, EventHub
from actors.runtime import Supervisor
from refresher.jobs.events import JobEvent

# Nothing here should take more than an instant; a bug that makes a test hang fails it.
TIMEOUT_S = 5


def make_events(count: int, *, job_id: str = "job") -> list[JobEvent]:
    return [JobEvent(job_id, "progress", {"n": n}) for n in range(count)]


def drain(receive: trio.MemoryReceiveChannel[JobEvent]) -> tuple[list[JobEvent], bool]:
    """Take every event buffered now, and say whether the channel has ended."""
    events: list[JobEvent] = []
    while True:
        try:
            events.append(receive.receive_nowait())
        except trio.WouldBlock:
            return events, False
        except trio.EndOfChannel:
            return events, True


async def start_hub(nursery: trio.Nursery) -> EventHub:
    """Run a hub straight in `nursery`, so that a crash of it fails the test."""
    hub = EventHub()
    await nursery.start(hub.run)
    return hub


async def collect(
    hub: EventHub,
    into: list[JobEvent],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A fast subscriber: appends each event to `into` as soon as it arrives."""
    async with hub.subscribe() as receive:
        task_status.started()
        async for event in receive:
            into.append(event)


async def test_every_subscriber_receives_every_event_in_order(nursery: trio.Nursery) -> None:
    hub = await start_hub(nursery)
    events = make_events(SUBSCRIBER_BUFFER // 2)
    with trio.fail_after(TIMEOUT_S):
        async with hub.subscribe() as first, hub.subscribe() as second:
            for event in events:
                hub.publish(event)
            await trio.testing.wait_all_tasks_blocked()
            assert drain(first) == (events, False)
            assert drain(second) == (events, False)


async def test_job_subscriber_receives_only_its_jobs_events_and_unfiltered_receives_all(
    nursery: trio.Nursery,
) -> None:
    hub = await start_hub(nursery)
    mine, theirs = make_events(5, job_id="mine"), make_events(5, job_id="theirs")
    interleaved = [event for pair in zip(mine, theirs, strict=True) for event in pair]
    with trio.fail_after(TIMEOUT_S):
        async with (
            hub.subscribe("mine") as only_mine,
            hub.subscribe() as everything,
            hub.subscribe("nobody") as only_nobody,
        ):
            for event in interleaved:
                hub.publish(event)
            await trio.testing.wait_all_tasks_blocked()
            assert drain(only_mine) == (mine, False)
            assert drain(everything) == (interleaved, False)
            assert drain(only_nobody) == ([], False)


async def test_slow_subscriber_is_dropped_while_publisher_and_fast_subscriber_go_on(
    nursery: trio.Nursery,
) -> None:
    hub = await start_hub(nursery)
    fast: list[JobEvent] = []
    await nursery.start(collect, hub, fast)
    events = make_events(2 * SUBSCRIBER_BUFFER)
    with trio.fail_after(TIMEOUT_S):
        async with hub.subscribe() as slow:
            # Fill the slow subscriber's buffer, let the hub deliver, then publish on into
            # a full buffer: the publisher returns at once every time (it is not even a
            # coroutine), and the hub keeps serving the fast subscriber.
            for event in events[:SUBSCRIBER_BUFFER]:
                assert hub.publish(event) is None
            await trio.testing.wait_all_tasks_blocked()
            for event in events[SUBSCRIBER_BUFFER:]:
                assert hub.publish(event) is None
            await trio.testing.wait_all_tasks_blocked()
            assert fast == events
            # The slow one keeps what fitted in its buffer, then its channel ends.
            assert drain(slow) == (events[:SUBSCRIBER_BUFFER], True)
            with pytest.raises(trio.EndOfChannel):
                await slow.receive()


async def test_publish_drops_events_when_the_inbox_is_full_and_delivers_the_rest_later(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    hub = EventHub()  # not running: nothing empties its inbox
    received: list[JobEvent] = []
    await nursery.start(collect, hub, received)
    overflow = 3
    events = make_events(INBOX_SIZE + overflow)
    with trio.fail_after(TIMEOUT_S):
        with caplog.at_level(logging.WARNING, logger="actors.events"):
            for event in events:
                assert hub.publish(event) is None
        warnings = [r for r in caplog.records if r.name == "actors.events"]
        assert [r.levelno for r in warnings] == [logging.WARNING] * overflow
        await trio.testing.wait_all_tasks_blocked()
        assert received == []
        await nursery.start(hub.run)
        await trio.testing.wait_all_tasks_blocked()
        assert received == events[:INBOX_SIZE]


async def test_unsubscribed_receives_nothing_more_while_others_keep_receiving(
    nursery: trio.Nursery,
) -> None:
    hub = await start_hub(nursery)
    before, after, later = make_events(3)
    with trio.fail_after(TIMEOUT_S):
        async with AsyncExitStack() as leaver:
            # Subscribed first and left first, so the hub meets any stale entry of the
            # leaver before it serves the stayer.
            leaving = await leaver.enter_async_context(hub.subscribe())
            # A clone outlives the context, to see what the hub still sends after it.
            spy = leaving.clone()
            async with hub.subscribe() as staying:
                hub.publish(before)
                await trio.testing.wait_all_tasks_blocked()
                await leaver.aclose()
                assert hub.publish(after) is None
                await trio.testing.wait_all_tasks_blocked()
                assert hub.publish(later) is None
                await trio.testing.wait_all_tasks_blocked()
                assert drain(spy)[0] == [before]
                assert drain(staying) == ([before, after, later], False)


async def test_subscribers_survive_a_restart_of_the_hub(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    hub = EventHub()
    supervisor = Supervisor([hub])
    await nursery.start(supervisor.run)
    before, while_down, after = make_events(3)
    with trio.fail_after(TIMEOUT_S):
        async with hub.subscribe() as subscriber:
            hub.publish(before)
            await trio.testing.wait_all_tasks_blocked()
            supervisor.kill("events")
            await trio.testing.wait_all_tasks_blocked()
            assert supervisor.status()["events"].state == "restarting"
            hub.publish(while_down)
            status = await supervisor.wait_until("events", lambda s: s.state == "running")
            assert status.restarts == 1
            hub.publish(after)
            await trio.testing.wait_all_tasks_blocked()
            assert drain(subscriber) == ([before, while_down, after], False)
