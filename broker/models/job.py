"""A job backed by its SQL row."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker import actors
from broker.contract import compile_contract
from broker.models import attempts, lifecycle
from broker.models.interfaces.job import JSON
from broker.models.interfaces.job import Job as JobInterface
from broker.storage.tables import JobRow, JobTransitionRow, ServiceRow, database_now


class Job(JobInterface):
    """A job whose state lives in a ``JobRow`` of the caller's session.

    Changes are made to the row and so tracked by the session; they read back
    at once and reach the database when the caller commits.
    """

    def __init__(self, database_job: JobRow) -> None:
        self._row = database_job

    @property
    def _session(self) -> Session:
        session = Session.object_session(self._row)
        if session is None:
            raise RuntimeError("this job's row is not attached to a session")
        return session

    @property
    def _service(self) -> ServiceRow:
        service = self._session.get(ServiceRow, self._row.service_id)
        assert service is not None, "jobs.service_id is a foreign key"
        return service

    def __hash__(self) -> int:
        return hash(self._row.id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JobInterface):
            return NotImplemented
        return self.id == other.id

    def __repr__(self) -> str:
        return f"<Job {self._row.id} {self._row.status}>"

    @property
    def id(self) -> uuid.UUID:
        return self._row.id

    @property
    def service_id(self) -> uuid.UUID:
        return self._row.service_id

    @property
    def parameter_schema(self) -> dict[str, JSON]:
        return self._service.job_registration_schema

    @property
    def result_schema(self) -> dict[str, JSON]:
        return self._service.job_result_schema

    @property
    def status(self) -> JobInterface.JobStatus:
        return JobInterface.JobStatus(self._row.status)

    @status.setter
    def status(self, new_status: JobInterface.JobStatus) -> None:
        new_status = JobInterface.JobStatus(new_status)
        if new_status == self.status:
            return
        current = self.status
        lifecycle.check_move(self.id, current, new_status)
        at = database_now(self._session)
        self._row.status = new_status.value
        setattr(self._row, lifecycle.TIMESTAMP_COLUMN[new_status], at)
        # The model's move is a move like any other: its history row goes with it.
        self._session.add(
            JobTransitionRow(
                job_id=self.id,
                from_status=current.value,
                to_status=new_status.value,
                at=at,
                by=actors.person(),
                attempt=self._row.attempts,
            )
        )

    @property
    def parameters(self) -> dict[str, JSON]:
        return self._row.parameters

    @property
    def results(self) -> dict[str, JSON] | None:
        return self._row.results

    @results.setter
    def results(self, new_results: dict[str, JSON]) -> None:
        contract = compile_contract(self.result_schema, source="job_result_schema")
        self._row.results = contract.validate(new_results, source="results")

    @property
    def detail(self) -> str | None:
        """Why the job ended in ERROR, when it did."""
        return self._row.detail

    @property
    def progress(self) -> float | None:
        """The last progress its worker reported, from 0 to 1."""
        return self._row.progress

    @property
    def progress_message(self) -> str | None:
        return self._row.progress_message

    @property
    def attempts(self) -> int:
        """How many times a worker started the job."""
        return self._row.attempts

    @property
    def worker(self) -> str | None:
        """The worker that ran (or runs) the job."""
        return self._row.worker

    @property
    def not_before(self) -> datetime | None:
        """The job waits until then (a producer's ``not_before``, or a retry's backoff)."""
        return self._row.not_before

    @property
    def date_submitted(self) -> datetime:
        return self._row.date_submitted

    @property
    def date_started(self) -> datetime | None:
        return self._row.date_started

    @property
    def date_finished(self) -> datetime | None:
        return self._row.date_finished

    @property
    def resubmitted_from(self) -> uuid.UUID | None:
        """The job this one repeats, if it was resubmitted from another."""
        return self._row.resubmitted_from

    @property
    def priority(self) -> int:
        """Higher starts first (``broker.messaging.priorities``)."""
        return self._row.priority

    @property
    def resubmissions(self) -> list[uuid.UUID]:
        """The jobs resubmitted from this one, oldest first: the other half of the link."""
        return list(
            self._session.scalars(
                sa.select(JobRow.id)
                .where(JobRow.resubmitted_from == self.id)
                .order_by(JobRow.date_submitted)
            )
        )

    @property
    def earlier_attempts(self) -> list[dict[str, Any]]:
        """Attempts before the current one (each retry's, each superseded), oldest first."""
        return attempts.shown(self._session, self.id)

    def as_dict(self) -> dict[str, Any]:
        """The job as JSON-ready data (the gateway's and the CLI's view)."""
        return {
            "id": str(self.id),
            "service_id": str(self.service_id),
            "status": self.status.value,
            "parameters": self.parameters,
            "results": self.results,
            "detail": self.detail,
            "progress": self.progress,
            "progress_message": self.progress_message,
            "attempts": self.attempts,
            "date_submitted": self.date_submitted.isoformat(),
            "date_started": self.date_started.isoformat() if self.date_started else None,
            "date_finished": self.date_finished.isoformat() if self.date_finished else None,
            "not_before": self.not_before.isoformat() if self.not_before else None,
            "resubmitted_from": _text(self.resubmitted_from),
            "resubmissions": [str(job_id) for job_id in self.resubmissions],
            "priority": self.priority,
        }


def _text(job_id: uuid.UUID | None) -> str | None:
    return None if job_id is None else str(job_id)
