"""Handing jobs to HTTP workers, on the same claims that Celery workers take.

Who runs a job is decided by its claim in Redis (``broker.messaging.claims``), never by
SQL: an HTTP worker claims a job with the same Lua script a Celery worker runs,
so a job one of them holds is refused to the other, and two HTTP workers
polling one service never get the same job. After a claim wins, the SQL row is
moved at once (``lifecycle.advance``'s compare-and-set) so that ``GET
/jobs/<id>`` shows WORKING; the mirror's later copy of the same change is a
no-op.

An HTTP worker renews no lease itself, so its claim's lease lasts the service's
timeout and every check-in of the service (``PATCH /services/<id>``) renews the
leases of the jobs it holds over HTTP, kept in a Redis set per service
(``keys.http_jobs``). A worker that stops checking in loses its jobs to beat,
as a Celery worker that dies does.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker.gateway.errors import JobClaimedElsewhereError, claim_refused
from broker.messaging import keys, outbox
from broker.messaging.claims import CLAIM_TTL_SECONDS, ClaimResult, Claims, Holder
from broker.messaging.connections import text
from broker.messaging.messages import StateMessage
from broker.messaging.presence import ARRIVE, Presence
from broker.mirror import holders
from broker.models import credentials, lifecycle
from broker.models.moves import Move
from broker.models.service import Service
from broker.settings import Settings
from broker.storage.tables import JobRow, ServiceRow, database_now, open_session
from broker.trust.credentials import CORE

Status = lifecycle.Status
log = logging.getLogger(__name__)

#: Worker names of HTTP claims start with this; the rest is the client's id or address.
HTTP_PREFIX = "http:"
#: The longest a claim request may wait for a job (``?wait=``).
MAX_WAIT = 60.0
#: Waiting claims look at SQL again after at most this long.
MAX_POLL_INTERVAL = 0.5
#: REGISTERED jobs read per SQL round trip when looking for an unclaimed one.
CANDIDATES = 50
#: The order of the jobs a caller holds: by submission, ties by id.
_OLDEST_FIRST = (JobRow.date_submitted, JobRow.id)
#: The order waiting jobs are handed out and shown in, the priority rule's
#: (``broker.messaging.priorities``): highest priority first, then oldest.
_NEXT_FIRST = (JobRow.priority.desc(), JobRow.date_submitted, JobRow.id)
#: Jobs whose leases one script call renews.
RENEW_CHUNK = 500


def lease_seconds(timeout: float) -> float:
    """An HTTP claim's lease: the service's timeout (bounded by the claim's own life)."""
    return min(float(timeout), float(CLAIM_TTL_SECONDS))


class Dispatcher:
    """Claims, finishes and keeps alive the jobs HTTP workers run."""

    def __init__(self, client: redis.Redis, settings: Settings, closing: threading.Event) -> None:
        self._client = client
        self._closing = closing
        # The workers' duplicate window, so that a job an HTTP worker finished is
        # settled as one a Celery worker finished is.
        self._base = Claims.configured(client, settings)
        #: HTTP workers' presences, beside Celery workers' (``broker.messaging.presence``).
        self.presence = Presence(client)
        self._database_url = settings.database_url
        self._signing: Claims | None = None
        self._signing_lock = threading.Lock()

    def _claims(self, timeout: float) -> Claims:
        """The claims of a service with this ``timeout``, signing what they report.

        The gateway reports for its HTTP workers, as the core: with the core's
        credential (``broker.models.credentials.core``), read (or made, and
        committed at once) the first time it reports.
        """
        with self._signing_lock:
            if self._signing is None:
                with open_session(self._database_url) as session, session.begin():
                    self._signing = self._base.signed_by(credentials.core(session))
        return self._signing.leased(lease_seconds(timeout))

    def holder(self, job_id: uuid.UUID) -> Holder:
        return self._base.holder(job_id)

    # -- finding and claiming --------------------------------------------------

    def unclaimed(self, session: Session, service_id: uuid.UUID, limit: int) -> list[JobRow]:
        """A service's REGISTERED jobs that nobody has claimed, in the order they are handed out.

        SQL may still say REGISTERED of a job a Celery worker has just claimed
        (the mirror has not caught up); the claims in Redis say otherwise.
        """
        found: list[uuid.UUID] = []
        for page in due_registered(session, service_id, database_now(session)):
            free = self._base.unclaimed(page)
            found += [job_id for job_id in page if job_id in free]
            if len(found) >= limit:
                break
        if not found:
            return []
        return list(
            session.scalars(
                sa.select(JobRow).where(JobRow.id.in_(found[:limit])).order_by(*_NEXT_FIRST)
            ).all()
        )

    def holding(self, session: Session, service_id: uuid.UUID, worker: str) -> list[JobRow]:
        """The service's jobs this caller holds over HTTP and runs still, oldest first.

        TopChef's clients re-read ``next`` or ``queue`` before each step of a
        job they run, so the job they hold must come first in what they see.
        """
        members = sorted(
            _text(member) or "" for member in self._client.smembers(keys.http_jobs(service_id))
        )
        ids = [uuid.UUID(member) for member in members if member]
        holders = self._base.holders(ids)
        mine = [
            job_id
            for job_id, holder in zip(ids, holders, strict=True)
            if holder.state == "running" and holder.worker == worker
        ]
        if not mine:
            return []
        return list(
            session.scalars(
                sa.select(JobRow)
                .where(JobRow.id.in_(mine), JobRow.status == Status.WORKING.value)
                .order_by(*_OLDEST_FIRST)
            ).all()
        )

    def requeued(self, session: Session, service_id: uuid.UUID) -> list[tuple[JobRow, int]]:
        """WORKING jobs whose worker was lost and that beat handed back, with their next attempt.

        Their rows stay WORKING (the job goes on), so only the claim tells them apart.
        """
        rows = session.scalars(
            sa.select(JobRow)
            .where(JobRow.service_id == service_id, JobRow.status == Status.WORKING.value)
            .order_by(*_NEXT_FIRST)
            .limit(CANDIDATES)
        ).all()
        holders = self._base.holders([row.id for row in rows])
        return [
            (row, holder.attempt + 1)
            for row, holder in zip(rows, holders, strict=True)
            if holder.state == ClaimResult.REQUEUED.value
        ]

    def claim(
        self, session: Session, job: JobRow, timeout: float, worker: str, attempt: int = 1
    ) -> ClaimResult:
        """Claim a job's ``attempt`` for ``worker``; show the job WORKING at once if that won.

        ``timeout`` is the job's service's: the claim's lease lasts that long.
        """
        result = self._take(session, job.id, job.service_id, timeout, worker, attempt)
        if result is ClaimResult.CLAIMED:
            session.expire(job)
        return result

    def _take(
        self,
        session: Session,
        job_id: uuid.UUID,
        service_id: uuid.UUID,
        timeout: float,
        worker: str,
        attempt: int,
        at: datetime | None = None,
    ) -> ClaimResult:
        """``claim`` by the job's id; ``at`` is the database's time, if the caller read it."""
        working = StateMessage(
            "status",
            service_id,
            job_id,
            status=Status.WORKING.value,
            attempt=attempt,
            worker=worker,
        )
        # Trusted: the job was read from SQL, the record of what was registered.
        result = self._claims(timeout).claim(job_id, attempt, worker, working, trusted=True)
        if result is ClaimResult.CLAIMED:
            pipeline = self._client.pipeline(transaction=False)
            pipeline.sadd(keys.http_jobs(service_id), str(job_id))
            # A caller that runs the service's jobs serves it, whatever it said of availability.
            self.presence.queue(pipeline, worker, ARRIVE, [service_id], timeout)
            pipeline.execute()
            # A later attempt's row is WORKING already: the mirror records the new attempt.
            # Moved here, not by the mirror: the hold its copy of the move checks against.
            # Recorded before the move, in the order the mirror takes the two locks.
            holders.record(session, job_id, attempt, CORE)
            columns = {"worker": worker, "attempts": attempt}
            move = Move(job_id, at or database_now(session), columns, by=worker)
            lifecycle.advance(session, Status.WORKING, [move])
        return result

    def release(self, session: Session, job: JobRow, timeout: float, worker: str) -> bool:
        """Give back a first attempt this caller claimed but will never run (it went away).

        The job is REGISTERED again for anyone to take, and its message is
        published again, since a Celery worker may have been refused it while
        it was claimed here. A later attempt (a re-queued job) is not released:
        its lease lapses and beat applies the service's policy.
        """
        release = StateMessage("release", job.service_id, job.id, attempt=1, worker=worker)
        take = self._claims(timeout).release(job.id, 1, worker, release)
        if take is None:
            return False
        self._client.srem(keys.http_jobs(job.service_id), str(job.id))
        move = Move(job.id, database_now(session), {"worker": worker}, by=worker, take=take or None)
        lifecycle.release(session, [move])
        service = session.get(ServiceRow, job.service_id)
        assert service is not None, "jobs.service_id is a foreign key"
        outbox.record_job(session, Service(service).message_for(job))
        return True

    def give_back(
        self,
        sessions: Callable[[], contextlib.AbstractContextManager[Session]],
        job_id: uuid.UUID,
        worker: str,
    ) -> bool:
        """``release`` a job this caller claimed in an earlier transaction."""
        with sessions() as session:
            job = session.get(JobRow, job_id)
            service = session.get(ServiceRow, job.service_id) if job is not None else None
            if job is None or service is None:
                return False
            released = self.release(session, job, service.timeout, worker)
        if released:
            log.info("%s hung up before its answer left: gave job %s back", worker, job_id)
        return released

    def claim_next(
        self,
        sessions: Callable[[], contextlib.AbstractContextManager[Session]],
        service_id: uuid.UUID,
        worker: str,
        wait: float,
        gone: Callable[[], bool] = lambda: False,
        timeout: float | None = None,
    ) -> uuid.UUID | None:
        """Claim the oldest unclaimed job of the service, waiting up to ``wait`` s for one.

        Jobs never started come first; then jobs whose worker was lost and that
        the service's ``requeue`` policy runs again. A caller that has gone
        (``gone``: it closed its connection while waiting) takes nothing, and
        a job it won just as it went is released again. ``timeout`` is the
        service's, if the caller has just read it; a wait reads it again.
        """
        deadline = time.monotonic() + min(wait, MAX_WAIT)
        interval = 0.02
        log.debug("%s waits up to %.1f s for a job of service %s", worker, wait, service_id)
        while not gone():
            with sessions() as session:
                if timeout is None:
                    timeout = session.scalar(
                        sa.select(ServiceRow.timeout).where(ServiceRow.id == service_id)
                    )
                    if timeout is None:
                        return None
                won = self._claim_first(session, service_id, timeout, worker)
                if won is not None:
                    row_id, attempt = won
                    if gone() and self._give_back_taken(session, row_id, timeout, worker, attempt):
                        log.info("%s hung up as it won job %s: released it", worker, row_id)
                        return None
                    return row_id
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closing.wait(min(interval, remaining)):
                return None
            interval = min(MAX_POLL_INTERVAL, interval * 2)
            timeout = None  # the service may have changed, or gone, meanwhile
        log.info("%s hung up while waiting for a job of service %s", worker, service_id)
        return None

    def _claim_first(
        self, session: Session, service_id: uuid.UUID, timeout: float, worker: str
    ) -> tuple[uuid.UUID, int] | None:
        """Claim the first of the service's due REGISTERED jobs that nobody holds, oldest first.

        Each candidate's claim is its own check: one round trip for the job an
        uncontended caller takes, where reading every candidate's claim first
        cost one for all and one more for the take. A service that may not start
        a job now (held, or at its ``max_running``) defers them all alike.
        Then jobs whose worker was lost and that beat handed back.
        """
        now = database_now(session)
        for page in due_registered(session, service_id, now):
            for job_id in page:
                claimed = self._take(session, job_id, service_id, timeout, worker, 1, now)
                if claimed is ClaimResult.CLAIMED:
                    return job_id, 1
                if claimed is ClaimResult.DEFERRED:
                    return None
        for row, attempt in self.requeued(session, service_id):
            claimed = self._take(session, row.id, service_id, timeout, worker, attempt, now)
            if claimed is ClaimResult.CLAIMED:
                return row.id, attempt
        return None

    def _give_back_taken(
        self, session: Session, job_id: uuid.UUID, timeout: float, worker: str, attempt: int
    ) -> bool:
        """``release`` a job just claimed in ``session`` (only a first attempt goes back)."""
        row = session.get(JobRow, job_id)
        return attempt == 1 and row is not None and self.release(session, row, timeout, worker)

    # -- running and finishing -------------------------------------------------

    def held(self, job: JobRow, worker: str, *, late: bool = False) -> Holder:
        """The job's claim, if this caller holds it over HTTP; a clear refusal otherwise.

        Only the claim's holder may report on a job: a caller that did not name
        itself is known by its address, and is never taken for a named holder.
        With ``late``, a claim beat has since given up (the lease lapsed) still
        counts as its holder's, whose report is then recorded as late.
        """
        holder = self.holder(job.id)
        states = ("running", "lost", "requeued") if late else ("running",)
        if holder.state not in states:
            raise claim_refused(job.id, holder.state)
        if not (holder.worker or "").startswith(HTTP_PREFIX):
            raise JobClaimedElsewhereError(
                job.id, f"Job {job.id} is being run by the worker {holder.worker}"
            )
        if holder.worker != worker:
            raise JobClaimedElsewhereError(
                job.id, f"Job {job.id} is held by {holder.worker}, not {worker}"
            )
        return holder

    def finish(
        self,
        session: Session,
        job: JobRow,
        timeout: float,
        outcome: Status,
        results: dict[str, Any] | None,
        detail: str | None,
        worker: str,
    ) -> None:
        """End a job an HTTP worker runs (claiming it first if nobody has yet).

        A report that arrives after beat gave the claim up is recorded all the
        same: the mirror applies it as a late outcome (``broker.mirror.process``).
        """
        unclaimed = Status(job.status) is Status.REGISTERED and self.holder(job.id).state is None
        if unclaimed:
            claimed = self.claim(session, job, timeout, worker)
            if claimed is not ClaimResult.CLAIMED:
                raise claim_refused(job.id, claimed.value)
        holder = self.held(job, worker, late=True)
        service_id, job_id = job.service_id, job.id
        final = StateMessage(
            "status",
            service_id,
            job_id,
            outcome.value,
            results=results,
            detail=detail,
            attempt=holder.attempt,
            worker=holder.worker,
        )
        landed = self._claims(timeout).finish(job_id, holder.attempt, final)
        self._client.srem(keys.http_jobs(service_id), str(job_id))
        if not landed.on_time:
            return  # the mirror records it, with how late it came
        columns = {
            "results": results,
            "detail": detail,
            "worker": holder.worker,
            "attempts": holder.attempt,
        }
        move = Move(job_id, database_now(session), columns, attempt=holder.attempt, by=worker)
        lifecycle.advance(session, outcome, [move])
        session.expire(job)

    # -- leases ----------------------------------------------------------------

    def renew(
        self, service_id: uuid.UUID, timeout: float, job_ids: list[str] | None = None
    ) -> None:
        """Extend the leases of the service's jobs held over HTTP (or of ``job_ids``)."""
        held_key = keys.http_jobs(service_id)
        members = (
            job_ids
            if job_ids is not None
            else sorted(_text(member) or "" for member in self._client.smembers(held_key))
        )
        self._claims(timeout).renew_http(service_id, members, RENEW_CHUNK)


def due_registered(
    session: Session, service_id: uuid.UUID, now: datetime
) -> Iterator[list[uuid.UUID]]:
    """The ids of the service's REGISTERED jobs that are due at ``now``, next first.

    Highest priority first, then oldest, as Celery workers take them: HTTP
    workers follow the same priority rule. A priority at a time, each found
    as the highest below the last (one probe of the index of waiting jobs,
    ``ix_jobs_waiting``), its jobs in pages of ``CANDIDATES`` read when the
    caller asks for them (keyset paging): a caller that finds its job in the
    first page reads no other, and the first page costs one statement.
    """
    waiting = (JobRow.service_id == service_id, JobRow.status == Status.REGISTERED.value)
    # A job held until a time is no one's before it (nor a retry before its backoff).
    due = sa.or_(JobRow.not_before.is_(None), JobRow.not_before <= now)
    oldest = (JobRow.date_submitted, JobRow.id)
    below: int | None = None
    while True:
        highest = sa.select(sa.func.max(JobRow.priority)).where(*waiting)
        if below is not None:
            highest = highest.where(JobRow.priority < below)
        first = (
            sa.select(JobRow.priority, *oldest)
            .where(*waiting, due, JobRow.priority == highest.scalar_subquery())
            .order_by(*oldest)
            .limit(CANDIDATES)
        )
        page = session.execute(first).all()
        if not page:  # none waits at this priority, or none of its jobs is due yet
            below = session.scalar(highest)
            if below is None:
                return
            continue
        below = page[0][0]
        query = first.where(JobRow.priority == below)
        while page:
            yield [job_id for _priority, _submitted, job_id in page]
            if len(page) < CANDIDATES:
                break
            after = sa.tuple_(*oldest) > sa.tuple_(*page[-1][1:])
            page = session.execute(query.where(after)).all()


def _text(value: object) -> str | None:
    return None if value is None else text(value)
