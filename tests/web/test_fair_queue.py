"""A fair queue: jobs take turns batch by batch, so a small job submitted behind a big one
starts within a batch and finishes first, and the big one still makes every variation
(the same ones) once it has its turns again."""

from __future__ import annotations

import httpx
import pytest
import trio

from refresher.jobs import estimates, records
from tests.support.clips import Clips
from tests.support.http import TEST_PASSWORD, StartService, finished, upload, wait_for_job
from tests.support.jobs import NOW, queue_files_job
from wiring.service import RunningService

# A 320x240 clip is encoded 5 variations at a time: 15 make three batches.
BIG_VARIATIONS = 15


@pytest.mark.both_stores
async def test_a_small_job_behind_a_big_one_finishes_first_and_the_big_one_completes(
    service: RunningService, authed: httpx.AsyncClient, clips: Clips
) -> None:
    with trio.fail_after(120):
        big = (await upload(authed, [clips.mp4], variations=str(BIG_VARIATIONS))).json()["jobId"]
        await wait_for_job(authed, big, lambda d: d["status"] == "processing")
        small = (await upload(authed, [clips.mov], variations="1")).json()["jobId"]
        small_done = await wait_for_job(authed, small, finished)
        big_then = await authed.get(f"/api/jobs/{big}")
        big_done = await wait_for_job(authed, big, finished)
    assert small_done["status"] == "completed"
    assert big_then.json()["status"] == "processing"  # the small one finished first
    # The small job had its turn after at most one more of the big one's batches.
    made_meanwhile = sum(file["completedVariations"] for file in big_then.json()["files"])
    assert made_meanwhile <= 2 * 5, made_meanwhile
    assert big_done["status"] == "completed"
    job = await service.state.db.read(lambda conn: records.require_job(conn, big))
    assert sorted(output.variation_index for output in job.outputs) == list(
        range(1, BIG_VARIATIONS + 1)
    )


async def test_queued_jobs_carry_their_place_and_times_from_measured_speed(
    service: RunningService, authed: httpx.AsyncClient, clips: Clips
) -> None:
    """The API shows each job's place and times (their arithmetic is
    `tests/refresher/jobs/test_estimates.py`'s)."""
    state = service.state
    # Queued straight in the store, the processor not told (it may still find the first
    # in its look at start: then that one runs and the second is next).
    first = await queue_files_job(state.db, state.paths, [clips.mp4], 10)
    second = await queue_files_job(state.db, state.paths, [clips.mp4], 2, now=NOW + 1)
    before = (await authed.get(f"/api/jobs/{second}")).json()
    assert before["estimatedStartS"] is None  # no speed measured yet
    await state.db.write(lambda conn: estimates.record_speed(conn, 3.0))
    listed = {job["id"]: job for job in (await authed.get("/api/jobs")).json()}
    ahead = 1 if listed[first]["status"] == "queued" else 0
    assert listed[second]["queuePosition"] == 1 + ahead
    assert listed[first]["queuePosition"] == (1 if ahead else None)
    # At least one turn of 5 variations at 3 s before the second starts.
    assert listed[second]["estimatedStartS"] >= 15
    assert listed[second]["estimatedDoneS"] >= listed[second]["estimatedStartS"]
    detail = (await authed.get(f"/api/jobs/{second}")).json()
    assert detail["queuePosition"] == listed[second]["queuePosition"]


async def test_in_fifo_order_the_small_job_waits_for_the_whole_big_one(
    start_service: StartService, clips: Clips
) -> None:
    """`QUEUE_ORDER=fifo`, the baseline the fairness benchmark measures against."""
    service = await start_service(queue_order="fifo")
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        login = await http.post("/api/auth", json={"password": TEST_PASSWORD})
        http.headers["Authorization"] = f"Bearer {login.json()['token']}"
        with trio.fail_after(120):
            big = (await upload(http, [clips.mp4], variations=str(BIG_VARIATIONS))).json()
            await wait_for_job(http, big["jobId"], lambda d: d["status"] == "processing")
            small = (await upload(http, [clips.mov], variations="1")).json()
            await wait_for_job(http, small["jobId"], finished)
            big_then = (await http.get(f"/api/jobs/{big['jobId']}")).json()
    assert big_then["status"] == "completed"
