"""The job lifecycle, and the one compare-and-set that every writer goes through.

REGISTERED → WORKING → COMPLETED or ERROR; REGISTERED → CANCELLED; REGISTERED
may also end directly (a job that failed before it could start, or whose WORKING
report is still in flight when its COMPLETED one arrives). Nothing moves back.
The state mirror, beat, a cancel, the HTTP gateway and the models all apply this
rule in SQL with ``advance``, so a late or redelivered message can never undo a
decision.

One terminal state is a presumption rather than a fact: ERROR because beat found
the worker's lease lapsed ("worker lost"). A worker that was only frozen (a
laptop asleep, a network cut, a long pause) may still report the run it
finished. ``correct_presumed_loss`` is the one correction of a terminal state
the rule allows, and only for the same attempt: nothing ran again, so the real
outcome replaces the presumption. A superseded attempt's late outcome never
touches the job at all (``broker.models.attempts`` keeps it with its own attempt).

The one move backwards is ``release``: the holder of a first attempt that never
ran it gives it back (WORKING → REGISTERED), so that another worker can take it.

Two moves belong to the job controls, each in a function of its own so that no
other writer can make them: ``abort_run`` ends a running job CANCELLED (only
the run's own report that it saw an abort request), and ``retry`` sends a
running job back to wait for its next attempt (only the run's own report that
it asked for one, on a service that allows retries): WORKING → REGISTERED with
``not_before`` set, its attempt kept in ``job_attempts`` first.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker.errors import InvalidTransitionError
from broker.models.interfaces.job import Job
from broker.storage.tables import JobRow, UTCDateTime

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

#: Columns a move may set besides the status and its time.
MOVE_COLUMNS = ("results", "detail", "worker", "attempts", "presumed_lost_at")


@dataclass(frozen=True, slots=True)
class Move:
    """One job's move to a new status, as its writer saw it happen.

    ``at`` is when the transition happened at its source (a worker's report is
    stamped by the broker when it was made, not when the mirror applies it).
    ``started_at`` also records the start, for a job whose WORKING report
    arrives together with its end. ``attempt`` is the attempt that reports: a
    job that a later attempt holds is never moved by an earlier one.
    """

    job_id: uuid.UUID
    at: datetime
    columns: Mapping[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    attempt: int | None = None


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


def advance(session: Session, new: Status, moves: Sequence[Move]) -> int:
    """Move jobs to ``new`` where the rule allows it; return how many moved.

    The ``WHERE status IN (predecessors)`` clause is the compare-and-set: a job
    that has moved on since the caller looked is left alone. Times never run
    backwards on one job: a transition is stamped no earlier than the one
    before it, whatever the clocks of the machines that reported them.
    """
    if not moves:
        return 0
    dialect = session.get_bind().dialect.name
    at = sa.bindparam("v_at", type_=UTCDateTime())
    started_at = sa.bindparam("v_started_at", type_=UTCDateTime())
    attempt = sa.bindparam("v_attempt", type_=sa.Integer())
    columns = sorted({name for move in moves for name in move.columns})
    unknown = set(columns) - set(MOVE_COLUMNS)
    if unknown:
        raise ValueError(f"a move cannot set {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {name: sa.bindparam(f"v_{name}") for name in columns}
    values["status"] = new.value
    values["version"] = JobRow.version + 1
    # A job that moved was necessarily published: take it out of the outbox.
    values["published_at"] = sa.func.coalesce(JobRow.published_at, at)
    if new is Status.WORKING:
        values["date_started"] = _later(dialect, at, JobRow.date_submitted)
    else:
        start = sa.func.coalesce(JobRow.date_started, started_at)
        values["date_started"] = start
        values[TIMESTAMP_COLUMN[new]] = _later(
            dialect, at, sa.func.coalesce(start, JobRow.date_submitted)
        )
    statement = (
        sa.update(JobRow)
        .where(JobRow.id == sa.bindparam("v_id"))
        .where(status_in(PREDECESSORS[new]))
        .where(sa.or_(attempt.is_(None), JobRow.attempts <= attempt))
        .values(values)
        .execution_options(synchronize_session=False)
    )
    rows = []
    for move in moves:
        row = {"v_id": move.job_id, "v_at": move.at, "v_attempt": move.attempt}
        if new is not Status.WORKING:
            row["v_started_at"] = move.started_at
        row.update({f"v_{name}": move.columns.get(name) for name in columns})
        rows.append(row)
    result = session.connection().execute(statement, rows)
    return result.rowcount if result.rowcount >= 0 else 0


def correct_presumed_loss(session: Session, new: Status, moves: Sequence[Move]) -> int:
    """Replace a "worker lost" ERROR with the outcome its attempt reported after all.

    The one correction of a terminal state the lifecycle allows. It applies
    only while the job is still that presumption (ERROR with
    ``presumed_lost_at`` set) and only for the attempt that was presumed lost
    (``attempts`` equal to the reporting attempt): under the ``fail`` policy
    nothing ran again, so this outcome is the job's real one. A job a later
    attempt took over is never corrected by an earlier one. CANCELLED is the
    real outcome of a run that saw its abort (the worker reports no other).
    """
    if new not in (Status.COMPLETED, Status.ERROR, Status.CANCELLED) or not moves:
        return 0
    dialect = session.get_bind().dialect.name
    at = sa.bindparam("c_at", type_=UTCDateTime())
    statement = (
        sa.update(JobRow)
        .where(JobRow.id == sa.bindparam("c_id"))
        .where(JobRow.status == Status.ERROR.value)
        .where(JobRow.presumed_lost_at.is_not(None))
        .where(JobRow.attempts == sa.bindparam("c_attempt"))
        .values(
            status=new.value,
            results=sa.bindparam("c_results"),
            detail=sa.bindparam("c_detail"),
            date_finished=_later(
                dialect, at, sa.func.coalesce(JobRow.date_started, JobRow.date_submitted)
            ),
            version=JobRow.version + 1,
        )
        .execution_options(synchronize_session=False)
    )
    rows = [
        {
            "c_id": move.job_id,
            "c_at": move.at,
            "c_attempt": move.attempt,
            "c_results": move.columns.get("results"),
            "c_detail": move.columns.get("detail"),
        }
        for move in moves
    ]
    result = session.connection().execute(statement, rows)
    return result.rowcount if result.rowcount >= 0 else 0


def release(session: Session, moves: Sequence[Move]) -> int:
    """Give a claimed job back: WORKING → REGISTERED, by its claim's holder only.

    The one move backwards, and only in its safe form: the first attempt, held
    by the worker named in the move (``columns["worker"]``), which gives it up
    (a long-polling HTTP claimer that went away before it got the job, or a
    TopChef client that sets its job REGISTERED again); results it had kept on
    the job go with it. A job anyone else holds, or that a later attempt runs,
    is left alone.
    """
    if not moves:
        return 0
    statement = (
        sa.update(JobRow)
        .where(JobRow.id == sa.bindparam("r_id"))
        .where(JobRow.status == Status.WORKING.value)
        .where(JobRow.worker == sa.bindparam("r_worker"))
        .where(JobRow.attempts == 1)
        .values(
            status=Status.REGISTERED.value,
            worker=None,
            attempts=0,
            date_started=None,
            results=None,
            progress=None,
            progress_message=None,
            version=JobRow.version + 1,
        )
        .execution_options(synchronize_session=False)
    )
    rows = [{"r_id": move.job_id, "r_worker": move.columns.get("worker")} for move in moves]
    result = session.connection().execute(statement, rows)
    return result.rowcount if result.rowcount >= 0 else 0


def _later(dialect: str, first: Any, second: Any) -> sa.ColumnElement[Any]:
    """The later of two times, in SQL (neither may be NULL)."""
    if dialect == "postgresql":
        return sa.func.greatest(first, second, type_=UTCDateTime())
    # SQLite's two-argument max() is a scalar; its datetimes are ISO text of one width.
    return sa.func.max(first, second, type_=UTCDateTime())


def abort_run(session: Session, moves: Sequence[Move]) -> int:
    """End aborted runs: WORKING → CANCELLED, for the attempt that saw the abort only.

    A plain cancel never moves a WORKING job (``PREDECESSORS``); this is the
    one way a running job becomes CANCELLED, and only its own attempt's
    report makes it, with whatever results the handler chose to return.
    """
    if not moves:
        return 0
    dialect = session.get_bind().dialect.name
    at = sa.bindparam("a_at", type_=UTCDateTime())
    statement = (
        sa.update(JobRow)
        .where(JobRow.id == sa.bindparam("a_id"))
        .where(JobRow.status == Status.WORKING.value)
        .where(JobRow.attempts == sa.bindparam("a_attempt"))
        .values(
            status=Status.CANCELLED.value,
            results=sa.bindparam("a_results"),
            detail=sa.bindparam("a_detail"),
            date_finished=_later(
                dialect, at, sa.func.coalesce(JobRow.date_started, JobRow.date_submitted)
            ),
            version=JobRow.version + 1,
        )
        .execution_options(synchronize_session=False)
    )
    rows = [
        {
            "a_id": move.job_id,
            "a_at": move.at,
            "a_attempt": move.attempt,
            "a_results": move.columns.get("results"),
            "a_detail": move.columns.get("detail"),
        }
        for move in moves
    ]
    result = session.connection().execute(statement, rows)
    return result.rowcount if result.rowcount >= 0 else 0


def retry(session: Session, moves: Sequence[Move]) -> int:
    """Send running jobs back to wait for their next attempt: WORKING → REGISTERED.

    The documented move backwards of a retry: only the attempt that asked for
    it (``attempts`` equal to the move's), and only while it is still WORKING.
    The job goes back into the outbox (``published_at`` NULL) with
    ``not_before`` (``columns["not_before"]``) set, and beat publishes attempt
    n+1 once due. Keep the attempt first (``broker.models.attempts.keep_retried``):
    this clears the run's worker, start and progress from the job's row.
    """
    if not moves:
        return 0
    statement = (
        sa.update(JobRow)
        .where(JobRow.id == sa.bindparam("t_id"))
        .where(JobRow.status == Status.WORKING.value)
        .where(JobRow.attempts == sa.bindparam("t_attempt"))
        .values(
            status=Status.REGISTERED.value,
            not_before=sa.bindparam("t_not_before", type_=UTCDateTime()),
            detail=sa.bindparam("t_detail"),
            published_at=None,
            worker=None,
            date_started=None,
            results=None,
            progress=None,
            progress_message=None,
            version=JobRow.version + 1,
        )
        .execution_options(synchronize_session=False)
    )
    rows = [
        {
            "t_id": move.job_id,
            "t_attempt": move.attempt,
            "t_not_before": move.columns["not_before"],
            "t_detail": move.columns.get("detail"),
        }
        for move in moves
    ]
    result = session.connection().execute(statement, rows)
    return result.rowcount if result.rowcount >= 0 else 0


def not_before_start(dialect: str, at: Any, start: Any) -> sa.ColumnElement[Any]:
    """``at``, or ``start`` if that is later: an end is never stamped before its start.

    For the attempts kept beside a job (``broker.models.attempts``), whose
    ends are stamped by the same rule as the job's own.
    """
    return _later(dialect, at, sa.func.coalesce(start, at))
