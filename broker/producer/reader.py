"""Jobs read back from SQL: finding, showing and waiting for them.

Apart from ``Producer`` because reading needs no message broker: ``topchef jobs
show`` and ``wait`` still work on the database of a stack that has stopped.
Every id is taken as a ``uuid.UUID`` or as its text (``broker.contract.ids``).
"""

from __future__ import annotations

import string
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from broker.contract.ids import Id, as_uuid
from broker.errors import (
    JobCancelledError,
    JobFailedError,
    JobReferenceError,
    JobWithUUIDNotFound,
    WaitTimeoutError,
)
from broker.models import attempts, history, lifecycle
from broker.models.job import Job
from broker.storage.tables import JobRow, open_session

Status = lifecycle.Status

#: Polling of SQL while waiting starts fast and backs off to this interval.
MAX_POLL_INTERVAL = 0.25
#: The fewest hex digits that name a job: fewer would match many jobs of any
#: real lab, and reading them back is how a user mistypes someone else's job.
SHORTEST_REFERENCE = 4


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where a waited-for job stands: finished (with results or a reason) or not yet."""

    job_id: uuid.UUID
    status: Status
    results: Any = None
    detail: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in lifecycle.TERMINAL


@dataclass(frozen=True, slots=True)
class Standing:
    """How far a wait has got, at one look at SQL: what a progress bar shows.

    A sweep stands at its jobs finished (of which ``failed`` ended ERROR and
    ``cancelled`` CANCELLED) out of ``total``; a wait for one job has that
    job's status and the progress its handler last reported besides.
    """

    total: int
    finished: int
    failed: int = 0
    cancelled: int = 0
    #: With one job: its status, its progress (0 to 1; None before its
    #: handler reported any) and the message that came with it.
    status: Status | None = None
    progress: float | None = None
    progress_message: str | None = None


#: Called with each look at SQL while waiting (``Reader.outcomes``'s ``watch``).
Watch = Callable[[Standing], object]


class Reader:
    """Reads jobs from the database at ``database_url``; writes nothing."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def job(self, job_id: Id) -> dict[str, Any]:
        """A snapshot of the job as SQL has it now."""
        job_id = as_uuid(job_id)
        with open_session(self.database_url) as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise JobWithUUIDNotFound(job_id)
            return Job(row).as_dict()

    def history(self, job_id: Id) -> list[dict[str, Any]]:
        """Every move of the job, oldest first (``broker.models.history``)."""
        with open_session(self.database_url) as session:
            return [entry.as_dict() for entry in history.of_job(session, as_uuid(job_id))]

    def provenance(self, job_id: Id) -> dict[str, Any]:
        """Who submitted the job, the fingerprint of its schemas, what ran it."""
        with open_session(self.database_url) as session:
            return history.provenance(session, as_uuid(job_id))

    def earlier_attempts(self, job_id: Id) -> list[dict[str, Any]]:
        """The job's attempts before its current one (retried, or superseded), oldest first."""
        with open_session(self.database_url) as session:
            return attempts.shown(session, as_uuid(job_id))

    def find(self, reference: str) -> uuid.UUID:
        """The job whose id is ``reference``, or the one job whose id starts with it.

        The prefix becomes a range of ids (``8a94`` → ``8a940000-…`` to
        ``8a94ffff-…``), which the primary key's index answers on SQLite and
        PostgreSQL alike, however many jobs there are.
        """
        digits = reference.strip().lower().replace("-", "")
        if len(digits) < SHORTEST_REFERENCE or len(digits) > 32:
            raise JobReferenceError(reference, None, SHORTEST_REFERENCE)
        if set(digits) - set(string.hexdigits):
            raise JobReferenceError(reference, None, SHORTEST_REFERENCE)
        low, high = uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))
        in_range = JobRow.id.between(low, high)
        with open_session(self.database_url) as session:
            found = list(session.scalars(sa.select(JobRow.id).where(in_range).limit(2)))
            if len(found) == 1:
                return found[0]
            if not found:
                if len(digits) == 32:
                    raise JobWithUUIDNotFound(low)
                raise JobReferenceError(reference, 0, SHORTEST_REFERENCE)
            matches = session.scalar(sa.select(sa.func.count()).select_from(JobRow).where(in_range))
        raise JobReferenceError(reference, int(matches or 0), SHORTEST_REFERENCE)

    def outcomes(
        self, job_ids: Sequence[Id], timeout: float, *, watch: Watch | None = None
    ) -> list[Outcome]:
        """Wait up to ``timeout`` s for every job to finish; each one's outcome, in order.

        Never raises for a job's fate (a failure, a cancel, a timeout): a sweep's
        waiter wants every result, not only those before the first failure.
        ``watch``, if given, is called with the wait's ``Standing`` after each
        look at SQL, the last one included (a progress bar follows it).
        """
        deadline = time.monotonic() + timeout
        interval = 0.005
        ids = [as_uuid(job_id) for job_id in job_ids]
        remaining = set(ids)
        self._require_known(remaining)
        total = len(remaining)
        finished: dict[uuid.UUID, Outcome] = {}
        while True:
            finished.update(self._finished(remaining))
            remaining.difference_update(finished)
            if watch is not None:
                watch(self._standing(total, finished, remaining))
            if not remaining or time.monotonic() >= deadline:
                break
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(MAX_POLL_INTERVAL, interval * 2)
        unfinished = self._statuses(remaining)
        return [finished.get(job_id) or unfinished[job_id] for job_id in ids]

    def wait_all(
        self, job_ids: Sequence[Id], timeout: float = 60.0, *, watch: Watch | None = None
    ) -> list[Any]:
        """Every job's results, in order; raises for the first that has none.

        ``WaitTimeoutError`` if any is still running after ``timeout`` s, else
        ``JobFailedError`` (ERROR) or ``JobCancelledError`` (CANCELLED).
        ``watch`` follows the wait (see ``outcomes``).
        """
        outcomes = self.outcomes(job_ids, timeout, watch=watch)
        for outcome in outcomes:
            if not outcome.finished:
                raise WaitTimeoutError(outcome.job_id, outcome.status.value, timeout)
        for outcome in outcomes:
            if outcome.status is Status.ERROR:
                raise JobFailedError(outcome.job_id, outcome.detail or "no detail")
            if outcome.status is Status.CANCELLED:
                raise JobCancelledError(outcome.job_id)
        return [outcome.results for outcome in outcomes]

    def _standing(
        self, total: int, finished: dict[uuid.UUID, Outcome], remaining: set[uuid.UUID]
    ) -> Standing:
        """The wait's standing; for one unfinished job, read with its progress."""
        ended = [outcome.status for outcome in finished.values()]
        standing = Standing(
            total, len(finished), ended.count(Status.ERROR), ended.count(Status.CANCELLED)
        )
        if total != 1:
            return standing
        if not remaining:
            return replace(standing, status=ended[0])
        [job_id] = remaining
        columns = (JobRow.status, JobRow.progress, JobRow.progress_message)
        with open_session(self.database_url) as session:
            row = session.execute(sa.select(*columns).where(JobRow.id == job_id)).first()
        if row is None:  # deleted meanwhile: the next look says so
            return standing
        status, progress, message = row
        return replace(standing, status=Status(status), progress=progress, progress_message=message)

    def _require_known(self, job_ids: set[uuid.UUID]) -> None:
        ids = list(job_ids)
        with open_session(self.database_url) as session:
            for start in range(0, len(ids), 1000):
                chunk = ids[start : start + 1000]
                known = set(session.scalars(sa.select(JobRow.id).where(JobRow.id.in_(chunk))))
                for job_id in chunk:
                    if job_id not in known:
                        raise JobWithUUIDNotFound(job_id)

    def _finished(self, job_ids: set[uuid.UUID]) -> dict[uuid.UUID, Outcome]:
        return self._read(job_ids, JobRow.status.in_([s.value for s in lifecycle.TERMINAL]))

    def _statuses(self, job_ids: set[uuid.UUID]) -> dict[uuid.UUID, Outcome]:
        return self._read(job_ids, sa.true())

    def _read(
        self, job_ids: set[uuid.UUID], where: sa.ColumnElement[bool]
    ) -> dict[uuid.UUID, Outcome]:
        found: dict[uuid.UUID, Outcome] = {}
        ids = list(job_ids)
        columns = (JobRow.id, JobRow.status, JobRow.results, JobRow.detail)
        with open_session(self.database_url) as session:
            for start in range(0, len(ids), 1000):
                chunk = JobRow.id.in_(ids[start : start + 1000])
                for job_id, status, results, detail in session.execute(
                    sa.select(*columns).where(chunk, where)
                ):
                    found[job_id] = Outcome(job_id, Status(status), results, detail)
        return found
