"""The evictor: oldest finished jobs first, exactly down to the low mark, never busy jobs.

Sizes are small and exact: each job made here has two outputs of 1000 bytes, so it holds
2000 bytes. The volume is a fake that sums the bytes under the data directory (plus
"other" bytes that are not ours), or, where the machine allows mounting one, a real
1 MiB tmpfs read with `os.statvfs`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from actors.download_tracker import DownloadTracker
from actors.evictor import Evictor, EvictorUnavailable
from actors.runtime import Supervisor
from refresher.jobs import records
from refresher.jobs.lifecycle import Lifecycle
from refresher.storage.paths import Paths
from refresher.storage.usage import read_volume, stored_bytes
from refresher.store import Database
from tests.support.clock import DAY_S, WallClock, wait_for
from tests.support.fakes import GatedTracker
from tests.support.full_disk import mounted_tmpfs
from tests.support.jobs import NOW, make_finished_job, make_unfinished_job
from tests.support.store import sql

# The job lifecycle, leases, removal and downloads hold on either store.
pytestmark = pytest.mark.both_stores

JOB_BYTES = 2000
GIB = 1024**3


class FakeVolume:
    """A volume of `total` usable bytes holding our files and `other` bytes of others."""

    def __init__(self, total: int, other: int = 0) -> None:
        self.total = total
        self.other = other

    def __call__(self, root: Path) -> tuple[int, int]:
        ours = sum(
            (Path(directory) / name).stat().st_size
            for directory, _dirs, names in os.walk(root)
            for name in names
        )
        return self.other + ours, self.total


ROOMY = FakeVolume(total=1000 * GIB)


async def make_jobs(db: Database, paths: Paths, count: int) -> list[str]:
    """`count` finished jobs of JOB_BYTES each, oldest (by finish time) first."""
    return [
        await make_finished_job(db, paths, now=NOW + index, size=JOB_BYTES // 2, seed=index)
        for index in range(count)
    ]


async def load(db: Database, job_id: str) -> records.JobRecord:
    return await db.read(functools.partial(records.require_job, job_id=job_id))


async def statuses(db: Database, job_ids: list[str]) -> list[str]:
    return [(await load(db, job_id)).status for job_id in job_ids]


async def start(
    nursery: trio.Nursery,
    db: Database,
    paths: Paths,
    *,
    quota_bytes: int = 1000 * GIB,
    high: float = 0.85,
    low: float = 0.5,
    volume: Callable[[Path], tuple[int, int]] | None = ROOMY,
    tracker: DownloadTracker | None = None,
    interval_s: float = 60.0,
) -> tuple[Evictor, DownloadTracker, Supervisor]:
    tracker = tracker or DownloadTracker(db, now=WallClock())
    evictor = Evictor(
        Lifecycle(db, paths, now=WallClock(), ttl_s=DAY_S), tracker, quota_bytes=quota_bytes,
        high=high, low=low, interval_s=interval_s, volume_usage=volume,
    )  # fmt: skip
    supervisor = Supervisor([tracker, evictor])
    await nursery.start(supervisor.run)
    return evictor, tracker, supervisor


async def test_evicts_the_oldest_finished_jobs_exactly_until_under_the_low_mark(
    nursery: trio.Nursery, db: Database, paths: Paths
) -> None:
    jobs = await make_jobs(db, paths, 5)
    # 10 000 bytes stored of a 10 000-byte quota: usage 1.0 > 0.85. Each eviction frees
    # 2000: 0.8, 0.6, then 0.4, the first under 0.5. So exactly the 3 oldest go.
    with trio.fail_after(10):
        evictor, _tracker, _supervisor = await start(nursery, db, paths, quota_bytes=10_000)
        # Requests are served after the check the evictor makes on start.
        assert await evictor.request_room(0)
    assert await statuses(db, jobs) == ["evicted"] * 3 + ["completed"] * 2
    for job_id in jobs[:3]:
        tombstone = await load(db, job_id)
        assert tombstone.deleted_reason == "Removed early to free space for new uploads."
        assert tombstone.outputs == ()
        assert not paths.job_dir(job_id).exists()
    assert await db.read(stored_bytes) == 4000
    assert all(paths.job_dir(job_id).exists() for job_id in jobs[3:])


async def test_processing_queued_and_leased_jobs_survive_eviction(
    nursery: trio.Nursery, db: Database, paths: Paths
) -> None:
    # A queued and a processing job (one output done), each upload holding 1000 bytes.
    long_ago = NOW - 10 * DAY_S
    processing = await make_unfinished_job(
        db, paths, processing=True, upload_bytes=1000, output_bytes=1000, now=long_ago
    )
    queued = await make_unfinished_job(db, paths, upload_bytes=1000, now=long_ago)
    leased, free, newest = await make_jobs(db, paths, 3)
    tracker = DownloadTracker(db, now=WallClock())
    # Stored: 2000 (processing) + 1000 (queued) + 3 x 2000 = 9000 of a 1000-byte quota:
    # nothing the evictor may touch brings it under the low mark, so it evicts all it may.
    with trio.fail_after(10):
        await nursery.start(Supervisor([tracker]).run)
        lease = await tracker.acquire(leased)
        evictor, _tracker, _supervisor = await start(
            nursery, db, paths, quota_bytes=1000, tracker=tracker
        )
        assert not await evictor.request_room(0)
        await tracker.release(lease)
    assert await statuses(db, [processing, queued, leased, free, newest]) == [
        "processing", "queued", "completed", "evicted", "evicted",
    ]  # fmt: skip
    assert paths.upload_dir(processing).exists()
    assert paths.upload_dir(queued).exists()
    assert len(list(paths.job_dir(processing).iterdir())) == 1
    assert len(list(paths.job_dir(leased).glob("*.mp4"))) == 2


class RefusingTracker(DownloadTracker):
    """A tracker that refuses to reserve `refused`, as if a download had just leased it."""

    def __init__(self, db: Database, *, refused: str) -> None:
        super().__init__(db, now=WallClock())
        self.refused = refused

    async def reserve_for_deletion(self, job_id: str, *, reason: str) -> bool:
        if job_id == self.refused:
            return False
        return await super().reserve_for_deletion(job_id, reason=reason)


async def test_a_refused_reservation_moves_eviction_to_the_next_oldest(
    nursery: trio.Nursery, db: Database, paths: Paths
) -> None:
    jobs = await make_jobs(db, paths, 5)
    tracker = RefusingTracker(db, refused=jobs[0])
    # As in the first test 3 jobs must go; the oldest cannot, so the next three do.
    with trio.fail_after(10):
        evictor, _tracker, _supervisor = await start(
            nursery, db, paths, quota_bytes=10_000, tracker=tracker
        )
        assert await evictor.request_room(0)
    assert await statuses(db, jobs) == ["completed"] + ["evicted"] * 3 + ["completed"]


async def test_volume_usage_drives_eviction_when_the_quota_does_not(
    nursery: trio.Nursery, db: Database, paths: Paths
) -> None:
    jobs = await make_jobs(db, paths, 5)
    # Volume: 6000 bytes of others + our 10 000 of 20 000 = 0.8 > 0.75. Each eviction
    # frees 2000: 0.7, 0.6, 0.5 (not under 0.5), 0.4. So the 4 oldest go.
    volume = FakeVolume(total=20_000, other=6000)
    with trio.fail_after(10):
        evictor, _tracker, _supervisor = await start(
            nursery, db, paths, high=0.75, low=0.5, volume=volume
        )
        assert await evictor.request_room(0)
        assert volume(paths.root) == (8000, 20_000)
        # Room is judged on the volume too; its high mark allows 15 000 bytes in use.
        assert await evictor.request_room(7000)  # 8000 + 7000: fits as it is
        assert await statuses(db, jobs) == ["evicted"] * 4 + ["completed"]
        assert await evictor.request_room(7001)  # the newest job goes: 6000 + 7001
        assert await statuses(db, jobs) == ["evicted"] * 5
        assert await evictor.request_room(9000)  # 6000 + 9000: exactly at the mark
        assert not await evictor.request_room(9001)  # nothing left to evict


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs, where the machine lets this process mount one."""
    with mounted_tmpfs(tmp_path / "volume", 1024 * 1024) as mount_point:
        yield mount_point


async def test_statvfs_of_a_real_small_volume_drives_eviction(
    nursery: trio.Nursery, db: Database, tmpfs: Path
) -> None:
    paths = Paths(tmpfs)
    paths.create()
    jobs = [
        await make_finished_job(db, paths, now=NOW + index, size=64 * 1024, seed=index)
        for index in range(6)
    ]
    used, total = read_volume(tmpfs)
    assert total == 1024 * 1024
    # 6 jobs x 128 KiB = 768 KiB of 1 MiB: 0.75 > 0.7. Each eviction frees 128 KiB:
    # 0.625, 0.5, then 0.375, the first under 0.4. So the 3 oldest go.
    assert used == 768 * 1024
    with trio.fail_after(10):
        evictor, _tracker, _supervisor = await start(
            nursery, db, paths, high=0.7, low=0.4, volume=None
        )
        assert await evictor.request_room(0)
    assert await statuses(db, jobs) == ["evicted"] * 3 + ["completed"] * 3
    assert read_volume(tmpfs) == (384 * 1024, 1024 * 1024)


async def test_request_room_evicts_only_what_the_request_needs(
    nursery: trio.Nursery, db: Database, paths: Paths
) -> None:
    jobs = await make_jobs(db, paths, 3)
    # 6000 stored of 10 000; the high mark 0.8 allows 8000.
    with trio.fail_after(10):
        evictor, tracker, _supervisor = await start(
            nursery, db, paths, quota_bytes=10_000, high=0.8, low=0.5
        )
        assert await evictor.request_room(2000)  # 8000: fits as it is
        assert await statuses(db, jobs) == ["completed"] * 3
        assert await evictor.request_room(3000)  # 9000: the oldest job goes, 7000
        assert await statuses(db, jobs) == ["evicted", "completed", "completed"]
        # 9000 does not fit even with both remaining jobs gone: nothing is evicted for it.
        assert not await evictor.request_room(9000)
        assert await statuses(db, jobs) == ["evicted", "completed", "completed"]
        # A leased job cannot go: 4000 stored, 8000 asked, only 2000 may be freed.
        lease = await tracker.acquire(jobs[2])
        assert not await evictor.request_room(8000)
        await tracker.release(lease)
        assert await evictor.request_room(8000)  # both go: 0 + 8000
        assert await statuses(db, jobs) == ["evicted"] * 3
        with pytest.raises(ValueError, match=r"^nbytes must be >= 0$"):
            await evictor.request_room(-1)


async def test_asking_without_evicting_weighs_the_room_and_evicts_nothing(
    nursery: trio.Nursery, db: Database, paths: Paths
) -> None:
    jobs = await make_jobs(db, paths, 3)
    # 6000 stored of 10 000; the high mark 0.8 allows 8000.
    with trio.fail_after(10):
        evictor, _tracker, _supervisor = await start(
            nursery, db, paths, quota_bytes=10_000, high=0.8, low=0.5
        )
        assert await evictor.request_room(2000, evict=False)  # fits as it is
        assert await evictor.request_room(8000, evict=False)  # would, with all three gone
        assert not await evictor.request_room(8001, evict=False)  # never could
        assert await statuses(db, jobs) == ["completed"] * 3


def evicted(db: Database, jobs: list[str], count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await statuses(db, jobs)).count("evicted") >= count

    return check


# 3 jobs, our 6000 bytes + 10 000 of others on a 20 000-byte volume = 0.8 > 0.75.
# Evictions free 2000 each: 0.7, then 0.6, the first under the low mark 0.65. So the
# 2 oldest go.
OTHERS_ARRIVE = 10_000


async def test_a_request_for_room_makes_the_evictor_look(
    nursery: trio.Nursery, db: Database, paths: Paths
) -> None:
    jobs = await make_jobs(db, paths, 3)
    volume = FakeVolume(total=20_000)
    with trio.fail_after(10):
        # An hour between periodic looks: within this test only a request makes it look.
        evictor, _tracker, _supervisor = await start(
            nursery, db, paths, high=0.75, low=0.65, volume=volume, interval_s=3600
        )
        assert await evictor.request_room(0)
        volume.other = OTHERS_ARRIVE
        # Answered only once the evictor has looked and evicted what it had to.
        assert await evictor.request_room(0)
    assert await statuses(db, jobs) == ["evicted", "evicted", "completed"]


async def test_the_evictor_looks_every_interval(
    nursery: trio.Nursery, db: Database, paths: Paths, idle_jump_clock: trio.testing.MockClock
) -> None:
    jobs = await make_jobs(db, paths, 3)
    volume = FakeVolume(total=20_000)
    with trio.fail_after(600):
        evictor, _tracker, _supervisor = await start(
            nursery, db, paths, high=0.75, low=0.65, volume=volume, interval_s=60
        )
        assert await evictor.request_room(0)  # after the look on start, at 0 s
        volume.other = OTHERS_ARRIVE
        await trio.sleep(59 - trio.current_time())
        assert await statuses(db, jobs) == ["completed"] * 3
        await wait_for(evicted(db, jobs, 2), step_s=1)
        # Done by the look at 60 s, not a later one. (Not "by 61 s": while the eviction's
        # writes run in threads, each 50 ms of real time they take moves this clock on,
        # seconds on a busy machine.)
        assert 60 <= trio.current_time() < 120
    assert await statuses(db, jobs) == ["evicted", "evicted", "completed"]


async def reservations(db: Database) -> list[str]:
    rows = await db.read(
        lambda conn: sql(conn, "SELECT job_id FROM deletion_reservations").fetchall()
    )
    return [row[0] for row in rows]


async def test_killing_the_evictor_mid_eviction_is_harmless(
    nursery: trio.Nursery, db: Database, paths: Paths
) -> None:
    jobs = await make_jobs(db, paths, 5)
    tracker = GatedTracker(db, now=WallClock(), hold_call=2)

    async def holding() -> bool:
        return tracker.calls >= 2

    with trio.fail_after(10):
        # As in the first test the 3 oldest must go; killed while the second waits for
        # its reservation, with the oldest reserved and its files still there.
        evictor, _tracker, supervisor = await start(
            nursery, db, paths, quota_bytes=10_000, tracker=tracker
        )
        await wait_for(holding)
        assert await reservations(db) == [jobs[0]]
        assert paths.job_dir(jobs[0]).exists()
        supervisor.kill("evictor")
        await supervisor.wait_until("evictor", lambda status: status.restarts == 1)
        tracker.gate.set()
        assert await evictor.request_room(0)
    # The new run finished the reserved eviction first; at 8000 of 10 000 (0.8, under
    # the high mark) nothing more had to go.
    assert await statuses(db, jobs) == ["evicted"] + ["completed"] * 4
    assert await reservations(db) == []
    assert not paths.job_dir(jobs[0]).exists()
    assert await db.read(stored_bytes) == 8000
    await tracker.release(await tracker.acquire(jobs[1]))


async def test_a_request_cut_off_by_a_kill_is_answered_by_the_next_run(
    nursery: trio.Nursery, db: Database, paths: Paths
) -> None:
    jobs = await make_jobs(db, paths, 3)
    tracker = GatedTracker(db, now=WallClock(), hold_call=1)
    answers: list[bool] = []
    with trio.fail_after(10):
        evictor, _tracker, supervisor = await start(
            nursery, db, paths, quota_bytes=10_000, high=0.8, low=0.5, tracker=tracker
        )
        async with trio.open_nursery() as caller:

            async def ask() -> None:
                answers.append(await evictor.request_room(3000))

            caller.start_soon(ask)
            await wait_for(lambda: trio.to_thread.run_sync(lambda: tracker.calls >= 1))
            supervisor.kill("evictor")
    # 6000 + 3000 > 8000: the oldest job had to go, and did, in the evictor's next run.
    assert answers == [True]
    assert supervisor.status()["evictor"].restarts == 1
    assert await statuses(db, jobs) == ["evicted", "completed", "completed"]


async def test_request_room_raises_when_the_evictor_does_not_answer(
    db: Database, paths: Paths, autojump_clock: trio.testing.MockClock
) -> None:
    silent = Evictor(
        Lifecycle(db, paths, now=WallClock(), ttl_s=DAY_S), DownloadTracker(db, now=WallClock()),
        quota_bytes=1, high=0.8, low=0.5,
    )  # fmt: skip
    with pytest.raises(
        EvictorUnavailable, match=r"^evictor did not answer a request for room for 10 bytes$"
    ):
        await silent.request_room(10)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"quota_bytes": 0}, r"^quota_bytes must be >= 1$"),
        ({"high": 1.5}, r"^high must be > 0 and <= 1$"),
        ({"low": 0.9}, r"^low must be > 0 and below high$"),
        ({"low": 0}, r"^low must be > 0 and below high$"),
        ({"interval_s": 0}, r"^interval_s must be > 0$"),
    ],
)
async def test_evictor_refuses_bad_settings(
    db: Database, paths: Paths, changes: dict[str, float], message: str
) -> None:
    settings: dict[str, float] = {"quota_bytes": 10, "high": 0.85, "low": 0.75, **changes}
    tracker = DownloadTracker(db, now=WallClock())
    lifecycle = Lifecycle(db, paths, now=WallClock(), ttl_s=DAY_S)
    with pytest.raises(ValueError, match=message):
        Evictor(lifecycle, tracker, **settings)  # type: ignore[arg-type]
