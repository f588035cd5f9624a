"""Metrics an operator scrapes: after a real job, parsed by the client library's own parser."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from refresher import logs
from refresher.config import Config
from tests.support.clock import wait_for
from tests.support.http import StartService, upload, wait_for_job


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_a_job_shows_in_the_metrics(
    start_service: StartService, config: Config, clips: Any
) -> None:
    service = await start_service(metrics_port=0)
    assert service.metrics_url is not None
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        before = samples((await http.get(service.metrics_url)).text)
        login = await http.post("/api/auth", json={"password": config.auth_password})
        http.headers["Authorization"] = f"Bearer {login.json()['token']}"
        response = await upload(http, [clips.mp4], variations="2")
        assert response.status_code == 202
        job_id = response.json()["jobId"]
        detail = await wait_for_job(http, job_id, lambda d: d["status"] == "completed")
        archive = await http.get(detail["downloadUrl"])
        assert archive.status_code == 200
        # Not on the public port.
        assert (await http.get("/metrics")).status_code == 404

        async def scraped_with_the_job() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            found = samples((await http.get(service.metrics_url)).text)
            # The gauges are read every few seconds: wait for the finished job.
            return found if found.get(("refresher_stored_bytes", ()), 0) > 0 else {}

        with trio.fail_after(10):
            after = await wait_for(scraped_with_the_job, polls=50, step_s=0.2)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("refresher_jobs_finished_total", status="completed") == 1
    assert grew("refresher_variations_encoded_total") == 2
    assert grew("refresher_encode_seconds_count") == 2
    assert grew("refresher_uploaded_bytes_total") == clips.mp4.stat().st_size
    assert grew("refresher_downloads_total", outcome="started") == 1
    assert grew("refresher_downloads_total", outcome="completed") == 1
    assert grew("refresher_downloaded_bytes_total") == len(archive.content)
    route = "/api/jobs/<job_id>"
    assert grew("refresher_http_requests_total", route=route, method="GET", status="200") >= 1
    assert grew("refresher_http_request_seconds_count", route=route) >= 1
    assert (
        grew("refresher_http_requests_total", route="/api/jobs", method="POST", status="202") == 1
    )
    assert after[("refresher_quota_bytes", ())] == config.storage_quota_bytes
    assert after[("refresher_stored_bytes", ())] > 0
    assert after[("refresher_volume_free_bytes", ())] > 0
    assert after[("refresher_active_leases", ())] == 0


async def test_every_labelled_series_is_there_from_the_start(start_service: StartService) -> None:
    """Before anything happens, a dashboard finds each series (at 0 in a fresh process),
    not "no data": jobs by final status, download outcomes, removals by reason, restarts
    of each actor this process runs."""
    service = await start_service(metrics_port=0)
    assert service.metrics_url is not None
    async with httpx.AsyncClient(timeout=30) as http:
        found = samples((await http.get(service.metrics_url)).text)
    statuses = ("completed", "failed", "cancelled")
    reasons = ("expired", "lost", "evicted", "deleted")
    wanted = [
        *(("refresher_jobs_finished_total", "status", status) for status in statuses),
        *(("refresher_downloads_total", "outcome", o) for o in ("started", "completed", "cut")),
        *(("refresher_removals_total", "reason", reason) for reason in reasons),
        *(("refresher_actor_restarts_total", "actor", actor)
          for actor in service.state.supervisor.status()),
    ]  # fmt: skip
    assert len(service.state.supervisor.status()) == 5  # the processor and four beside it
    missing = [key for key in wanted if (key[0], ((key[1], key[2]),)) not in found]
    assert missing == []


async def test_no_metrics_port_unless_asked(service: Any) -> None:
    assert service.metrics_url is None


def test_json_logs_are_one_object_a_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("refresher.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("job=%s failed: %s", "0b1c-42", "a “quoted” reason")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("crashed")
    finally:
        logger.removeHandler(handler)
    first, second = (
        json.loads(line)
        for line in [*stream.getvalue().splitlines()[:1], stream.getvalue().split("\n", 1)[1]]
    )
    assert first["level"] == "WARNING"
    assert first["logger"] == "refresher.test_logs"
    assert first["message"] == "job=0b1c-42 failed: a “quoted” reason"
    assert first["jobId"] == "0b1c-42"
    assert first["time"].endswith("Z")
    assert "jobId" not in second
    assert "ValueError: boom" in second["error"]
