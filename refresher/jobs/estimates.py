"""When a job should start and end: its place in the queue, from measured encode speed.

Workers record the wall seconds each variation took (`record_speed`, after every batch,
into a moving average every process shares). The queue takes turns batch by batch
(`refresher.jobs.claims`), so the jobs under way share the workers: a job with R
variations left ends once every job has made min(its own left, R) more, and a job never
served starts after the batch under way and one turn for each never-served job ahead of
it. Estimates are rough by nature (footage and strength change the speed); none is given
before a first batch was measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from refresher.jobs.status import JobStatus
from refresher.media.encoding import MAX_VARIATIONS_PER_ENCODE
from refresher.store.sql import dialect

SPEED_KEY = "seconds_per_variation"
# Weight of the newest batch in the moving average: recent footage counts most, one odd
# batch does not swing the estimate.
SMOOTHING = 0.3


@dataclass(frozen=True)
class Estimate:
    # 1 for the next job to start; None for a job under way.
    queue_position: int | None
    # Seconds from now, rounded; None until a batch was measured.
    start_s: float | None
    done_s: float | None


def record_speed(conn: Connection, seconds_per_variation: float) -> None:
    """Fold one batch's seconds per variation into the shared moving average."""
    old = read_speed(conn)
    new = (
        seconds_per_variation
        if old is None
        else (1 - SMOOTHING) * old + SMOOTHING * seconds_per_variation
    )
    conn.execute(
        text(
            """INSERT INTO settings (key, value) VALUES (:key, :value)
               ON CONFLICT (key) DO UPDATE SET value = excluded.value"""
        ),
        {"key": SPEED_KEY, "value": repr(new)},
    )


def read_speed(conn: Connection) -> float | None:
    raw = conn.execute(
        text("SELECT value FROM settings WHERE key = :key"), {"key": SPEED_KEY}
    ).scalar()
    return float(raw) if raw is not None else None


def estimates(conn: Connection) -> dict[str, Estimate]:
    """An estimate for every job queued or under way, by id."""
    rows = conn.execute(
        text(
            """SELECT j.id, j.served_at, j.total_variations,
                      (SELECT count(*) FROM output_files o WHERE o.job_id = j.id) AS made
               FROM jobs j
               WHERE j.status IN (:queued, :processing) AND j.cancelled_at IS NULL
               ORDER BY j.served_at IS NOT NULL, j.served_at, j.created_at, j.id"""
        ),
        {"queued": JobStatus.QUEUED, "processing": JobStatus.PROCESSING},
    ).fetchall()
    workers = conn.execute(
        text(
            f"""SELECT count(DISTINCT claimed_by) FROM job_files
                WHERE claim_token IS NOT NULL AND claimed_until >= {dialect(conn).now_s}"""
        )
    ).scalar_one()
    workers = max(1, int(workers))
    speed = read_speed(conn)
    left = {job_id: max(0, total - made) for job_id, _, total, made in rows}
    under_way = any(served is not None for _, served, _, _ in rows)
    found: dict[str, Estimate] = {}
    position = 0
    for job_id, served, _, _ in rows:
        queue_position = None
        if served is None:
            position += 1
            queue_position = position
        if speed is None:
            found[job_id] = Estimate(queue_position, None, None)
            continue
        mine = left[job_id]
        done = speed * sum(min(other, mine) for other in left.values()) / workers
        turns = 0 if queue_position is None else queue_position - 1 + int(under_way)
        start = speed * MAX_VARIATIONS_PER_ENCODE * turns / workers
        found[job_id] = Estimate(queue_position, round(start), round(max(done, start)))
    return found
