"""The outbox: a job's message leaves only after its row has committed.

Models record what must be published in ``session.info``; when the session
commits, the publisher attached to it (see ``attach``) sends the job messages
and service descriptors; beat marks the jobs published (``mark_taken``). A
process that dies between the commit and the publish leaves rows with
``published_at IS NULL`` and no record of a publication; beat publishes those
(``broker.beat.recovery``).
A session without a publisher (plain model use, tests of the models) simply
leaves its jobs to beat.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from broker.messaging.messages import JobMessage, ServiceDescriptor
from broker.storage.tables import JobRow, ServiceRow, database_now, ids_among

log = logging.getLogger(__name__)

_PUBLISHER = "topchef.publisher"
_JOBS = "topchef.outbox.jobs"
_SERVICES = "topchef.outbox.services"
_DESCRIPTORS = "topchef.outbox.descriptors"


class Publisher(Protocol):
    """Sends what a committed transaction produced to the message broker."""

    def publish_jobs(self, messages: Sequence[JobMessage]) -> None: ...

    def publish_services(self, descriptors: Sequence[ServiceDescriptor]) -> None: ...

    def take_published(self, limit: int) -> list[uuid.UUID]:
        """Remove and return up to ``limit`` ids of jobs published but not yet marked."""
        ...


def attach(session: Session, publisher: Publisher) -> Session:
    """Make ``session`` publish its jobs and services when it commits."""
    session.info[_PUBLISHER] = publisher
    return session


def record_job(session: Session, message: JobMessage) -> None:
    """Queue ``message`` for publication when ``session`` commits."""
    session.info.setdefault(_JOBS, []).append(message)


def record_service(session: Session, row: ServiceRow) -> None:
    """Publish the service's descriptor when ``session`` commits (creation, changes)."""
    session.info.setdefault(_SERVICES, {})[row.id] = row


def descriptor_of(row: ServiceRow) -> ServiceDescriptor:
    """A service's descriptor, as workers receive it."""
    return ServiceDescriptor(
        id=row.id,
        name=row.name,
        job_result_schema=row.job_result_schema,
        timeout=row.timeout,
        worker_loss_policy=row.worker_loss_policy,
        max_attempts=row.max_attempts,
        job_registration_schema=row.job_registration_schema,
        retries=row.retries,
        retry_on=list(row.retry_on or []),
        retry_backoff=row.retry_backoff,
        held=row.held_at is not None,
        max_running=row.max_running,
    )


@event.listens_for(Session, "before_commit")
def _snapshot(session: Session) -> None:
    """Read service rows while they are loaded; after commit they are expired."""
    rows = session.info.pop(_SERVICES, None)
    if rows:
        session.info[_DESCRIPTORS] = [descriptor_of(row) for row in rows.values()]


@event.listens_for(Session, "after_rollback")
def _discard(session: Session) -> None:
    for key in (_JOBS, _SERVICES, _DESCRIPTORS):
        session.info.pop(key, None)


@event.listens_for(Session, "after_commit")
def _publish(session: Session) -> None:
    jobs: list[JobMessage] = session.info.pop(_JOBS, [])
    descriptors: list[ServiceDescriptor] = session.info.pop(_DESCRIPTORS, [])
    publisher: Publisher | None = session.info.get(_PUBLISHER)
    if publisher is not None and (jobs or descriptors):
        bind = session.get_bind()
        engine = bind if isinstance(bind, sa.Engine) else bind.engine
        publish_committed(publisher, engine, jobs, descriptors)


def publish_committed(
    publisher: Publisher,
    engine: sa.Engine,
    jobs: Sequence[JobMessage],
    descriptors: Sequence[ServiceDescriptor] = (),
) -> None:
    """Send what a transaction committed; beat marks the jobs published later.

    The publisher records each job it sends in Redis, in the same round trip
    as the message (``Publisher.take_published``), and beat moves those
    records into SQL in bulk (``mark_taken``). Marking in SQL here would cost
    a submit a second transaction, with its WAL flush, after the first.
    """
    try:
        if descriptors:
            publisher.publish_services(descriptors)
        if jobs:
            publisher.publish_jobs(jobs)
    except Exception:
        # The rows are committed; beat publishes what did not leave. Raising
        # here would tell the caller its commit failed, which is untrue.
        log.exception("publishing %d job(s) failed; beat will publish them", len(jobs))
        return


def mark_taken(bind: sa.Engine | sa.Connection, publisher: Publisher, chunk: int = 10_000) -> int:
    """Mark published every job the publisher has recorded as sent; returns how many.

    Beat runs this before looking for unpublished jobs, so that it does not
    publish again a job a producer sent but had not marked. A record taken by
    a beat that dies before the UPDATE commits is lost: its job is published
    again after the grace period, and its claim makes that harmless.
    """
    total = 0
    while job_ids := publisher.take_published(chunk):
        mark_published(bind, job_ids)
        total += len(job_ids)
    return total


def mark_published(bind: sa.Engine | sa.Connection, job_ids: Sequence[uuid.UUID]) -> None:
    """Take published jobs out of the outbox, in chunks the database accepts.

    Rows the mirror is updating right now are skipped rather than waited for
    (two writers locking rows in different orders deadlock): the mirror marks
    every job it moves as published itself. A job that waits for its time
    (``not_before``) is never marked here: a record of an earlier publication
    must not take a retry's next attempt out of the outbox (beat marks the
    jobs it publishes when due itself, ``broker.beat.recovery.publish_due``).
    """
    engine = bind if isinstance(bind, sa.Engine) else bind.engine
    with Session(bind=engine) as session, session.begin():
        # The database's clock, read in the UPDATE itself where it can be (a round trip less).
        now: Any = (
            sa.func.clock_timestamp()
            if engine.dialect.name == "postgresql"
            else database_now(session)
        )
        for chunk in ids_among(engine.dialect.name, JobRow.id, job_ids):
            unlocked = (
                sa.select(JobRow.id)
                .where(chunk, JobRow.published_at.is_(None), JobRow.not_before.is_(None))
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            session.execute(
                sa.update(JobRow)
                .where(JobRow.id.in_(unlocked))
                .values(published_at=now)
                .execution_options(synchronize_session=False)
            )
