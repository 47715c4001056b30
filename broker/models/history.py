"""A job's history and provenance, as read back from SQL.

The history is every move of the job in the order they happened (by the time
each was stamped at its source, then as recorded): its REGISTERED entry read
from the job's own row (when and by whom it was submitted: a bulk submission
writes no history row), then the rows ``lifecycle`` appended with each
compare-and-set. The provenance says who submitted the job, which schemas it
was validated against, and what ran it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker.contract import schema_fingerprint
from broker.errors import JobWithUUIDNotFound
from broker.storage.tables import (
    JobAttemptRow,
    JobRow,
    JobTransitionRow,
    RunProvenanceRow,
    ServiceRow,
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One move of a job: ``from_status`` is None for its submission."""

    at: datetime
    from_status: str | None
    to_status: str
    by: str | None
    attempt: int | None
    detail: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "from": self.from_status,
            "to": self.to_status,
            "by": self.by,
            "attempt": self.attempt,
            "detail": self.detail,
        }


def of_job(session: Session, job_id: uuid.UUID) -> list[Entry]:
    """Every move of the job, oldest first; ``JobWithUUIDNotFound`` for an unknown job."""
    submitted = session.execute(
        sa.select(JobRow.date_submitted, JobRow.submitted_by).where(JobRow.id == job_id)
    ).first()
    if submitted is None:
        raise JobWithUUIDNotFound(job_id)
    entries = [Entry(submitted[0], None, "REGISTERED", submitted[1], None, None)]
    rows = session.scalars(
        sa.select(JobTransitionRow)
        .where(JobTransitionRow.job_id == job_id)
        # In time order: the gateway and the mirror may write a job's rows out
        # of order; moves stamped alike stay in the order they were written.
        .order_by(JobTransitionRow.at, JobTransitionRow.id)
    )
    entries += [
        Entry(row.at, row.from_status, row.to_status, row.by, row.attempt, row.detail)
        for row in rows
    ]
    return entries


def provenance(session: Session, job_id: uuid.UUID) -> dict[str, Any]:
    """Who submitted the job, the fingerprint of its schemas, and what ran each attempt.

    ``run`` is the current (or last) attempt's; ``earlier_runs`` those of
    attempts a later one superseded, by attempt.
    """
    found = session.execute(
        sa.select(JobRow, ServiceRow)
        .join(ServiceRow, ServiceRow.id == JobRow.service_id)
        .where(JobRow.id == job_id)
    ).first()
    if found is None:
        raise JobWithUUIDNotFound(job_id)
    job, service = found
    fingerprint = service.schema_fingerprint or schema_fingerprint(
        service.job_registration_schema, service.job_result_schema
    )
    earlier = session.execute(
        sa.select(JobAttemptRow.attempt, JobAttemptRow.run_provenance)
        .where(JobAttemptRow.job_id == job_id)
        .order_by(JobAttemptRow.attempt)
    ).all()
    digests = {job.run_provenance, *(digest for _attempt, digest in earlier)} - {None}
    runs = {
        row.digest: row
        for row in session.scalars(
            sa.select(RunProvenanceRow).where(RunProvenanceRow.digest.in_(digests))
        )
    }
    return {
        "submitted_by": job.submitted_by,
        "schema_fingerprint": fingerprint,
        "run": _run(job.run_provenance, job.worker, runs),
        "earlier_runs": {
            str(attempt): _run(digest, None, runs) for attempt, digest in earlier if digest
        },
    }


def _run(
    digest: str | None, worker: str | None, runs: dict[str, RunProvenanceRow]
) -> dict[str, Any] | None:
    """What ran an attempt; only its worker if it reported no provenance (an HTTP worker)."""
    row = runs.get(digest) if digest else None
    if row is None:
        return None if worker is None else {"worker": worker}
    return {
        "worker": row.worker,
        "module": row.module,
        "code_version": row.code_version,
        "python": row.python,
    }
