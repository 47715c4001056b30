"""What the database says about every service and its jobs, read in one place.

``topchef status`` and the Prometheus metrics show the same facts, so they take
the same queries: job counts by service and status (one grouped COUNT,
cheap at a million jobs thanks to ``ix_jobs_service_status_submitted``), then
the services, judged on the database's clock by ``has_timed_out``; then the
jobs waiting for a later time, from the partial index beat's due scan reads.

A service's *waiting* jobs are its REGISTERED rows: the jobs that will run when
a worker is free. Its Redis queue is no measure of that: it still holds the
messages of jobs cancelled since, or claimed over HTTP (whose workers never
read the queue), which workers discard when they come to them, and a batch's
jobs share one message. Each job of a batch is a row, so batches count their jobs.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker.models.lifecycle import Status, held_until_a_time
from broker.models.service import has_timed_out
from broker.storage.tables import JobRow, ServiceRow, database_now


@dataclass(frozen=True, slots=True)
class ServiceReading:
    """One service as the census saw it."""

    id: uuid.UUID
    name: str
    available: bool = False
    timed_out: bool = False
    seconds_since_check_in: float = 0.0
    #: Jobs that will run when a worker is free (REGISTERED, so neither claimed nor cancelled).
    waiting: int = 0
    #: Jobs a worker has claimed and not finished (WORKING).
    running: int = 0
    #: While the service is held: since when, by whom and why.
    held_at: datetime | None = None
    held_by: str | None = None
    held_reason: str | None = None
    #: At most this many of its jobs WORKING at once (None: no limit).
    max_running: int | None = None
    #: Of the waiting jobs, those held until a later time: a producer's
    #: ``not_before``, or the backoff before a retry's next attempt.
    scheduled: int = 0

    @property
    def labels(self) -> list[str]:
        return [self.name, str(self.id)]

    def unserved(self, workers: int) -> bool:
        """Whether jobs need a worker and none is live (``workers``: live workers now).

        Running jobs count too: with no live worker, a WORKING job's worker is
        gone, and the job either waits for beat to apply its service's
        worker-loss policy or, re-queued, waits for a worker like the rest.
        """
        return self.waiting + self.running > 0 and workers == 0


@dataclass(frozen=True, slots=True)
class Census:
    """Every service, and how many jobs each has in each status."""

    services: list[ServiceReading]
    jobs: dict[tuple[uuid.UUID, str], int]
    taken_at: datetime

    def totals(self) -> Counter[str]:
        """Jobs by status, over every service."""
        totals: Counter[str] = Counter()
        for (_service, status), count in self.jobs.items():
            totals[status] += count
        return totals


def take_census(session: Session) -> Census:
    """Read the census in ``session``; counts first, so every job counted has its service."""
    counts = session.execute(
        sa.select(JobRow.service_id, JobRow.status, sa.func.count()).group_by(
            JobRow.service_id, JobRow.status
        )
    ).all()
    rows = session.execute(
        sa.select(
            ServiceRow.id,
            ServiceRow.name,
            ServiceRow.is_service_available,
            ServiceRow.timeout,
            ServiceRow.last_checked_in,
            ServiceRow.held_at,
            ServiceRow.held_by,
            ServiceRow.held_reason,
            ServiceRow.max_running,
        ).order_by(ServiceRow.name)
    ).all()
    # After the services: no check-in read above can be later than now.
    now = database_now(session)
    jobs = {(service_id, status): int(count) for service_id, status, count in counts}
    held_until_later = session.execute(
        sa.select(JobRow.service_id, sa.func.count())
        .where(held_until_a_time(), JobRow.not_before > now)
        .group_by(JobRow.service_id)
    ).all()
    scheduled = {service_id: int(count) for service_id, count in held_until_later}
    services = [
        ServiceReading(
            service_id,
            name,
            available,
            has_timed_out(last_checked_in, timeout, now),
            (now - last_checked_in).total_seconds(),
            jobs.get((service_id, Status.REGISTERED.value), 0),
            jobs.get((service_id, Status.WORKING.value), 0),
            held_at,
            held_by,
            held_reason,
            max_running,
            scheduled=scheduled.get(service_id, 0),
        )
        for (
            service_id,
            name,
            available,
            timeout,
            last_checked_in,
            held_at,
            held_by,
            held_reason,
            max_running,
        ) in rows
    ]
    return Census(services, jobs, now)
