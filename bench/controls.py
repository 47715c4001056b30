"""The service controls, measured: how far a priority jumps, and ``max_running`` under load.

``priority``: a service with one worker (one thread) is busy with ``low_jobs``
queued jobs of priority 1, each taking a few milliseconds; then one job of
priority 9 is submitted. The figure is how many low-priority jobs started after
that submit and before the urgent job did (the handlers' own ledger of starts,
in Redis). The rule says at most the one low job the worker had already taken
when the urgent one arrived.

``exclusive``: a service with ``max_running=1`` served by three worker
processes of two threads each runs ``jobs`` jobs; the figure is the largest
number of its jobs inside their handler at once, counted atomically in Redis by
the handlers (the rule: 1), and the same read from SQL's ``date_started`` /
``date_finished`` record, whose clock translation differs by a millisecond or
so between mirror batches (so it may show 2 where runs a millisecond apart
were recorded by different batches).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from bench.jobs import INSTRUMENT_ACTIVE, INSTRUMENT_MOST, INSTRUMENT_STARTED
from bench.ours import OurStack
from bench.payload import EXCLUSIVE_SERVICE, INSTRUMENT_SCHEMA, INSTRUMENT_SERVICE, RESULTS_SCHEMA
from broker.storage.tables import JobRow, open_session

#: Seconds a low-priority job runs: long enough that the submit of the urgent
#: one (a few ms) overlaps at most one start.
LOW_SECONDS = 0.01
#: Seconds each job of the exclusive service runs.
EXCLUSIVE_SECONDS = 0.005
URGENT = 1_000_000_000  # the urgent job's index in the ledger


@dataclass(frozen=True)
class Jump:
    #: Low-priority jobs that started after the urgent job was submitted, before it did.
    overtaken_by: int
    #: Of the low ones, how many had started when the urgent one was submitted.
    started_before: int
    #: Seconds from the urgent job's submit to its start.
    wait_seconds: float


@dataclass(frozen=True)
class Exclusive:
    most_at_once: int
    most_at_once_in_sql: int
    completed: int
    seconds: float


def _service(ours: OurStack, name: str, **options: object) -> uuid.UUID:
    service_id = ours.producer.ensure_service(
        name, "benchmark instrument", INSTRUMENT_SCHEMA, RESULTS_SCHEMA, timeout=60, **options
    )
    ours.service_ids[name] = service_id  # so that ``purge`` empties its queue too
    return service_id


def _reset_ledger(ours: OurStack) -> None:
    ours.redis.delete(INSTRUMENT_STARTED, INSTRUMENT_ACTIVE, INSTRUMENT_MOST)


def priority_jump(ours: OurStack, low_jobs: int) -> Jump:
    _service(ours, INSTRUMENT_SERVICE)
    ours.purge()
    _reset_ledger(ours)
    ours.start_workers(1, "threads", 1)
    try:
        points = [{"index": index, "seconds": LOW_SECONDS} for index in range(low_jobs)]
        ours.producer.submit_many(INSTRUMENT_SERVICE, points, priority=1)
        deadline = time.monotonic() + 60
        while ours.redis.llen(INSTRUMENT_STARTED) < 3:  # the worker is busy with them
            if time.monotonic() > deadline:
                raise TimeoutError("the low-priority jobs did not start")
            time.sleep(0.005)
        before = int(ours.redis.llen(INSTRUMENT_STARTED))
        submitted = time.monotonic()
        urgent = ours.producer.submit(
            INSTRUMENT_SERVICE, {"index": URGENT, "seconds": 0}, priority=9
        )
        while True:
            starts = [int(value) for value in ours.redis.lrange(INSTRUMENT_STARTED, 0, -1)]
            if URGENT in starts:
                waited = time.monotonic() - submitted
                break
            if time.monotonic() > submitted + 60:
                raise TimeoutError(f"the urgent job {urgent} did not start")
            time.sleep(0.002)
        return Jump(starts.index(URGENT) - before, before, waited)
    finally:
        ours.stop_workers()
        ours.purge()


def exclusive(ours: OurStack, jobs: int) -> Exclusive:
    service_id = _service(ours, EXCLUSIVE_SERVICE, max_running=1)
    ours.producer.set_max_running(EXCLUSIVE_SERVICE, 1)  # an existing service keeps its options
    ours.purge()
    _reset_ledger(ours)
    if ours.mirror is None:
        ours.start_mirror()
    ours.start_workers(3, "threads", 2)
    try:
        started = time.perf_counter()
        points = [{"index": index, "seconds": EXCLUSIVE_SECONDS} for index in range(jobs)]
        job_ids = ours.producer.submit_many(EXCLUSIVE_SERVICE, points)
        outcomes = ours.producer.outcomes(job_ids, timeout=max(120.0, jobs * 0.2))
        seconds = time.perf_counter() - started
        completed = sum(outcome.status == "COMPLETED" for outcome in outcomes)
        return Exclusive(
            int(ours.redis.get(INSTRUMENT_MOST) or 0),
            _most_at_once_in_sql(ours, service_id),
            completed,
            seconds,
        )
    finally:
        ours.stop_workers()
        ours.purge()


def _most_at_once_in_sql(ours: OurStack, service_id: uuid.UUID) -> int:
    with open_session(ours.settings.database_url) as session:
        runs = session.execute(
            sa.select(JobRow.date_started, JobRow.date_finished).where(
                JobRow.service_id == service_id, JobRow.date_finished.is_not(None)
            )
        ).all()
    return most_at_once([(start, end) for start, end in runs])


def most_at_once(runs: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one moment; one that ends as another starts does not overlap."""
    events = sorted([(end, -1) for _, end in runs] + [(start, 1) for start, _ in runs])
    most = current = 0
    for _when, change in events:
        current += change
        most = max(most, current)
    return most
