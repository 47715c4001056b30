"""What beat does every few seconds: timeouts, lost workers' jobs and batches, the outbox.

Each function reads SQL, decides, and writes through a compare-and-set, so two
beat processes running at once by mistake never double a transition: the
second finds the row already moved and changes nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker import actors
from broker.beat.directory import Directory
from broker.beat.refusals import Refusals
from broker.messaging import outbox
from broker.messaging.batches import Batches
from broker.messaging.claims import ClaimResult, Claims
from broker.messaging.messages import JobMessage, requeues_lost_work
from broker.messaging.outbox import Publisher
from broker.models import lifecycle
from broker.models.moves import Move
from broker.models.service import Service, has_timed_out
from broker.storage.tables import JobRow, ServiceRow, UTCDateTime, database_now

log = logging.getLogger(__name__)
Status = lifecycle.Status

#: The outbox is drained in chunks this size, so one tick never loads it all.
OUTBOX_CHUNK = 1000
#: How many of each service's oldest REGISTERED jobs are checked for a lost message.
OVERTAKEN_CANDIDATES = 20


@dataclass
class TickReport:
    """What one beat tick changed, for logs and tests."""

    timed_out: list[uuid.UUID] = field(default_factory=list)
    requeued: list[uuid.UUID] = field(default_factory=list)
    failed: list[uuid.UUID] = field(default_factory=list)
    published: int = 0
    #: Jobs sent again because their message vanished (``republish_overtaken``).
    republished: list[uuid.UUID] = field(default_factory=list)


def evaluate_timeouts(session: Session, now: datetime) -> list[uuid.UUID]:
    """Mark services that stopped checking in as timed out and unavailable.

    Judged on the database's clock, against check-in times the mirror wrote
    on that same clock, so a lab machine's wrong clock cannot time it out.
    """
    rows = session.execute(
        sa.select(ServiceRow.id, ServiceRow.timeout, ServiceRow.last_checked_in).where(
            ServiceRow.timed_out_at.is_(None)
        )
    ).all()
    timed_out = []
    for service_id, timeout, last_checked_in in rows:
        if not has_timed_out(last_checked_in, timeout, now):
            continue
        moved = session.execute(  # type: ignore[attr-defined]
            sa.update(ServiceRow)
            .where(
                ServiceRow.id == service_id,
                ServiceRow.timed_out_at.is_(None),
                ServiceRow.last_checked_in == last_checked_in,
            )
            .values(timed_out_at=now, is_service_available=False)
        ).rowcount
        if moved:
            log.warning("service %s timed out (no check-in for %.1f s)", service_id, timeout)
            timed_out.append(service_id)
    return timed_out


def recover_lost_jobs(
    session: Session, claims: Claims, publisher: Publisher, now: datetime
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Apply each service's worker-loss policy to WORKING jobs whose lease lapsed.

    Returns the jobs re-queued and the jobs failed.
    """
    rows = session.execute(
        sa.select(JobRow, ServiceRow)
        .join(ServiceRow, ServiceRow.id == JobRow.service_id)
        .where(JobRow.status == Status.WORKING.value)
    ).all()
    requeue_messages: list[JobMessage] = []
    failures: list[Move] = []
    for job, service in rows:
        requeue = requeues_lost_work(service.worker_loss_policy)
        recovery = claims.recover(job.id, requeue, service.max_attempts, service.id)
        if recovery.verdict == "requeue":
            requeue_messages.append(Service(service).message_for(job, recovery.attempt))
        elif recovery.verdict in ("fail", "exhausted", "lost"):
            detail = (
                f"worker lost on each of {recovery.attempt} attempts; giving up"
                if recovery.verdict == "exhausted"
                else f"worker lost while running the job (attempt {recovery.attempt}); "
                "the service's worker-loss policy is 'fail', so it was not run again"
            )
            columns = {"detail": detail, "presumed_lost_at": now}
            failures.append(Move(job.id, now, columns, attempt=recovery.attempt, by=actors.BEAT))
    lifecycle.advance(session, Status.ERROR, failures)
    if requeue_messages:
        publisher.publish_jobs(requeue_messages)
    return [m.job_id for m in requeue_messages], [move.job_id for move in failures]


def publish_outbox(session: Session, publisher: Publisher, now: datetime, grace: float) -> int:
    """Publish committed jobs whose producer died before publishing them.

    A job younger than ``grace`` is left to its producer, which is likely
    publishing it right now; were both to publish, the claim would still run
    it once.
    """
    cutoff = now - timedelta(seconds=grace)
    unpublished = sa.and_(
        JobRow.published_at.is_(None),
        JobRow.not_before.is_(None),  # the index of the outbox leaves waiting jobs out
        JobRow.status == Status.REGISTERED.value,
        JobRow.date_submitted < cutoff,
    )
    return _publish_where(session, publisher, unpublished, JobRow.date_submitted) + publish_due(
        session, publisher, now
    )


def publish_due(session: Session, publisher: Publisher, now: datetime) -> int:
    """Publish the jobs whose ``not_before`` has come: a producer's, or a retry's next attempt.

    Such a job was never published by its producer, so there is no grace to
    wait for. Each goes out as its next attempt (attempt n+1 after n runs); a
    job cancelled while it waited is no longer REGISTERED and never goes.
    Never a Celery ETA: a message held in a worker past the visibility timeout
    would be delivered again, and one held for days blocks a worker slot.
    """
    due = sa.and_(lifecycle.held_until_a_time(), JobRow.not_before <= now)
    return _publish_where(session, publisher, due, JobRow.not_before, _mark_attempts_published)


def _mark_attempts_published(session: Session, messages: list[JobMessage]) -> None:
    """Take due jobs out of the outbox, each only while it still waits for the attempt sent.

    Were its attempt to have run and asked for another retry since, the job
    waits again, and must stay in the outbox.
    """
    session.connection().execute(
        sa.update(JobRow)
        .where(
            JobRow.id == sa.bindparam("m_id"),
            JobRow.attempts == sa.bindparam("m_attempts"),
            JobRow.published_at.is_(None),
        )
        .values(published_at=sa.bindparam("m_at", type_=UTCDateTime()))
        .execution_options(synchronize_session=False),
        [
            {"m_id": m.job_id, "m_attempts": m.attempt - 1, "m_at": database_now(session)}
            for m in messages
        ],
    )
    session.commit()


def _mark_published(session: Session, messages: list[JobMessage]) -> None:
    outbox.mark_published(session.get_bind(), [m.job_id for m in messages])


def _publish_where(
    session: Session,
    publisher: Publisher,
    where: sa.ColumnElement[bool],
    order: Any,
    mark: Callable[[Session, list[JobMessage]], None] = _mark_published,
) -> int:
    published = 0
    while True:
        rows = session.execute(
            sa.select(JobRow, ServiceRow)
            .join(ServiceRow, ServiceRow.id == JobRow.service_id)
            .where(where)
            .order_by(order)
            .limit(OUTBOX_CHUNK)
        ).all()
        if not rows:
            return published
        messages = [Service(service).message_for(job, job.attempts + 1) for job, service in rows]
        publisher.publish_jobs(messages)
        mark(session, messages)
        published += len(messages)
        session.expire_all()


def requeue_abandoned_batches(
    session: Session, claims: Claims, batches: Batches, publisher: Publisher
) -> list[uuid.UUID]:
    """Send again, one by one, the jobs a dead worker's batches never started.

    Only jobs still REGISTERED are sent: one cancelled meanwhile stays so. The
    original batch message may come back too (a visibility timeout); the
    claims let each job run once all the same.
    """
    abandoned = batches.abandoned()
    carried = [job_id for ids in abandoned.values() for job_id in ids]
    unclaimed = claims.unclaimed(carried)
    job_ids = [job_id for job_id in carried if job_id in unclaimed]
    messages: list[JobMessage] = []
    for start in range(0, len(job_ids), OUTBOX_CHUNK):
        rows = session.execute(
            sa.select(JobRow, ServiceRow)
            .join(ServiceRow, ServiceRow.id == JobRow.service_id)
            .where(
                JobRow.id.in_(job_ids[start : start + OUTBOX_CHUNK]),
                JobRow.status == Status.REGISTERED.value,
            )
            .order_by(JobRow.date_submitted)
        ).all()
        messages += [Service(service).message_for(job) for job, service in rows]
    if messages:
        publisher.publish_jobs(messages)
        log.warning("re-queued %d job(s) of batches whose worker was lost", len(messages))
    batches.forget(list(abandoned))
    return [message.job_id for message in messages]


def republish_overtaken(
    session: Session, claims: Claims, publisher: Publisher, now: datetime, stale: float
) -> list[uuid.UUID]:
    """Send again the jobs whose message vanished: later jobs of their queue have run.

    A queue is first in, first out within a priority: a later job of a higher
    priority starts before an earlier one by rule, so only a later job of the
    same or a lower priority overtakes. A worker killed just after it took a
    message, before kombu recorded it as unacknowledged, takes the message
    with it for good, and its job would stay REGISTERED with nothing to
    deliver it. So a published REGISTERED job, unclaimed in Redis, while a job
    submitted after it started more than ``stale`` seconds ago (longer than a
    redelivery takes), has lost its message.
    Only the oldest jobs of each service are looked at; sending a job again
    whose message was only slow is harmless (its claim runs it once).
    """
    cutoff = now - timedelta(seconds=stale)
    later = sa.orm.aliased(JobRow)
    overtaken = (
        sa.exists()
        .where(
            later.service_id == JobRow.service_id,
            later.date_submitted > JobRow.date_submitted,
            later.priority <= JobRow.priority,
            later.date_started < cutoff,
        )
        .correlate(JobRow)
    )
    found = [
        (job, service)
        for oldest in _oldest_registered(session)
        for job, service in session.execute(
            sa.select(JobRow, ServiceRow)
            .join(ServiceRow, ServiceRow.id == JobRow.service_id)
            .where(JobRow.id.in_(oldest), JobRow.published_at.is_not(None), overtaken)
        ).all()
    ]
    republished = _publish_unclaimed(found, claims, publisher)
    if republished:
        log.warning(
            "re-published %d job(s) whose message was lost (jobs after them have run)",
            len(republished),
        )
    return republished


def republish_refused(
    session: Session, claims: Claims, publisher: Publisher, job_ids: list[uuid.UUID]
) -> list[uuid.UUID]:
    """Send again, from SQL, the waiting jobs a worker refused a delivery of.

    A refused message may have been the job's only one (a parked message
    rewritten in Redis); the job waits REGISTERED and unclaimed with nothing to
    deliver it. Sending a job whose genuine message is still queued is
    harmless: its claim runs it once (``broker.beat.refusals``).
    """
    if not job_ids:
        return []
    found = [
        (job, service)
        for job, service in session.execute(
            sa.select(JobRow, ServiceRow)
            .join(ServiceRow, ServiceRow.id == JobRow.service_id)
            .where(JobRow.id.in_(job_ids), JobRow.status == Status.REGISTERED.value)
        ).all()
    ]
    republished = _publish_unclaimed(found, claims, publisher)
    if republished:
        log.warning(
            "re-published %d job(s) a worker refused a delivery of: %s",
            len(republished),
            ", ".join(str(job) for job in republished[:5]),
        )
    return republished


def _publish_unclaimed(
    found: list[tuple[JobRow, ServiceRow]], claims: Claims, publisher: Publisher
) -> list[uuid.UUID]:
    """Publish those of ``found`` no delivery holds: unclaimed, or a retry's next attempt."""
    holders = claims.holders([job.id for job, _service in found])
    messages = [
        Service(service).message_for(job, job.attempts + 1)
        for (job, service), holder in zip(found, holders, strict=True)
        if holder.state in (None, ClaimResult.RETRYING.value)
    ]
    if messages:
        publisher.publish_jobs(messages)
    return [message.job_id for message in messages]


def _oldest_registered(session: Session) -> list[sa.Select[Any]]:
    """Selects of each service's ``OVERTAKEN_CANDIDATES`` oldest REGISTERED jobs' ids.

    On PostgreSQL, one select for every service (a LATERAL join: one index
    probe per service, inside one statement, so a thousand services cost one
    round trip); elsewhere, one select per service.
    """
    registered = JobRow.status == Status.REGISTERED.value
    if session.get_bind().dialect.name == "postgresql":
        oldest = (
            sa.select(JobRow.id)
            .where(JobRow.service_id == ServiceRow.id, registered)
            .order_by(JobRow.date_submitted)
            .limit(OVERTAKEN_CANDIDATES)
            .lateral("oldest")
        )
        return [sa.select(oldest.c.id).select_from(ServiceRow).join(oldest, sa.true())]
    return [
        sa.select(JobRow.id)
        .where(JobRow.service_id == service_id, registered)
        .order_by(JobRow.date_submitted)
        .limit(OVERTAKEN_CANDIDATES)
        for service_id in session.scalars(sa.select(ServiceRow.id)).all()
    ]


def sync_directory(session: Session, publisher: Publisher) -> list[uuid.UUID]:
    """Re-publish every service's descriptor, healing a directory Redis lost.

    That includes each service's hold and ``max_running`` (``keys.service_control``):
    a Redis restarted without its data forgets no hold for longer than a tick.
    Returns the ids of the services.
    """
    rows = session.scalars(sa.select(ServiceRow)).all()
    publisher.publish_services([outbox.descriptor_of(row) for row in rows])
    return [row.id for row in rows]


def release_parked(claims: Claims, service_ids: list[uuid.UUID]) -> int:
    """Let parked jobs go as far as their services' slots allow; returns how many went.

    A safety net: a resume and the end of each run release them already. This
    catches a raised ``max_running``, a resume whose release failed, and a slot
    that a path ending a run left taken (pruned here).
    """
    # Most services have nothing running nor parked: one round trip leaves them out.
    used = claims.with_slots_in_use(service_ids)
    released = sum(claims.release_parked(service_id, prune=True) for service_id in used)
    if released:
        log.info("released %d parked job(s)", released)
    return released


def tick(
    session: Session,
    claims: Claims,
    batches: Batches,
    publisher: Publisher,
    grace: float,
    overtaken_after: float | None = None,
    directory: Directory | None = None,
    refusals: Refusals | None = None,
) -> TickReport:
    """One round of beat's duties, each committed on its own.

    ``overtaken_after`` (seconds) also looks for jobs whose message vanished
    (``republish_overtaken``); beat does so once per redelivery window.
    ``directory`` re-publishes only the services that changed (beat's own,
    kept between ticks); without it, every service is published again.
    ``refusals`` (beat's place in the refused-deliveries log) sends again the
    waiting jobs a worker refused a delivery of.
    """
    report = TickReport()
    if directory is None:
        services = sync_directory(session, publisher)
    else:
        services = directory.sync(session, publisher)
    session.commit()
    release_parked(claims, services)
    now = database_now(session)
    report.timed_out = evaluate_timeouts(session, now)
    session.commit()
    report.requeued, report.failed = recover_lost_jobs(session, claims, publisher, now)
    session.commit()
    claims.settle(report.failed)
    report.requeued += requeue_abandoned_batches(session, claims, batches, publisher)
    session.commit()
    if overtaken_after is not None:
        report.republished = republish_overtaken(session, claims, publisher, now, overtaken_after)
        session.commit()
    if refusals is not None:
        report.republished += republish_refused(session, claims, publisher, refusals.new_jobs())
        session.commit()
    outbox.mark_taken(session.get_bind(), publisher)
    report.published = publish_outbox(session, publisher, database_now(session), grace)
    session.commit()
    return report
