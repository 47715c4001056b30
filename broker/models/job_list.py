"""Lists of jobs: all of them, or those of one service — one class, two base queries.

As the seed's "Job List From Query" observed, the two lists differ only by the
``WHERE`` clause they start from; here that clause is a constructor argument.
All of one service's jobs (``of_service``) are also counted without reading
them: the database keeps that count (``broker.storage.job_counts``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker.models.interfaces.job import Job as JobInterface
from broker.models.interfaces.job_list import JobList as JobListInterface
from broker.models.job import Job
from broker.storage.tables import JobCountRow, JobRow

_BATCH = 500


class JobList(JobListInterface):
    """The jobs of ``session`` that match ``criteria`` (all jobs when there are none)."""

    def __init__(self, session: Session, *criteria: sa.ColumnElement[bool]) -> None:
        self._session = session
        self._criteria = criteria
        #: Set when the list is every job of this service and nothing narrower.
        self._whole_service: uuid.UUID | None = None

    @classmethod
    def of_service(cls, session: Session, service_id: uuid.UUID) -> JobList:
        """Every job of one service: the list whose length ``job_counts`` keeps."""
        jobs = cls(session, JobRow.service_id == service_id)
        jobs._whole_service = service_id
        return jobs

    def _select(self) -> sa.Select[JobRow]:
        return sa.select(JobRow).where(*self._criteria)

    def _row(self, job_id: uuid.UUID) -> JobRow:
        if not isinstance(job_id, uuid.UUID):
            raise KeyError(job_id)
        row = self._session.scalars(self._select().where(JobRow.id == job_id)).one_or_none()
        if row is None:
            raise KeyError(job_id)
        return row

    def __iter__(self) -> Iterator[Job]:
        query = self._select().order_by(JobRow.date_submitted, JobRow.id)
        result = self._session.scalars(query.execution_options(yield_per=_BATCH))
        try:  # a loop that stops early must not leave a server-side cursor open
            for row in result:
                yield Job(row)
        finally:
            result.close()

    async def __aiter__(self) -> AsyncIterator[Job]:
        for job in self:
            yield job

    def __len__(self) -> int:
        """A few rows' sum for a whole service; a ``COUNT`` of the matching rows otherwise."""
        if self._whole_service is not None:
            kept = sa.select(sa.func.sum(JobCountRow.jobs)).where(
                JobCountRow.service_id == self._whole_service
            )
            return int(self._session.scalar(kept) or 0)  # no row yet: no jobs yet
        query = sa.select(sa.func.count()).select_from(JobRow).where(*self._criteria)
        return int(self._session.scalar(query) or 0)

    def __contains__(self, job_id: object) -> bool:
        if isinstance(job_id, JobInterface):
            job_id = job_id.id
        if not isinstance(job_id, uuid.UUID):
            return False
        query = sa.select(sa.literal(1)).select_from(JobRow).where(*self._criteria)
        return self._session.scalar(query.where(JobRow.id == job_id).limit(1)) is not None

    def __getitem__(self, job_id: uuid.UUID) -> Job:
        return Job(self._row(job_id))

    def __setitem__(self, job_id: uuid.UUID, job: JobInterface) -> None:
        """Give the job at ``job_id`` the status and results of ``job``."""
        target = Job(self._row(job_id))
        target.status = job.status
        if job.results is not None and job.results != target.results:
            target.results = job.results

    def __delitem__(self, job_id: uuid.UUID) -> None:
        self._session.delete(self._row(job_id))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JobListInterface):
            return NotImplemented
        if isinstance(other, JobList) and self._same_query(other):
            return True  # no need to compare row by row
        return {job.id for job in self} == {job.id for job in other}

    def _same_query(self, other: JobList) -> bool:
        return other._session is self._session and _fingerprint(other) == _fingerprint(self)

    __hash__ = None  # type: ignore[assignment]  # mutable container

    def with_status(self, *statuses: JobInterface.JobStatus) -> JobList:
        """The same list narrowed to jobs in one of ``statuses``."""
        wanted = [JobInterface.JobStatus(status).value for status in statuses]
        return JobList(self._session, *self._criteria, JobRow.status.in_(wanted))

    def oldest(self, limit: int) -> list[Job]:
        """Up to ``limit`` jobs, oldest first (with ``with_status``: the queue)."""
        query = self._select().order_by(JobRow.date_submitted, JobRow.id).limit(limit)
        return [Job(row) for row in self._session.scalars(query)]

    def page(self, offset: int, limit: int, newest_first: bool = True) -> list[Job]:
        """One page of the list, for listings that must not load every row."""
        order: tuple[Any, ...] = (
            (JobRow.date_submitted.desc(), JobRow.id.desc())
            if newest_first
            else (JobRow.date_submitted, JobRow.id)
        )
        query = self._select().order_by(*order).offset(offset).limit(limit)
        return [Job(row) for row in self._session.scalars(query)]


def _fingerprint(jobs: JobList) -> list[tuple[str, dict[str, Any]]]:
    """Each criterion's SQL with its bound values: equal fingerprints, equal lists."""
    fingerprint = []
    for criterion in jobs._criteria:
        compiled = criterion.compile()
        fingerprint.append((str(compiled), dict(compiled.params)))
    return fingerprint
