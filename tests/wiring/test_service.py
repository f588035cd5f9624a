"""The composed service in-process: actors under the supervisor, escalation, shutdown."""

from __future__ import annotations

import dataclasses

import httpx
import hypercorn.trio.tcp_server
import pytest
import trio

from actors.runtime import MAX_RESTARTS, SupervisorGaveUp
from refresher.config import Config
from web.http.patches import HYPERCORN_READ_BYTES
from wiring.service import RunningService, serve


async def test_service_stops_when_an_actor_keeps_dying(config: Config) -> None:
    # Real time: the service runs SQLite in threads, which an autojump clock would skip
    # past. Backoff 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s, so this takes about 3 s.
    with (
        trio.fail_after(30),
        pytest.RaisesGroup(
            pytest.RaisesExc(SupervisorGaveUp, match=r"^actor 'janitor' needed"),
            flatten_subgroups=True,
        ),
    ):
        async with trio.open_nursery() as nursery:
            service: RunningService = await nursery.start(
                lambda task_status: serve(config, shutdown=trio.Event(), task_status=task_status)
            )
            supervisor = service.state.supervisor
            # Every kill within the intensity period is a restart; one more is too many.
            for kills in range(MAX_RESTARTS + 1):
                await supervisor.wait_until(
                    "janitor",
                    lambda status, n=kills: status.restarts == n and status.state == "running",
                )
                supervisor.kill("janitor")
            await trio.sleep_forever()


async def test_shutdown_event_stops_everything_and_closes_the_database(config: Config) -> None:
    shutdown = trio.Event()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            service: RunningService = await nursery.start(
                lambda task_status: serve(config, shutdown=shutdown, task_status=task_status)
            )
            shutdown.set()
    assert service.state.stopping.is_set()
    with pytest.raises(RuntimeError, match=r"^database is closed$"):
        await service.state.db.read(lambda conn: None)


async def test_an_idle_keep_alive_connection_does_not_hold_a_graceful_shutdown(
    config: Config,
) -> None:
    config = dataclasses.replace(config, shutdown_grace_s=30.0)
    shutdown = trio.Event()
    with trio.fail_after(60):
        async with httpx.AsyncClient(timeout=10) as http:
            async with trio.open_nursery() as nursery:
                service: RunningService = await nursery.start(
                    lambda task_status: serve(config, shutdown=shutdown, task_status=task_status)
                )
                # Answered, and the connection stays open for the next request.
                assert (await http.get(f"{service.url}/api/health")).status_code == 200
                began = trio.current_time()
                shutdown.set()
            drained_s = trio.current_time() - began
    # Nothing was running: the drain must not sit out its grace period for an idle peer.
    assert drained_s < config.shutdown_grace_s / 3


async def test_hypercorn_reads_up_to_a_mebibyte_at_a_time(service: RunningService) -> None:
    """Uploads go twice as fast with Hypercorn's reads raised from 64 KiB; the setting is
    a module constant of Hypercorn's, so a Hypercorn without it must fail here, loudly,
    not just slow uploads down."""
    assert hypercorn.trio.tcp_server.MAX_RECV == HYPERCORN_READ_BYTES == 1024 * 1024
