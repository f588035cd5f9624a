"""The disk-full suite, end to end: the whole service over HTTP on 127.0.0.1, its DATA_DIR
on a real small tmpfs, filled by uploads, by an encode and by a file that leaves the
database no room; then room comes back.

The quota is far larger than any volume here, so the volume, not the quota, is what
fills. Mounting needs root (tests run as root, in CI too); elsewhere each test is
skipped with mount's own words. The unit and actor tests of the same faults are
`tests/refresher/storage/test_full_disk.py` and `tests/actors/test_processor_faults.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from refresher.config import MIB, Config
from tests.support.clock import WallClock, wait_for
from tests.support.forms import BOUNDARY, form_body
from tests.support.full_disk import fill_volume, free_bytes, mounted_tmpfs, resize_tmpfs
from tests.support.http import TEST_PASSWORD, StartService, finished, upload, wait_for_job
from tests.support.jobs import leftovers, make_unfinished_job
from tests.support.tus import TUS, declare, offset_of, patch
from web.intake import NO_ROOM
from web.routes import resumable
from wiring.service import RunningService

pytestmark = pytest.mark.slow

# Far more than any volume here: the volume, not the quota, is what fills.
QUOTA_BYTES = 1024 * MIB
# Each wait; every test takes a few seconds on 2 cores, the bound is for a loaded runner.
TIMEOUT_S = 30
MULTIPART = f"multipart/form-data; boundary={BOUNDARY.decode()}"
# How often the health watcher asks while a volume fills.
HEALTH_POLL_S = 0.1
# Every actor's (state, restarts), as the health tells them when none has crashed.
UP = {("running", 0)}
# The reasons a file that found no room fails with: the encode's own ("The storage is
# full: ...") or the processor's question before it ("There was no room to store ...").
NO_ROOM_REASONS = ("The storage is full", "There was no room")


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs for the service's DATA_DIR; each test gives it its size before starting."""
    with mounted_tmpfs(tmp_path / "volume", 64 * MIB) as mount:
        yield mount


@pytest.fixture
def config(config: Config, volume: Path) -> Config:
    """The service's config: DATA_DIR on the tmpfs, and a quota larger than it. As
    `start_service` takes this config, the tmpfs is unmounted only once the service has
    stopped."""
    return dataclasses.replace(config, data_dir=volume, storage_quota_bytes=QUOTA_BYTES)


@contextlib.asynccontextmanager
async def serving(
    start_service: StartService, volume: Path, size_bytes: int, **changes: Any
) -> AsyncIterator[tuple[RunningService, httpx.AsyncClient]]:
    """Size the tmpfs, start the service on it (with config `changes`), and yield it with
    a client logged in."""
    await trio.to_thread.run_sync(resize_tmpfs, volume, size_bytes)
    service = await start_service(**changes)
    assert service.state.config.data_dir == volume
    async with httpx.AsyncClient(base_url=service.url, timeout=TIMEOUT_S) as http:
        login = await http.post("/api/auth", json={"password": TEST_PASSWORD})
        assert login.status_code == 200, login.text
        http.headers["Authorization"] = f"Bearer {login.json()['token']}"
        yield service, http


async def actor_health(http: httpx.AsyncClient) -> dict[str, tuple[str, int]]:
    """Each actor's (state, restarts) as `GET /api/health` tells them."""
    actors = (await http.get("/api/health")).json()["actors"]
    return {name: (actor["state"], actor["restarts"]) for name, actor in actors.items()}


def restarts(actors: dict[str, tuple[str, int]]) -> int:
    """All the actors' restarts together."""
    return sum(count for _, count in actors.values())


async def watch_health(http: httpx.AsyncClient, answers: Counter[int]) -> None:
    """Ask for the health every HEALTH_POLL_S until cancelled, counting statuses and
    adding a 600 for each answer where an actor had restarted."""
    while True:
        health = await http.get("/api/health")
        restarted = any(actor["restarts"] for actor in health.json()["actors"].values())
        answers[600 if restarted else health.status_code] += 1
        await trio.sleep(HEALTH_POLL_S)


def assert_answered_without_500(response: httpx.Response) -> None:
    """A success, or an error other than 500 given as `{"error": <a sentence>}`."""
    if response.status_code < 400:
        return
    assert response.status_code != 500, response.text
    error = response.json()["error"]
    assert isinstance(error, str), response.text
    assert error.endswith("."), response.text


def assert_refused_for_room(response: httpx.Response) -> None:
    """507 with the service's sentence, or a 413 or 400 whose sentence names the reason."""
    assert response.status_code in (400, 413, 507), response.text
    if response.status_code == 507:
        assert response.json() == {"error": NO_ROOM}
    assert_answered_without_500(response)


def job_ids_on_disk(config: Config) -> set[str]:
    """The jobs that have anything under uploads/ or jobs/."""
    return {Path(path).parts[1] for path in leftovers(config)}


def report(capsys: pytest.CaptureFixture[str], test: str, **figures: object) -> None:
    """Print one line of the test's figures, also when output is captured."""
    with capsys.disabled():
        print(f"\n[{test}] " + " ".join(f"{name}={value}" for name, value in figures.items()))


# --- uploads fill the volume ------------------------------------------------------------


async def test_uploads_until_the_volume_is_full_get_507_leave_nothing_and_actors_stay_up(
    start_service: StartService,
    volume: Path,
    config: Config,
    clips: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Uploads of the 398 KB clip, one after the other, onto 4 MiB, whose high mark (85 %)
    # is at 3.6 MB: the jobs queue faster than the processor ends them (and only ended
    # jobs can be evicted), so about seven fit beside the store and the variations made
    # meanwhile, and the next is refused.
    most_uploads = 30
    responses: list[httpx.Response] = []
    health: Counter[int] = Counter()
    async with serving(start_service, volume, 4 * MIB) as (_, http):
        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as watcher:
                watcher.start_soon(watch_health, http, health)
                while len(responses) < most_uploads:
                    responses.append(await upload(http, [clips.long], variations="1"))
                    if responses[-1].status_code != 202:
                        break
                accepted = {r.json()["jobId"] for r in responses if r.status_code == 202}
                # Nothing of the refused upload stays: only accepted jobs have files.
                assert job_ids_on_disk(config) <= accepted
                ended = Counter(
                    [
                        (await wait_for_job(http, job_id, finished, timeout_s=TIMEOUT_S))["status"]
                        for job_id in accepted
                    ]
                )
                watcher.cancel_scope.cancel()
        actors = await actor_health(http)
        free = free_bytes(volume)
    *_, refused = responses
    assert_refused_for_room(refused)
    # Each ended job's upload is gone; what is left is only theirs.
    assert not list((volume / "uploads").iterdir())
    assert job_ids_on_disk(config) <= accepted
    assert set(health) == {200}, health
    assert set(actors.values()) == UP, actors
    report(
        capsys, "uploads", accepted=len(accepted), refused=f"1 ({refused.status_code})",
        jobs=dict(ended), free_bytes=free, health_answers=sum(health.values()),
        restarts=restarts(actors),
    )  # fmt: skip


async def test_an_upload_whose_video_fills_the_volume_to_the_last_page_gets_507_not_500(
    start_service: StartService,
    volume: Path,
    config: Config,
    clips: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Room is given on an almost empty volume; then, before the video's first byte comes,
    # the volume fills up to exactly the pages the video takes. (In the field, uploads
    # sent together fill a volume so, when their answers for room come before their bytes:
    # room is an answer, not a reservation.)
    video = clips.long.read_bytes()
    form = form_body([("variations", None, b"1"), ("videos", "long.mp4", video)])
    headers = {"Content-Type": MULTIPART, "Content-Length": str(len(form))}
    before_video = form.index(video)
    filled = trio.Event()
    responses: list[httpx.Response] = []

    async def body() -> AsyncIterator[bytes]:
        yield form[:before_video]
        await filled.wait()
        yield form[before_video:]

    async def send() -> None:
        responses.append(await http.post("/api/jobs", content=body(), headers=headers))

    async def video_opened() -> bool:  # room was given, the form read up to the video
        return bool(await trio.to_thread.run_sync(lambda: [*volume.glob("uploads/*/*")]))

    async with serving(start_service, volume, 4 * MIB) as (_, http):
        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                await wait_for(video_opened)
                page = os.statvfs(volume).f_frsize  # tmpfs hands out room in pages
                video_pages = -(-len(video) // page) * page
                await trio.to_thread.run_sync(
                    lambda: fill_volume(volume / "filler", leave_bytes=video_pages)
                )
                filled.set()
            [response] = responses
            actors = await actor_health(http)
            report(
                capsys, "upload fills the volume", answer=response.status_code,
                free_bytes=free_bytes(volume), restarts=restarts(actors),
            )  # fmt: skip
            assert_refused_for_room(response)
            assert job_ids_on_disk(config) == set()
            assert set(actors.values()) == UP, actors


async def test_a_resumable_upload_that_meets_a_full_volume_gets_507_and_keeps_what_fit(
    start_service: StartService,
    volume: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Room is weighed when declared and given as bytes come; the volume then fills under
    # the PATCH (others' writes): the write that finds no room is a 507, the bytes kept
    # before it stay kept, and the upload goes on once there is room again. (The full
    # store could not record the PATCH's hold ended: it lapses, here within a second, and
    # the client's next PATCH, as tus clients do after a 423, goes through.)
    monkeypatch.setattr(resumable, "HOLD_S", 1.0)
    data = os.urandom(2 * MIB)
    async with serving(start_service, volume, 4 * MIB) as (_, http):
        with trio.fail_after(TIMEOUT_S):
            location = (await declare(http, len(data))).headers["Location"]
            assert (await patch(http, location, 0, data[: MIB // 4])).status_code == 204
            filled = trio.Event()

            async def body() -> AsyncIterator[bytes]:
                # A piece (the PATCH is given room for 1 MiB for it), then, once the
                # volume is full, more within that room: its write meets the full volume.
                yield data[MIB // 4 : MIB // 2]
                await filled.wait()
                yield data[MIB // 2 :]

            async def fill_soon() -> None:
                await trio.sleep(0.5)  # the first piece is in, its room given
                await trio.to_thread.run_sync(
                    lambda: fill_volume(volume / "filler", leave_bytes=64 * 1024)
                )
                filled.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(fill_soon)
                refused = await http.patch(
                    location, content=body(),
                    headers={**TUS, "Upload-Offset": str(MIB // 4),
                             "Content-Type": "application/offset+octet-stream"},
                )  # fmt: skip
            kept = await offset_of(http, location)
            actors = await actor_health(http)
            report(
                capsys, "resumable upload fills the volume", answer=refused.status_code,
                kept=kept, restarts=restarts(actors),
            )  # fmt: skip
            assert refused.status_code == 507, refused.text
            assert refused.json() == {"error": NO_ROOM}
            assert MIB // 4 <= kept < len(data)
            assert set(actors.values()) == UP, actors
            await trio.Path(volume / "filler").unlink()

            async def resumed() -> httpx.Response | None:
                answer = await patch(http, location, kept, data[kept:])
                return None if answer.status_code == 423 else answer

            done = await wait_for(resumed, polls=100, step_s=0.1)
            assert done.status_code == 204, done.text
            assert await offset_of(http, location) == len(data)
            stored = volume / "resumable" / location.rsplit("/", 1)[1]
            assert await trio.Path(stored).read_bytes() == data


# --- an encode fills the volume ---------------------------------------------------------


async def test_an_encode_that_outgrows_the_volume_ends_the_job_with_what_fit_and_no_restart(
    start_service: StartService,
    volume: Path,
    config: Config,
    clips: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Ten variations of the 398 KB clip come out at about 420 KB each, made by two FFmpeg
    # runs of five (`encoding.batch_sizes(10, 5)`), each asking first for room for five
    # times the upload (2 MB). On 4.5 MiB, whose high mark (85 %) is at 4 MB, beside the
    # upload and the store (under 1 MB) the first run fits and the second cannot.
    variations = 10
    health: Counter[int] = Counter()
    async with serving(start_service, volume, 9 * MIB // 2) as (_, http):
        created = await upload(http, [clips.long], variations=str(variations))
        assert created.status_code == 202, created.text
        job_id = created.json()["jobId"]
        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as watcher:
                watcher.start_soon(watch_health, http, health)
                job = await wait_for_job(http, job_id, finished, timeout_s=TIMEOUT_S)
                watcher.cancel_scope.cancel()
        actors = await actor_health(http)
        free = free_bytes(volume)
    [file] = job["files"]
    stored = len(file["outputs"])
    assert 0 < stored < variations, job
    if file["status"] == "completed":
        assert job["status"] == "completed"
    else:
        assert (job["status"], file["status"]) == ("failed", "failed"), job
        assert file["error"].startswith(NO_ROOM_REASONS), file["error"]
    # Only the variations recorded stay on disk (and the thumbnail).
    # (Each name: the file's id, the variation, the claim it was made under.)
    on_disk = sorted(path.name for path in (volume / "jobs" / job_id).glob("*_var*"))
    made = [re.fullmatch(rf"{file['id']}_var(\d+)_[0-9a-f]+\.mp4", name) for name in on_disk]
    assert all(made), on_disk
    assert sorted(int(match[1]) for match in made if match) == sorted(
        out["variationIndex"] for out in file["outputs"]
    )
    assert job_ids_on_disk(config) == {job_id}
    # A failed file keeps its source, for a retry once there is room; a finished one not.
    assert (volume / "uploads" / job_id).exists() == (file["status"] == "failed")
    assert set(health) == {200}, health
    assert set(actors.values()) == UP, actors
    report(
        capsys, "encode", variations=variations, stored=stored, job=job["status"],
        reason=(file["error"] or "")[:40], free_bytes=free, health_answers=sum(health.values()),
        restarts=restarts(actors),
    )  # fmt: skip


# --- the database fills -----------------------------------------------------------------

# In the janitor's case, passes this often, and this many of them are waited for.
JANITOR_INTERVAL_S = 0.2
JANITOR_PASSES = 5
# Actions that need a job which has ended with results on disk.
NEED_OLDER_RESULTS = ("upload-beside-older-results", "delete")


@pytest.mark.parametrize(
    "action",
    [
        "login",
        "upload",
        "upload-beside-older-results",
        "cancel",
        "delete",
        "janitor-pass",
    ],
)
async def test_writes_that_find_the_database_full_answer_without_500_and_the_service_stays_up(
    start_service: StartService,
    volume: Path,
    clips: Any,
    wall_clock: WallClock,
    capsys: pytest.CaptureFixture[str],
    action: str,
) -> None:
    changes = {"janitor_interval_s": JANITOR_INTERVAL_S} if action == "janitor-pass" else {}
    async with serving(start_service, volume, 8 * MIB, **changes) as (service, http):
        completed = None
        if action in NEED_OLDER_RESULTS:
            created = await upload(http, [clips.mp4], variations="2")
            completed = created.json()["jobId"]
            job = await wait_for_job(http, completed, finished, timeout_s=TIMEOUT_S)
            assert job["status"] == "completed", job
        # A job still queued behind a busy processor, for a second: put in the store,
        # where the upload route puts it, without ringing the processor's bell.
        queued = await make_unfinished_job(
            service.state.db, service.state.paths, now=wall_clock(), ttl_s=1.0
        )
        # Filled to the last byte: only the unused tails of the files' last pages stay
        # free, less than one page of the database's log, so every write finds it full.
        filler = await trio.to_thread.run_sync(
            lambda: fill_volume(volume / "filler", leave_bytes=0)
        )
        with trio.fail_after(TIMEOUT_S):
            try:
                if action == "login":
                    answer = await http.post("/api/auth", json={"password": TEST_PASSWORD})
                elif action.startswith("upload"):
                    answer = await upload(http, [clips.mp4], variations="1")
                elif action == "cancel":
                    answer = await http.post(f"/api/jobs/{queued}/cancel")
                elif action == "delete":
                    answer = await http.delete(f"/api/jobs/{completed}")
                else:  # the queued job's time runs out: the janitor's next pass fails it
                    wall_clock.advance(2.0)
                    await trio.sleep(JANITOR_PASSES * JANITOR_INTERVAL_S)
                    answer = await http.get(f"/api/jobs/{queued}")
            except httpx.TransportError as err:
                report(capsys, f"full database: {action}", answer=f"none ({err})")
                raise
            actors = await actor_health(http)
            report(
                capsys, f"full database: {action}", answer=answer.status_code,
                filler_bytes=filler, free_bytes=free_bytes(volume),
                restarts=restarts(actors),
            )  # fmt: skip
            assert_answered_without_500(answer)
            assert set(actors.values()) == UP, actors
            listing = await http.get("/api/jobs")
            assert listing.status_code == 200, listing.text


# --- room comes back --------------------------------------------------------------------


async def test_after_deleting_jobs_and_the_filler_a_new_upload_completes_every_variation(
    start_service: StartService,
    volume: Path,
    config: Config,
    clips: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with serving(start_service, volume, 8 * MIB) as (_, http):
        older = []
        for _ in range(2):
            created = await upload(http, [clips.mp4], variations="3")
            assert created.status_code == 202, created.text
            older.append(created.json()["jobId"])
        with trio.fail_after(TIMEOUT_S):
            for job_id in older:
                job = await wait_for_job(http, job_id, finished, timeout_s=TIMEOUT_S)
                assert job["status"] == "completed", job
        filler = volume / "filler"
        await trio.to_thread.run_sync(lambda: fill_volume(filler, leave_bytes=0))
        # The service sees the volume full, and reads go on.
        health = await http.get("/api/health")
        assert health.status_code == 200, health.text
        assert health.json()["storage"]["volumeFreeBytes"] == 0, health.text
        assert (await http.get("/api/jobs")).status_code == 200

        # Room comes back: the filler goes, then the older jobs, over HTTP.
        await trio.to_thread.run_sync(filler.unlink)
        free_before_deletes = free_bytes(volume)
        for job_id in older:
            deleted = await http.delete(f"/api/jobs/{job_id}")
            assert deleted.json() == {"jobId": job_id, "deleted": True}
        assert (await http.get("/api/jobs")).json() == []
        assert job_ids_on_disk(config) == set()
        # Their variations went (the store's log grows by a few pages meanwhile).
        freed = free_bytes(volume) - free_before_deletes
        assert freed > 0, freed

        variations = 5
        created = await upload(http, [clips.long], variations=str(variations))
        assert created.status_code == 202, created.text
        job_id = created.json()["jobId"]
        job = await wait_for_job(http, job_id, finished, timeout_s=TIMEOUT_S)
        actors = await actor_health(http)
        free = free_bytes(volume)
    assert job["status"] == "completed", job
    [file] = job["files"]
    assert [out["variationIndex"] for out in file["outputs"]] == list(range(1, variations + 1))
    assert set(actors.values()) == UP, actors
    report(
        capsys, "room back", deleted=len(older), freed_bytes=freed,
        new_job=f"{job['status']} {len(file['outputs'])}/{variations}", free_bytes=free,
        restarts=restarts(actors),
    )  # fmt: skip
