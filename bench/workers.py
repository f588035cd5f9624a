"""Workers benchmark: variations per minute with two workers against one, a core each.

    python -m bench.workers [--seconds 10] [--variations 20] [--rounds 3] [--size 640x360]

Starts PostgreSQL (`tests.support.postgres`, Debian's package), one web process (`serve
--role web`) and worker processes (`worker`), all sharing one PostgreSQL database and one
data directory (local files: the bytes stay on this machine's disk; no bucket), with
`FFMPEG_THREADS=1` and the production claim time to live (30 s). Each worker is pinned to
a core of its own as soon as it runs, before any job is queued: every one of its threads
(`os.sched_setaffinity`), so its FFmpegs and its measuring threads, which inherit the
affinity, stay on that core. The web process and PostgreSQL are not pinned; nothing else
loads the web process but one poll of the job's state every 100 ms.

The job: two source files, the same natural footage (`tests.support.footage`, with
sound) at `--size` under two names, `--variations` variations of each at `subtle`. Claims
are per source file, so two workers take one file each. A warm-up job (one variation
per file, one worker) comes first, untimed; then for `--rounds` rounds, the job with
worker 1 alone (core 0), then worker 2 is started beside it (core 1), given the warm-up
job (its first job, untimed: a fresh worker's first file takes ~0.3 s longer), then the
same job with both, and stopped again. Each is timed from the upload's answer to the job
seen completed. Reports the median variations per minute of two workers against one's
(target: >= 1.8x) and, without targets, how busy the workers kept their cores (worker plus
FFmpeg CPU seconds over wall seconds), and the CPU the web process and PostgreSQL, and
the rest of the machine (this benchmark's client, anything else running), took while
two workers ran: on a 2-core machine all of it comes out of the workers' cores, so a
busy machine shows here first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from bench.service import CLOCK_TICKS, children
from bench.verdict import Row, at_least, table
from refresher.media.ffmpeg import find_ffmpeg
from tests.support import postgres
from tests.support.cluster import Cluster, running_cluster
from tests.support.footage import make_footage
from tests.support.process import ServiceProcess, logged_in, stop_process

POLL_S = 0.1
JOB_TIMEOUT_S = 900.0
# The production default (the test cluster's 3 s renews claims ten times as often).
CLAIM_TTL_S = "30"


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process, of its children it has reaped, and of every live
    descendant (so a worker's FFmpegs, or PostgreSQL's backends, count whether they have
    ended or not); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        kids = children(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    own = sum(int(value) for value in fields[11:15]) / CLOCK_TICKS
    return own + sum(tree_cpu_seconds(kid) for kid in kids)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every core, neither idle nor waiting
    for I/O) since it started."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLOCK_TICKS


def pin(pid: int, core: int, *, attempts: int = 5) -> None:
    """Pin every thread of `pid` to `core` (threads and processes it starts later inherit
    it), again while a thread started meanwhile reads back unpinned; fail if one still
    does after `attempts` passes."""
    for _ in range(attempts):
        unpinned = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                if os.sched_getaffinity(int(task.name)) != {core}:
                    os.sched_setaffinity(int(task.name), {core})
                    unpinned.append(task.name)
        if not unpinned:
            return
    raise RuntimeError(f"threads {unpinned} of process {pid} would not stay on core {core}")


def postmaster_pid(server: postgres.PostgresServer) -> int:
    """The PID of PostgreSQL's main process (its data folder's `postmaster.pid`)."""
    return int((server.root / "data" / "postmaster.pid").read_text().split()[0])


@dataclass
class Timed:
    """Timed runs of the job with one number of workers."""

    workers: int
    variations: int
    wall_s: list[float] = field(default_factory=list)
    worker_cpu_s: list[float] = field(default_factory=list)
    # The web process's and PostgreSQL's; the rest of the machine's (this benchmark's
    # client, anything else running) meanwhile.
    service_cpu_s: list[float] = field(default_factory=list)
    rest_cpu_s: list[float] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return [self.variations / wall * 60 for wall in self.wall_s]

    @property
    def per_minute(self) -> float:
        return statistics.median(self.rates)

    @property
    def busy(self) -> float:
        """The share of their cores the workers kept busy, over every run."""
        return sum(self.worker_cpu_s) / (self.workers * sum(self.wall_s))

    @property
    def service_cores(self) -> float:
        """Cores' worth of CPU the web process and PostgreSQL used meanwhile."""
        return sum(self.service_cpu_s) / sum(self.wall_s)

    @property
    def rest_cores(self) -> float:
        """Cores' worth of CPU the rest of the machine used meanwhile."""
        return sum(self.rest_cpu_s) / sum(self.wall_s)


async def run_job(
    http: httpx.AsyncClient, sources: list[Path], variations: int
) -> tuple[float, str]:
    """Upload the sources for `variations` each at `subtle`; return the seconds from the
    upload's answer to the job seen completed, and the job's id."""
    files = [("videos", (path.name, path.read_bytes(), "video/mp4")) for path in sources]
    data = {"variations": str(variations), "strength": "subtle"}
    answer = await http.post("/api/jobs", data=data, files=files)
    if answer.status_code not in (201, 202):
        raise RuntimeError(f"the upload was refused: {answer.status_code} {answer.text}")
    started = time.monotonic()
    job_id = str(answer.json()["jobId"])
    with trio.fail_after(JOB_TIMEOUT_S):
        while True:
            job = (await http.get(f"/api/jobs/{job_id}")).json()
            if job["status"] not in ("queued", "processing"):
                break
            await trio.sleep(POLL_S)
    took = time.monotonic() - started
    made = job["completedVariations"]
    if job["status"] != "completed" or made != variations * len(sources):
        raise RuntimeError(f"job {job_id} ended {job['status']} with {made} variations: {job}")
    return took, job_id


async def timed_job(
    cluster: Cluster,
    http: httpx.AsyncClient,
    sources: list[Path],
    variations: int,
    others: list[int],
    into: Timed,
) -> None:
    """Run the job once with the cluster's live workers; add its figures to `into`."""
    workers = [w.process.pid for w in cluster.workers if w.process.returncode is None]
    assert len(workers) == into.workers, workers
    machine = machine_busy_seconds()
    before = [tree_cpu_seconds(pid) for pid in workers + others]
    took, _ = await run_job(http, sources, variations)
    after = [tree_cpu_seconds(pid) for pid in workers + others]
    machine = machine_busy_seconds() - machine
    spent = [end - start for start, end in zip(before, after, strict=True)]
    worker_s, service_s = sum(spent[: len(workers)]), sum(spent[len(workers) :])
    into.wall_s.append(took)
    into.worker_cpu_s.append(worker_s)
    into.service_cpu_s.append(service_s)
    into.rest_cpu_s.append(max(0.0, machine - worker_s - service_s))
    print(
        f"    {into.workers} worker(s): {took:.1f} s, {into.rates[-1]:.1f} variations/min; "
        f"CPU s: workers {worker_s:.1f}, web + PostgreSQL {service_s:.1f}, "
        f"the rest {into.rest_cpu_s[-1]:.1f}",
        flush=True,
    )


async def start_pinned_worker(cluster: Cluster, core: int) -> ServiceProcess:
    """A worker started and pinned to `core` before it is given anything to do."""
    worker = await cluster.start_worker()
    pin(worker.process.pid, core)
    return worker


async def run(
    work: Path, server: postgres.PostgresServer, sources: list[Path], variations: int, rounds: int
) -> tuple[Timed, Timed]:
    url = postgres.fresh_database(server)
    data_dir = work / "data"
    one, two = Timed(1, variations * len(sources)), Timed(2, variations * len(sources))
    async with running_cluster(
        data_dir, url, webs=1, workers=0, FFMPEG_THREADS="1", CLAIM_TTL_S=CLAIM_TTL_S
    ) as cluster:
        await start_pinned_worker(cluster, 0)
        others = [cluster.webs[0].process.pid, postmaster_pid(server)]
        async with logged_in(cluster.webs[0]) as http:
            print("  warm-up: one variation of each, one worker ...", flush=True)
            await run_job(http, sources, 1)
            for round_number in range(1, rounds + 1):
                print(f"  round {round_number}/{rounds}", flush=True)
                await timed_job(cluster, http, sources, variations, others, one)
                second = await start_pinned_worker(cluster, 1)
                # The new worker's first job (its first FFmpeg, its first measures) untimed.
                await run_job(http, sources, 1)
                await timed_job(cluster, http, sources, variations, others, two)
                await stop_process(second)
    postgres.drop_database(server, url)
    return one, two


def measure(
    seconds: float = 10.0, variations: int = 20, rounds: int = 3, size: str = "640x360"
) -> list[Row]:
    if len(os.sched_getaffinity(0)) < 2:
        raise RuntimeError("the workers benchmark needs two cores")
    width, height = (int(side) for side in size.split("x"))
    ffmpeg = find_ffmpeg(None)
    # PostgreSQL's own user must reach its folder: outside a folder only root may enter.
    pg_root = Path(tempfile.mkdtemp(prefix="bench-workers-pg-"))
    try:
        with tempfile.TemporaryDirectory(prefix="bench-workers-") as scratch:
            work = Path(scratch)
            print(
                f"workers: {seconds:g} s {size} footage, two files x {variations} "
                "variations (subtle) ...",
                flush=True,
            )
            footage = make_footage(
                ffmpeg, work / "footage.mp4", width=width, height=height, seconds=seconds
            )
            sources = [work / "first.mp4", work / "second.mp4"]
            for source in sources:
                shutil.copyfile(footage, source)
            with postgres.running_server(pg_root) as server:
                one, two = trio.run(run, work, server, sources, variations, rounds)
    finally:
        shutil.rmtree(pg_root, ignore_errors=True)
    job = f"2x{variations} at {size}"
    return [
        Row(
            f"variations per minute, 2 workers x 1 core, {job}",
            "variations/min",
            two.per_minute,
            one.per_minute,
            at_least(1.8, on="ratio"),
            note=f"median of {rounds} rounds; baseline: 1 worker on 1 core, same job",
        ),
        Row("worker cores kept busy, 1 worker", "%", 100 * one.busy),
        Row("worker cores kept busy, 2 workers", "%", 100 * two.busy),
        Row("web + PostgreSQL CPU during the job, 2 workers", "cores", two.service_cores),
        Row("rest of the machine's CPU during the job, 2 workers", "cores", two.rest_cores),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--variations", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", default="640x360")
    options = parser.parse_args(argv)
    rows = measure(options.seconds, options.variations, options.rounds, options.size)
    print("\n".join(table(rows)))
    return 1 if any(row.passed is False for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
