"""Attempts a later attempt superseded, kept beside the job (``job_attempts``).

Under the ``requeue`` policy beat hands a job whose worker was presumed lost to
another worker. The attempt it gave up may not be dead: a frozen worker can
wake up and report what it measured. Such an outcome belongs to its own
attempt and never to the job, whose current attempt owns the job's outcome;
it is kept here, so that nothing a worker measured disappears.

An attempt that asked for a retry (``broker.worker.Retry``) is kept here too,
ended ERROR with the reason it gave, before ``lifecycle.retry`` sends the job
back to wait for the next one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from broker.models import lifecycle
from broker.models.lifecycle import Status, not_before_start
from broker.models.moves import Move
from broker.storage.tables import JobAttemptRow, JobRow, UTCDateTime


@dataclass(frozen=True, slots=True)
class Restart:
    """A later attempt of a WORKING job has started (beat re-queued it)."""

    job_id: uuid.UUID
    attempt: int
    worker: str | None
    at: datetime
    #: What runs the new attempt (a ``RunProvenanceRow`` digest).
    run_provenance: str | None = None


@dataclass(frozen=True, slots=True)
class LateOutcome:
    """What a superseded attempt reported after all."""

    job_id: uuid.UUID
    attempt: int
    status: Status
    results: dict[str, Any] | None
    detail: str | None
    worker: str | None
    at: datetime


def restart(session: Session, restarts: Sequence[Restart]) -> None:
    """Record each restarted job's previous attempt as superseded, then start the new one.

    The start of the new attempt is a move of its own in the job's history
    (WORKING → WORKING, by the new attempt's worker).
    """
    if not restarts:
        return
    connection = session.connection()
    insert = _insert(connection.dialect.name)
    previous = sa.select(
        JobRow.id,
        JobRow.attempts,
        JobRow.worker,
        JobRow.date_started,
        sa.bindparam("p_at", type_=UTCDateTime()),
        JobRow.run_provenance,
    ).where(
        JobRow.id == sa.bindparam("p_id"),
        JobRow.status == Status.WORKING.value,
        JobRow.attempts < sa.bindparam("p_attempt"),
        JobRow.attempts > 0,
    )
    keep = insert.from_select(
        ["job_id", "attempt", "worker", "date_started", "superseded_at", "run_provenance"],
        previous,
    ).on_conflict_do_nothing()
    connection.execute(
        keep, [{"p_id": r.job_id, "p_attempt": r.attempt, "p_at": r.at} for r in restarts]
    )
    start = (
        sa.update(JobRow)
        .where(JobRow.id == sa.bindparam("r_id"))
        .where(JobRow.status == Status.WORKING.value)
        .where(JobRow.attempts < sa.bindparam("r_attempt"))
        .values(
            attempts=sa.bindparam("r_attempt"),
            worker=sa.bindparam("r_worker"),
            date_started=sa.bindparam("r_at", type_=UTCDateTime()),
            run_provenance=sa.bindparam("r_provenance"),
            version=JobRow.version + 1,
        )
        .execution_options(synchronize_session=False)
    )
    parameters = [
        {
            "r_id": r.job_id,
            "r_attempt": r.attempt,
            "r_worker": r.worker,
            "r_at": r.at,
            "r_provenance": r.run_provenance,
        }
        for r in restarts
    ]
    moves = [
        Move(r.job_id, r.at, {"detail": _restart_note(r.attempt)}, by=r.worker) for r in restarts
    ]
    lifecycle.move_each(
        session, start, parameters, moves, Status.WORKING, Status.WORKING, JobRow.date_started
    )


def _restart_note(attempt: int) -> str:
    earlier = "attempt 1 was" if attempt == 2 else f"attempts 1 to {attempt - 1} were"
    return f"attempt {attempt} started: {earlier} given up for lost"


@dataclass(frozen=True, slots=True)
class Retried:
    """An attempt that ended asking for another one."""

    job_id: uuid.UUID
    attempt: int
    detail: str
    at: datetime


def keep_retried(session: Session, retried: Sequence[Retried]) -> None:
    """Record each attempt that asked for a retry, from the job's row, while it is WORKING."""
    if not retried:
        return
    connection = session.connection()
    insert = _insert(connection.dialect.name)
    at = sa.bindparam("k_at", type_=UTCDateTime())
    ended = not_before_start(connection.dialect.name, at, JobRow.date_started)
    attempt = sa.select(
        JobRow.id,
        JobRow.attempts,
        JobRow.worker,
        JobRow.date_started,
        sa.literal(Status.ERROR.value),
        sa.bindparam("k_detail", type_=sa.Text()),
        ended,
        JobRow.run_provenance,
    ).where(
        JobRow.id == sa.bindparam("k_id"),
        JobRow.status == Status.WORKING.value,
        JobRow.attempts == sa.bindparam("k_attempt"),
    )
    keep = insert.from_select(
        [
            "job_id",
            "attempt",
            "worker",
            "date_started",
            "status",
            "detail",
            "date_finished",
            "run_provenance",
        ],
        attempt,
    ).on_conflict_do_nothing()
    connection.execute(
        keep,
        [
            {"k_id": r.job_id, "k_attempt": r.attempt, "k_detail": r.detail, "k_at": r.at}
            for r in retried
        ],
    )


def keep_late(session: Session, outcomes: Sequence[LateOutcome]) -> int:
    """Store superseded attempts' outcomes on their own rows; returns how many were kept.

    Only for jobs that a later attempt really holds: an outcome of the job's
    current attempt is the job's own and is applied by ``lifecycle`` instead.
    """
    kept = 0
    connection = session.connection()
    insert = _insert(connection.dialect.name)
    for outcome in outcomes:
        current = connection.scalar(sa.select(JobRow.attempts).where(JobRow.id == outcome.job_id))
        if current is None or current <= outcome.attempt:
            continue
        values = {
            "status": outcome.status.value,
            "results": outcome.results,
            "detail": outcome.detail,
            "date_finished": outcome.at,
        }
        statement = insert.values(
            job_id=outcome.job_id, attempt=outcome.attempt, worker=outcome.worker, **values
        ).on_conflict_do_update(
            index_elements=[JobAttemptRow.job_id, JobAttemptRow.attempt], set_=values
        )
        connection.execute(statement)
        kept += 1
    return kept


def of_job(session: Session, job_id: uuid.UUID) -> list[JobAttemptRow]:
    """A job's superseded attempts, oldest first."""
    return list(
        session.scalars(
            sa.select(JobAttemptRow)
            .where(JobAttemptRow.job_id == job_id)
            .order_by(JobAttemptRow.attempt)
        )
    )


def shown(session: Session, job_id: uuid.UUID) -> list[dict[str, Any]]:
    """A job's earlier attempts as JSON-ready data: what ``jobs show`` and HTTP list."""
    return [
        {
            "attempt": row.attempt,
            "status": row.status,
            "worker": row.worker,
            "detail": row.detail,
            "date_started": _iso(row.date_started),
            "date_finished": _iso(row.date_finished or row.superseded_at),
        }
        for row in of_job(session, job_id)
    ]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _insert(dialect: str) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(JobAttemptRow)
    return sqlite.insert(JobAttemptRow)
