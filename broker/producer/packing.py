"""How many of a sweep's jobs share one Celery message, when nobody said.

Celery costs a worker about a millisecond per message, whatever the job does,
so a sweep of millisecond jobs sent one per message spends most of its time
there. Packing jobs into one message removes that cost, but the jobs of one
message run one after another in one worker thread: a sweep of minute-long
jobs packed fifty to a message would keep one thread busy and the rest idle.
The rule below takes both into account without being told anything:

- a message carries at most ``MESSAGE_SECONDS`` of work by the service's
  typical run time (the median of its most recently completed runs), and never
  more than ``MOST`` jobs;
- and never more than a ``SPREAD``-th of what remains of the sweep, so that its
  messages shrink towards its end, down to one job each (guided
  self-scheduling): the workers run out of work together, to within about a
  job, whatever a job takes. A sweep whose jobs take longer than their
  service's history says is balanced all the same.

A service with no completed run yet is taken to have short jobs; the second
bound is what keeps a long first sweep spread over its workers: evenly, by
simulation, over up to ``SPREAD`` worker threads (beyond, until the service
has a history, the last messages can leave some threads idle).

A service may fix the number instead (``Service.jobs_per_message``), and so
may a caller (``submit_many(jobs_per_message=...)``): 1 sends each job on its own.
"""

from __future__ import annotations

import math
import statistics
import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker.models import lifecycle
from broker.storage.tables import JobRow

#: At most this many jobs in one message chosen by the rule (a fixed number may say more).
MOST = 50
#: At most this much of the service's typical work in one message, in seconds.
MESSAGE_SECONDS = 0.05
#: A message never carries more than this fraction's inverse of the sweep's remaining jobs.
SPREAD = 32
#: Completed runs whose median is the service's typical run time.
RECENT_RUNS = 25

_COMPLETED = lifecycle.Status.COMPLETED.value


def typical(session: Session, service_id: uuid.UUID) -> float | None:
    """The median run time of the service's latest completed jobs; None if it has none.

    The latest by submission, through the index on (service, status,
    submitted): a few rows read, however many jobs the service has had.
    """
    rows = session.execute(
        sa.select(JobRow.date_started, JobRow.date_finished)
        .where(JobRow.service_id == service_id, JobRow.status == _COMPLETED)
        .order_by(JobRow.date_submitted.desc())
        .limit(RECENT_RUNS)
    ).all()
    runs = [
        max(0.0, (finished - started).total_seconds())
        for started, finished in rows
        if started is not None and finished is not None
    ]
    return statistics.median(runs) if runs else None


def choose(session: Session, service_id: uuid.UUID, count: int) -> list[int]:
    """The sizes of the messages of a sweep of ``count`` jobs of the service."""
    # A sweep this short goes one job per message whatever its jobs take: no need to ask.
    return sizes(count, typical(session, service_id) if count > SPREAD else None)


def sizes(count: int, typical_seconds: float | None) -> list[int]:
    """The sizes of the consecutive messages ``count`` jobs go in, by the rule above."""
    most = MOST
    if typical_seconds is not None and typical_seconds > 0:
        most = max(1, min(MOST, math.floor(MESSAGE_SECONDS / typical_seconds)))
    found: list[int] = []
    remaining = count
    while remaining > 0:
        size = min(most, math.ceil(remaining / SPREAD))
        found.append(size)
        remaining -= size
    return found


def per_job(per_message: int | Sequence[int], count: int) -> list[int]:
    """Each job's ``per_message``, in order: a fixed size, or the size of its message."""
    if isinstance(per_message, int):
        return [per_message] * count
    found = [size for size in per_message for _ in range(size)]
    if len(found) != count:
        raise ValueError(f"message sizes add up to {len(found)} jobs, not {count}")
    return found
