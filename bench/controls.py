"""The service controls, measured: how far a priority jumps, and ``max_running`` under load.

``priority``: a service with one worker (one thread) is busy with ``low_jobs``
queued jobs of priority 1, each taking a few milliseconds; then one job of
priority 9 is submitted. The figure is how many low-priority jobs started after
that submit and before the urgent job did (the handlers' own ledger of starts,
in Redis). The rule says at most the one low job the worker had already taken
when the urgent one arrived.

``priority_after_resume``: the same service, held, gets ``low_jobs`` jobs of
priority 1 and then one of priority 9, all parked by one worker of the pool
measured; then it is resumed. The figure is how many low-priority jobs started
before the urgent one: the rule says none, on every pool, since a held
service's jobs wait parked and none in a worker.

``exclusive``: a service with ``max_running=1`` served by three worker
processes of two threads each runs ``jobs`` jobs; the figure is the largest
number of its jobs WORKING at once, from the claims' own reports (each
WORKING and each end on the state stream, ordered by entry id; the rule: 1),
from the handlers' count of runs inside them (atomic, in Redis), and from SQL's
``date_started`` / ``date_finished``, where each mirror batch translates
Redis's clock to the database's with an offset measured to within a round
trip: a run that started a millisecond after another ended can appear there
to overlap it, by as much as that error (shown as the longest overlap).
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from bench.jobs import INSTRUMENT_ACTIVE, INSTRUMENT_MOST, INSTRUMENT_STARTED
from bench.ours import OurStack
from bench.payload import EXCLUSIVE_SERVICE, INSTRUMENT_SCHEMA, INSTRUMENT_SERVICE, RESULTS_SCHEMA
from broker.messaging import keys
from broker.messaging.claims import Claims
from broker.messaging.messages import StateMessage
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
    #: From the state stream: every WORKING and final report, in entry-id order.
    most_at_once: int
    #: From the handlers' own count, atomically in Redis.
    most_in_handlers: int
    most_at_once_in_sql: int
    #: The longest time two runs overlap in SQL's record (clock translation: ~1 ms).
    overlap_in_sql_ms: float
    completed: int
    seconds: float


def instrument_service(ours: OurStack, name: str, **options: object) -> uuid.UUID:
    service_id = ours.producer.ensure_service(
        name, "benchmark instrument", INSTRUMENT_SCHEMA, RESULTS_SCHEMA, timeout=60, **options
    )
    ours.service_ids[name] = service_id  # so that ``purge`` empties its queue too
    return service_id


def _reset_ledger(ours: OurStack) -> None:
    ours.redis.delete(INSTRUMENT_STARTED, INSTRUMENT_ACTIVE, INSTRUMENT_MOST)


def priority_jump(ours: OurStack, low_jobs: int) -> Jump:
    instrument_service(ours, INSTRUMENT_SERVICE)
    ours.purge()
    _reset_ledger(ours)
    ours.start_workers(1, "threads", 1)
    try:
        points = [{"index": index, "seconds": LOW_SECONDS} for index in range(low_jobs)]
        # One job per message: the figure is how far a priority jumps past single jobs (a
        # sweep packed several to a message finishes the message in hand first).
        ours.producer.submit_many(INSTRUMENT_SERVICE, points, priority=1, jobs_per_message=1)
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


def priority_after_resume(ours: OurStack, low_jobs: int, pool: str) -> Jump:
    """Held; ``low_jobs`` of priority 1, then one of 9, all parked; resumed: who starts first."""
    service_id = instrument_service(ours, INSTRUMENT_SERVICE)
    ours.purge()
    _reset_ledger(ours)
    ours.producer.hold_service(INSTRUMENT_SERVICE, "benchmark: priority after a resume")
    ours.start_workers(1, pool, 1)
    try:
        points = [{"index": index, "seconds": LOW_SECONDS} for index in range(low_jobs)]
        ours.producer.submit_many(INSTRUMENT_SERVICE, points, priority=1, jobs_per_message=1)
        ours.producer.submit(INSTRUMENT_SERVICE, {"index": URGENT, "seconds": 0}, priority=9)
        claims = Claims(ours.redis)
        deadline = time.monotonic() + 120
        while claims.parked([service_id]) != [low_jobs + 1]:  # the worker parks each
            if time.monotonic() > deadline:
                raise TimeoutError("the held service's jobs were not all parked")
            time.sleep(0.01)
        resumed = time.monotonic()
        ours.producer.resume_service(INSTRUMENT_SERVICE)
        while URGENT not in (starts := _started(ours)):
            if time.monotonic() > resumed + 60:
                raise TimeoutError("the urgent job did not start after the resume")
            time.sleep(0.002)
        return Jump(starts.index(URGENT), 0, time.monotonic() - resumed)
    finally:
        ours.producer.resume_service(INSTRUMENT_SERVICE)
        ours.stop_workers()
        ours.purge()


def _started(ours: OurStack) -> list[int]:
    """The instrument's ledger: each run's index, in the order the runs started."""
    return [int(value) for value in ours.redis.lrange(INSTRUMENT_STARTED, 0, -1)]


def exclusive(ours: OurStack, jobs: int) -> Exclusive:
    """Run ``jobs`` jobs of the limited service; count how many ran at once, three ways.

    The mirror is stopped while they run, so every WORKING and final report is
    still on the state stream afterwards, in the exact order of its entry ids;
    then it records them in SQL.
    """
    service_id = instrument_service(ours, EXCLUSIVE_SERVICE, max_running=1)
    ours.producer.set_max_running(EXCLUSIVE_SERVICE, 1)  # an existing service keeps its options
    if ours.mirror is not None:
        ours.mirror.stop()
        ours.mirror = None
    ours.purge()
    ours.redis.delete(keys.STATE_STREAM)
    _reset_ledger(ours)
    ours.start_mirror()  # for the workers' start-up probe
    ours.start_workers(3, "threads", 2)
    ours.mirror.stop()
    ours.mirror = None
    try:
        started = time.perf_counter()
        points = [{"index": index, "seconds": EXCLUSIVE_SECONDS} for index in range(jobs)]
        job_ids = ours.producer.submit_many(EXCLUSIVE_SERVICE, points)
        wanted = {str(job_id) for job_id in job_ids}
        deadline = time.monotonic() + max(120.0, jobs * 0.2)
        while len(ended := _ended(ours, wanted)) < jobs:
            if time.monotonic() > deadline:
                raise TimeoutError(f"exclusive: {len(ended)} of {jobs} jobs ended")
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        on_stream = _most_at_once_on_the_stream(ours, wanted)
        ours.start_mirror()
        outcomes = ours.producer.outcomes(job_ids, timeout=120)
        completed = sum(outcome.status == "COMPLETED" for outcome in outcomes)
        runs = _runs_in_sql(ours, service_id)
        return Exclusive(
            on_stream,
            int(ours.redis.get(INSTRUMENT_MOST) or 0),
            most_at_once(runs),
            longest_overlap(runs) * 1000,
            completed,
            seconds,
        )
    finally:
        ours.stop_workers()
        ours.purge()


def _reports(ours: OurStack, wanted: set[str]) -> list[StateMessage]:
    reports = (
        StateMessage.from_fields(fields) for _id, fields in ours.redis.xrange(keys.STATE_STREAM)
    )
    return [r for r in reports if r.kind == "status" and str(r.job_id) in wanted]


def _ended(ours: OurStack, wanted: set[str]) -> list[StateMessage]:
    return [r for r in _reports(ours, wanted) if r.status in ("COMPLETED", "ERROR")]


def _most_at_once_on_the_stream(ours: OurStack, wanted: set[str]) -> int:
    most = running = 0
    for report in _reports(ours, wanted):
        running += 1 if report.status == "WORKING" else -1
        most = max(most, running)
    return most


def _runs_in_sql(ours: OurStack, service_id: uuid.UUID) -> list[tuple[datetime, datetime]]:
    with open_session(ours.settings.database_url) as session:
        runs = session.execute(
            sa.select(JobRow.date_started, JobRow.date_finished).where(
                JobRow.service_id == service_id, JobRow.date_finished.is_not(None)
            )
        ).all()
    return [(start, end) for start, end in runs]


def longest_overlap(runs: list[tuple[datetime, datetime]]) -> float:
    """Seconds of the longest overlap between a run and the one that started next."""
    ordered = sorted(runs)
    gaps = [(end - later).total_seconds() for (_, end), (later, _) in itertools.pairwise(ordered)]
    return max([0.0, *gaps])


def most_at_once(runs: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one moment; one that ends as another starts does not overlap."""
    events = sorted([(end, -1) for _, end in runs] + [(start, 1) for start, _ in runs])
    most = current = 0
    for _when, change in events:
        current += change
        most = max(most, current)
    return most
