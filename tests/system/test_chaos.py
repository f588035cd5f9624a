"""Chaos: a seeded mixed workload while actors are killed at random moments.

Uploads, encodes, downloads (some cut and resumed with Range), cancels, deletes, and the
janitor's and evictor's work on a small quota under a clock that jumps ahead, while a
chaos task kills a random actor every few tenths of a second, well over a hundred times.
Afterwards nothing may be lost or leaked: every job ended with a reason, every download
that completed is byte-identical to every other of the same archive and valid, no
download was cut under its lease, no lease or reservation is left, a janitor pass leaves
no orphan, and every actor runs again with exactly as many restarts as it had kills.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import signal
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
import trio
from sqlalchemy import Connection

from actors.janitor import Janitor
from refresher.config import Config
from refresher.jobs.lifecycle import Lifecycle
from refresher.jobs.status import ACTIVE, FINISHED, TERMINAL, TOMBSTONES, sql_list
from refresher.media.ffmpeg import find_leftover_encoders
from tests.support.clips import Clips
from tests.support.clock import WallClock, wait_for
from tests.support.cluster import CLAIM_TTL_S, Cluster, running_cluster
from tests.support.http import TEST_PASSWORD, StartService, upload
from tests.support.store import sql
from wiring.service import RunningService

pytestmark = pytest.mark.slow

SEED = 20_261_126
KILLS = 120
ACTORS = ("processor", "janitor", "evictor", "download_tracker", "events")
# Small enough that the evictor must work: a job here holds 100-400 KB.
QUOTA_BYTES = 1_500_000
MAX_JOBS = 40
KEEPALIVE_EXPIRY_S = 2.0
# An actor stops at its next checkpoint outside a shield (stopping an FFmpeg takes up to
# seconds) and restarts within its backoff: a kill not counted by then is lost.
KILL_LANDS_WITHIN_S = 60.0


@dataclass
class Record:
    """What the workload did and saw; violations must stay empty."""

    created: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    # A DELETE answered 503 may have been reserved, then finished by the janitor; one
    # cut off unanswered when the workload stopped may have been carried out all the same.
    maybe_deleted: set[str] = field(default_factory=set)
    # ETag -> the bytes of every download of that archive that completed.
    downloads: dict[str, list[bytes]] = field(default_factory=dict)
    resumed: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    kills: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)


async def download(http: httpx.AsyncClient, url: str, rng: random.Random, record: Record) -> None:
    """Download the job's ZIP whole, or cut it short and resume it with Range."""
    cut_at = rng.choice([None, None, 1, 4096, 200_000])
    received = bytearray()
    async with http.stream("GET", url) as response:
        if response.status_code != 200:
            record.refused[response.status_code] += 1
            return
        etag, length = response.headers["etag"], int(response.headers["content-length"])
        try:
            async for chunk in response.aiter_raw():
                received += chunk
                if cut_at is not None and len(received) >= cut_at:
                    break  # the client leaves mid-download
        except httpx.HTTPError as err:
            record.violations.append(f"download of {url} cut under its lease: {err!r}")
            return
    if len(received) < length:
        headers = {"Range": f"bytes={len(received)}-", "If-Range": etag}
        rest = await http.get(url, headers=headers)
        if rest.status_code != 206:
            record.refused[rest.status_code] += 1  # removed meanwhile: nothing was leased
            return
        record.resumed += 1
        received += rest.content
    if len(received) != length:
        record.violations.append(f"download of {url}: {len(received)} of {length} bytes")
        return
    record.downloads.setdefault(etag, []).append(bytes(received))


async def workload(
    service: RunningService, clips: Clips, clock: WallClock, record: Record, stop: trio.Event
) -> None:
    # Kept-alive connections are dropped before the server's own idle timeout (Hypercorn's
    # 5 s): a request sent on one the server is closing that moment would be lost unanswered.
    limits = httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S)
    async with httpx.AsyncClient(base_url=service.url, timeout=60, limits=limits) as http:
        login = await http.post("/api/auth", json={"password": TEST_PASSWORD})
        http.headers["Authorization"] = f"Bearer {login.json()['token']}"

        async def uploads(rng: random.Random) -> None:
            while not stop.is_set() and len(record.created) < MAX_JOBS:
                sources = rng.sample([clips.mp4, clips.mov], rng.randint(1, 2))
                answer = await upload(http, sources, variations=str(rng.randint(1, 3)))
                if answer.status_code == 202:
                    record.created.add(answer.json()["jobId"])
                elif answer.status_code not in (503, 507):  # briefly unavailable, or full
                    record.violations.append(f"upload answered {answer.status_code}")
                await trio.sleep(rng.uniform(0.05, 0.4))

        async def downloads(rng: random.Random) -> None:
            while not stop.is_set():
                await trio.sleep(rng.uniform(0.0, 0.1))
                if not record.created:
                    continue
                job_id = rng.choice(sorted(record.created))
                detail = await http.get(f"/api/jobs/{job_id}")
                if detail.status_code == 200 and detail.json()["downloadUrl"]:
                    await download(http, detail.json()["downloadUrl"], rng, record)

        async def cancels_and_deletes(rng: random.Random) -> None:
            while not stop.is_set():
                await trio.sleep(rng.uniform(0.2, 0.8))
                candidates = sorted(record.created - record.deleted)
                if not candidates:
                    continue
                job_id = rng.choice(candidates)
                if rng.random() < 0.5:
                    answer = await http.post(f"/api/jobs/{job_id}/cancel")
                    expected = (200, 409)
                else:
                    unanswered = job_id not in record.maybe_deleted
                    record.maybe_deleted.add(job_id)
                    answer = await http.delete(f"/api/jobs/{job_id}")
                    expected = (200, 409, 503)
                    if answer.status_code == 200:
                        record.deleted.add(job_id)
                    elif answer.status_code == 409 and unanswered:
                        record.maybe_deleted.discard(job_id)
                if answer.status_code not in expected:
                    record.violations.append(f"{answer.request.method} answered {answer}")

        async def time_passes(rng: random.Random) -> None:
            while not stop.is_set():
                await trio.sleep(rng.uniform(0.5, 1.5))
                clock.advance(20 * 60)  # results live an hour here

        async with trio.open_nursery() as nursery:
            for number, task in enumerate(
                [uploads, downloads, downloads, downloads, cancels_and_deletes, time_passes]
            ):
                nursery.start_soon(task, random.Random(SEED + number))
            await stop.wait()
            nursery.cancel_scope.cancel()


async def chaos(service: RunningService, record: Record, rng: random.Random) -> None:
    supervisor = service.state.supervisor
    for _kill in range(KILLS):
        await trio.sleep(rng.uniform(0.02, 0.3))
        name = rng.choice(ACTORS)
        # Killing an actor still restarting, or one whose last kill has not landed yet (it
        # lands at the actor's next unshielded checkpoint: stopping an FFmpeg takes up to
        # seconds), would be no kill at all: wait until it runs again after the last one.
        with trio.move_on_after(KILL_LANDS_WITHIN_S) as waited:
            await supervisor.wait_until(
                name,
                lambda status, kills=record.kills[name]: (
                    status.state == "running" and status.restarts == kills
                ),
            )
        assert not waited.cancelled_caught, (
            f"{name}: kill {record.kills[name]} never landed: {supervisor.status()[name]}"
        )
        supervisor.kill(name)
        record.kills[name] += 1


async def wait_until_all_ended(service: RunningService) -> None:
    def active(conn: Connection) -> int:
        where = f"status IN {sql_list(ACTIVE)}"
        count: int = sql(conn, f"SELECT count(*) FROM jobs WHERE {where}").scalar_one()
        return count

    async def all_ended() -> bool:
        return not await service.state.db.read(active)

    await wait_for(all_ended, polls=1200, step_s=0.1)


async def held_once_settled(service: RunningService) -> tuple[int, int]:
    """The (leases, reservations) left once what the workload's end cut off has settled.

    A download cut off by the end is released when the server notices its client has
    gone, through the download tracker (which may be restarting after a kill); an
    eviction cut off by a kill is finished by the evictor's next pass. What leaked stays
    for good.
    """

    def count(conn: Connection) -> tuple[int, int]:
        leases = sql(conn, "SELECT count(*) FROM leases").scalar_one()
        reservations = sql(conn, "SELECT count(*) FROM deletion_reservations").scalar_one()
        return leases, reservations

    for _poll in range(300):
        held = await service.state.db.read(count)
        if held == (0, 0):
            break
        await trio.sleep(0.1)
    return held


async def kill_workers(cluster: Cluster, record: Record, rng: random.Random) -> None:
    """SIGKILL a random worker process every second or two, mid-encode or not, and start
    another in its place, until cancelled."""
    while True:
        await trio.sleep(rng.uniform(0.5, 2.0))
        victim = rng.choice(cluster.workers)
        victim.process.send_signal(signal.SIGKILL)
        await victim.process.wait()
        cluster.workers.remove(victim)
        record.kills["worker process"] += 1
        await cluster.start_worker()


@pytest.mark.both_stores
async def test_nothing_is_lost_or_leaked_while_actors_are_killed_at_random(
    start_service: StartService,
    clips: Clips,
    wall_clock: WallClock,
    caplog: pytest.LogCaptureFixture,
    config: Config,
) -> None:
    """On PostgreSQL, worker processes beside the service share the work, and are killed
    too: their claims lapse and are taken over, their encoders die with them."""
    caplog.set_level(logging.INFO)
    # Processes sharing a store share the clock: the worker processes read the real one,
    # so the test's clock starts from it (and then runs ahead, as results age).
    wall_clock.value = time.time()
    service = await start_service(
        restart_limit=100_000,
        restart_backoff_max_s=0.2,
        storage_quota_bytes=QUOTA_BYTES,
        janitor_interval_s=0.5,
        job_ttl_hours=1.0,
        claim_ttl_s=CLAIM_TTL_S,
    )
    state = service.state
    record = Record()
    stop = trio.Event()
    with trio.fail_after(600):
        async with contextlib.AsyncExitStack() as stack:
            cluster = None
            if config.database_url is not None:
                cluster = await stack.enter_async_context(
                    running_cluster(
                        config.data_dir, config.database_url, webs=0, workers=2,
                        STORAGE_QUOTA_BYTES=str(QUOTA_BYTES), JOB_TTL_HOURS="1",
                    )
                )  # fmt: skip
            async with trio.open_nursery() as nursery:
                nursery.start_soon(workload, service, clips, wall_clock, record, stop)
                if cluster is not None:
                    nursery.start_soon(kill_workers, cluster, record, random.Random(SEED - 1))
                await chaos(service, record, random.Random(SEED))
                stop.set()
                nursery.cancel_scope.cancel()
            # A kill lands when the actor next reaches a checkpoint outside its shields (an
            # FFmpeg being stopped takes up to seconds): wait for every one to be counted.
            for name in ACTORS:
                with trio.move_on_after(60) as waited:
                    await state.supervisor.wait_until(
                        name,
                        lambda status, kills=record.kills[name]: (
                            status.restarts == kills and status.state == "running"
                        ),
                    )
                assert not waited.cancelled_caught, (
                    f"{name}: {record.kills[name]} kills, {state.supervisor.status()[name]}"
                )
            await wait_until_all_ended(service)
            # One janitor pass of our own, as the live one may be between passes.
            lifecycle = Lifecycle(
                state.db, state.paths, now=wall_clock, ttl_s=state.config.job_ttl_s
            )
            janitor = Janitor(lifecycle, state.tracker, interval_s=1)
            wall_clock.advance(120)  # past the grace of any DELETE cut short
            await janitor.sweep()

    rows = await state.db.read(
        lambda conn: {row["id"]: row for row in sql(conn, "SELECT * FROM jobs").mappings()}
    )
    held = await held_once_settled(service)

    # No job is lost: each one made is still listed, or its owner deleted it.
    lost = record.created - record.deleted - record.maybe_deleted - set(rows)
    assert not lost, [line for line in caplog.messages if any(job in line for job in lost)]
    # Each ended, with a reason where it did not simply complete or get cancelled.
    for job_id, row in rows.items():
        assert row["status"] in TERMINAL, (job_id, row["status"])
        if row["status"] == "failed":
            assert row["error"], job_id
        if row["status"] in TOMBSTONES:
            assert row["deleted_reason"], job_id
    # Downloads: never cut under a lease; all of one archive identical, and each valid.
    assert record.violations == []
    for etag, bodies in record.downloads.items():
        assert all(body == bodies[0] for body in bodies), etag
        with zipfile.ZipFile(io.BytesIO(bodies[0])) as archive:
            assert archive.testzip() is None
    # No claim outlives its job, no encoder its worker.
    claimed = await state.db.read(
        lambda conn: sql(
            conn, "SELECT count(*) FROM job_files WHERE claim_token IS NOT NULL"
        ).scalar_one()
    )
    assert claimed == 0
    assert await trio.to_thread.run_sync(find_leftover_encoders, state.paths.root) == []
    assert held == (0, 0), await state.db.read(
        lambda conn: [
            (*row, rows[row[0]]["status"] if row[0] in rows else None)
            for row in sql(conn, "SELECT job_id, reason, reserved_at FROM deletion_reservations")
        ]
    )
    # No orphan after that pass: a job directory only for a finished job, no uploads.
    finished = {job_id for job_id, row in rows.items() if row["status"] in FINISHED}
    assert set(os.listdir(state.paths.jobs)) <= finished
    assert os.listdir(state.paths.uploads) == []
    # Every actor runs again, restarted exactly once per kill.
    status = state.supervisor.status()
    assert {name: status[name].state for name in ACTORS} == dict.fromkeys(ACTORS, "running")
    assert {name: status[name].restarts for name in ACTORS} == {
        name: record.kills[name] for name in ACTORS
    }
    ended = Counter(str(row["status"]) for row in rows.values())
    print(
        f"\nchaos: {sum(record.kills.values())} kills {dict(record.kills)}; "
        f"{len(record.created)} jobs made, {len(record.deleted)} deleted, ended {dict(ended)}; "
        f"{sum(map(len, record.downloads.values()))} downloads completed "
        f"({record.resumed} resumed), refused {dict(record.refused)}; violations 0"
    )
