"""The job lifecycle, and the one compare-and-set that every writer goes through.

REGISTERED → WORKING → COMPLETED or ERROR; REGISTERED → CANCELLED; REGISTERED
may also end directly (a job that failed before it could start, or whose WORKING
report is still in flight when its COMPLETED one arrives). Nothing moves back.
The state mirror, beat, a cancel and the models all apply this rule in SQL with
``advance``, so a late or redelivered message can never undo a decision.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker.database import JobRow
from broker.models.errors import InvalidTransitionError
from broker.models.interfaces.job import Job

Status = Job.JobStatus

TERMINAL: frozenset[Status] = frozenset({Status.COMPLETED, Status.ERROR, Status.CANCELLED})

#: For each status, the statuses a job may move to it from.
PREDECESSORS: Mapping[Status, frozenset[Status]] = {
    Status.REGISTERED: frozenset(),
    Status.WORKING: frozenset({Status.REGISTERED}),
    Status.COMPLETED: frozenset({Status.REGISTERED, Status.WORKING}),
    Status.ERROR: frozenset({Status.REGISTERED, Status.WORKING}),
    Status.CANCELLED: frozenset({Status.REGISTERED}),
}

#: The column that records when a job reached each status.
TIMESTAMP_COLUMN: Mapping[Status, str] = {
    Status.REGISTERED: "date_submitted",
    Status.WORKING: "date_started",
    Status.COMPLETED: "date_finished",
    Status.ERROR: "date_finished",
    Status.CANCELLED: "date_finished",
}

#: The order in which a batch applies its transitions. Because the rule is
#: forward-only, applying a batch in this order gives the same result as
#: applying it in any order in which its messages could have been sent.
RANK: Mapping[Status, int] = {
    Status.REGISTERED: 0,
    Status.WORKING: 1,
    Status.COMPLETED: 2,
    Status.ERROR: 2,
    Status.CANCELLED: 2,
}


def status_in(statuses: frozenset[Status] | list[Status]) -> sa.ColumnElement[bool]:
    """``status IN (...)`` spelled with plain parameters, which ``executemany`` accepts."""
    return sa.or_(*(JobRow.status == status.value for status in sorted(statuses)))


def can_move(current: Status, new: Status) -> bool:
    """Whether a job that is ``current`` may become ``new``."""
    return current in PREDECESSORS[new]


def check_move(job_id: uuid.UUID, current: Status, new: Status) -> None:
    """Raise ``InvalidTransitionError`` unless ``current`` → ``new`` moves forward."""
    if not can_move(current, new):
        raise InvalidTransitionError(job_id, current.value, new.value)


def advance(
    session: Session,
    new: Status,
    changes: Sequence[Mapping[str, Any]],
    at: datetime,
) -> int:
    """Move jobs to ``new`` where the rule allows it; return how many moved.

    ``changes`` holds one mapping per job: its ``id`` plus the other columns to
    set with the move (``results``, ``detail``, ``worker``, ``attempts``). The
    ``WHERE status IN (predecessors)`` clause is the compare-and-set: a job
    that has moved on since the caller looked is left alone.
    """
    if not changes:
        return 0
    columns = sorted({key for change in changes for key in change} - {"id"})
    values: dict[str, Any] = {name: sa.bindparam(f"v_{name}") for name in columns}
    values["status"] = new.value
    values[TIMESTAMP_COLUMN[new]] = at
    values["version"] = JobRow.version + 1
    # A job that moved was necessarily published: take it out of the outbox.
    values["published_at"] = sa.func.coalesce(JobRow.published_at, at)
    statement = (
        sa.update(JobRow)
        .where(JobRow.id == sa.bindparam("v_id"))
        .where(status_in(PREDECESSORS[new]))
        .values(values)
        .execution_options(synchronize_session=False)
    )
    rows = [{f"v_{key}": change.get(key) for key in ["id", *columns]} for change in changes]
    connection = session.connection()
    result = connection.execute(statement, rows)
    return result.rowcount if result.rowcount >= 0 else 0
