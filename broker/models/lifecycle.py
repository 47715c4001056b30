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

Every move is recorded in ``job_transitions`` (the job's history) by the same
compare-and-set that makes it, so a history row exists exactly when the job
moved: from, to, when (the time the job's row records for the move), who
(``Move.by``: a worker's host:pid, ``actors.BEAT``, a person, an HTTP caller),
attempt and detail. ``advance`` does it in one set-based statement per batch
on PostgreSQL. A new kind of move writes its UPDATE as a compare-and-set and
runs it through ``move_each``, which records each job it moved; a move that
finds out otherwise which jobs it moved (and from what) hands them to
``record``, the one writer of the history, in the same transaction. A job's
REGISTERED entry is not a row: ``broker.models.history`` reads it from the job.
Two moves belong to the job controls, each in a function of its own so that no
other writer can make them: ``abort_run`` ends a running job CANCELLED (only
the run's own report that it saw an abort request), and ``retry`` sends a
running job back to wait for its next attempt (only the run's own report that
it asked for one, on a service that allows retries): WORKING → REGISTERED with
``not_before`` set, its attempt kept in ``job_attempts`` first.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker.errors import InvalidTransitionError
from broker.models import moves as moves_sql
from broker.models.interfaces.job import Job
from broker.models.moves import Move, Transition
from broker.storage.tables import JobRow, JobTransitionRow, UTCDateTime

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
MOVE_COLUMNS = ("results", "detail", "worker", "attempts", "presumed_lost_at", "run_provenance")


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
    before it, whatever the clocks of the machines that reported them. Each
    job moved gets its history row (two for a job whose start, ``started_at``,
    and end are applied together: its WORKING step is recorded too).
    """
    if not moves:
        return 0
    columns = sorted({name for move in moves for name in move.columns})
    unknown = set(columns) - set(MOVE_COLUMNS)
    if unknown:
        raise ValueError(f"a move cannot set {', '.join(sorted(unknown))}")
    # A second move of one job to the same status is always refused (no status
    # precedes itself): dropping it here keeps one history row per job moved.
    unique = list({move.job_id: move for move in reversed(moves)}.values())[::-1]
    connection = session.connection()
    dialect = connection.dialect.name
    rule = _rule(dialect, new, tuple(columns))
    if dialect == "postgresql":
        return moves_sql.at_once(connection, rule, unique)
    return moves_sql.each(connection, rule, unique)


@functools.lru_cache(maxsize=64)
def _rule(dialect: str, new: Status, columns: tuple[str, ...]) -> moves_sql.Rule:
    """The one rule object of these moves, whose statements ``moves`` builds once."""
    return moves_sql.Rule(
        new=new,
        columns=columns,
        leaving=status_in(PREDECESSORS[new]),
        assign=lambda source: _assignments(dialect, new, source, columns),
        allowed=lambda source: _allowed(new, source),
        at_column=TIMESTAMP_COLUMN[new],
    )


def _assignments(
    dialect: str, new: Status, source: Mapping[str, Any], columns: Sequence[str]
) -> dict[str, Any]:
    """The SET clause of a move to ``new``: the one place its columns are computed."""
    at = source["at"]
    values: dict[str, Any] = {name: source[name] for name in columns}
    values["status"] = new.value
    values["version"] = JobRow.version + 1
    # A job that moved was necessarily published: take it out of the outbox.
    values["published_at"] = sa.func.coalesce(JobRow.published_at, at)
    if new is Status.WORKING:
        values["date_started"] = _later(dialect, at, JobRow.date_submitted)
    else:
        start = sa.func.coalesce(JobRow.date_started, source["started_at"])
        values["date_started"] = start
        values[TIMESTAMP_COLUMN[new]] = _later(
            dialect, at, sa.func.coalesce(start, JobRow.date_submitted)
        )
    return values


def _allowed(new: Status, source: Mapping[str, Any]) -> list[sa.ColumnElement[bool]]:
    """The compare-and-set: a job still before ``new``, not held by a later attempt.

    A start is also refused when it reports a take of the job's claim that
    has been given back since (``release``): the mirror's copy of a claim an
    HTTP caller took and gave back must not start the job again.
    """
    attempt = source["attempt"]
    allowed = [status_in(PREDECESSORS[new]), sa.or_(attempt.is_(None), JobRow.attempts <= attempt)]
    if new is Status.WORKING:
        allowed.append(_not_given_back(source["take"]))
    return allowed


def _not_given_back(take: Any) -> sa.ColumnElement[bool]:
    """A report of ``take`` of the job's claim comes after the last take given back."""
    return sa.or_(take.is_(None), JobRow.released_take.is_(None), JobRow.released_take < take)


def record(session: Session, transitions: Sequence[Transition]) -> None:
    """Append history rows for jobs that moved, in the caller's transaction.

    The one writer of ``job_transitions`` besides ``advance``'s own statement:
    a move calls it with exactly the jobs its compare-and-set moved (see
    ``move_each``), before it commits.
    """
    if not transitions:
        return
    session.connection().execute(
        sa.insert(JobTransitionRow),
        [
            {
                "job_id": t.job_id,
                "from_status": t.from_status.value,
                "to_status": t.to_status.value,
                "at": t.at,
                "by": t.by,
                "attempt": t.attempt,
                "detail": t.detail,
            }
            for t in transitions
        ],
    )


def move_each(
    session: Session,
    statement: sa.Update,
    parameters: Sequence[Mapping[str, Any]],
    moves: Sequence[Move],
    from_status: Status,
    to_status: Status,
    at_column: Any = None,
    attempt: int | None = None,
) -> int:
    """Run a compare-and-set UPDATE once per move, recording each job it moved.

    For moves whose WHERE fixes the status they leave (``from_status``), so
    that the UPDATE's own ``RETURNING`` says which jobs moved. ``parameters``
    are the statement's, one set per move. The history row's time is
    ``at_column`` as the move set it (the time the job's row records), or the
    move's ``at`` for a move that records no time on the job; its detail is
    the move's ``columns["detail"]``. For rare moves (a release, a late
    outcome, a restart): one round trip per job. ``attempt`` names the attempt
    that moved when the move itself resets the job's count (a release).
    """
    connection = session.connection()
    returning = statement.returning(
        JobRow.id, JobRow.attempts, at_column if at_column is not None else sa.null()
    )
    moved = []
    for move, values in zip(moves, parameters, strict=True):
        row = connection.execute(returning, values).first()
        if row is None:
            continue
        at = row[2] if at_column is not None else move.at
        detail = move.columns.get("detail")
        number = attempt if attempt is not None else row[1]
        moved.append(Transition(row[0], from_status, to_status, at, move.by, number, detail))
    record(session, moved)
    return len(moved)


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
    return _end_attempt(
        session,
        moves,
        Status.ERROR,
        new,
        JobRow.status == Status.ERROR.value,
        JobRow.presumed_lost_at.is_not(None),
    )


def release(session: Session, moves: Sequence[Move]) -> int:
    """Give a claimed job back: WORKING → REGISTERED, by its claim's holder only.

    The one move backwards, and only in its safe form: the first attempt, held
    by the worker named in the move (``columns["worker"]``), which gives it up
    (a long-polling HTTP claimer that went away before it got the job, or a
    TopChef client that sets its job REGISTERED again); results it had kept on
    the job go with it. A job anyone else holds, or that a later attempt runs,
    is left alone. The job keeps the number of the take given back
    (``Move.take``): the gateway moves the job itself and the mirror copies
    the move later, so a copy of this release, or of the start of the take
    it gives back, that arrives after the job was taken again moves nothing.
    """
    if not moves:
        return 0
    take = sa.bindparam("r_take", type_=sa.Integer())
    statement = (
        sa.update(JobRow)
        .where(JobRow.id == sa.bindparam("r_id"))
        .where(JobRow.status == Status.WORKING.value)
        .where(JobRow.worker == sa.bindparam("r_worker"))
        .where(JobRow.attempts == 1)
        .where(_not_given_back(take))
        .values(
            status=Status.REGISTERED.value,
            released_take=sa.func.coalesce(take, JobRow.released_take),
            worker=None,
            attempts=0,
            date_started=None,
            results=None,
            progress=None,
            progress_message=None,
            run_provenance=None,
            version=JobRow.version + 1,
        )
        .execution_options(synchronize_session=False)
    )
    rows = [
        {"r_id": move.job_id, "r_worker": move.columns.get("worker"), "r_take": move.take}
        for move in moves
    ]
    return move_each(session, statement, rows, moves, Status.WORKING, Status.REGISTERED, attempt=1)


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
    return _end_attempt(
        session, moves, Status.WORKING, Status.CANCELLED, JobRow.status == Status.WORKING.value
    )


def _end_attempt(
    session: Session,
    moves: Sequence[Move],
    from_status: Status,
    new: Status,
    *where: sa.ColumnElement[bool],
) -> int:
    """End each move's own attempt with its results and detail, where ``where`` still holds.

    What a presumed loss corrected and an aborted run have in common: only
    the reporting attempt ends (``attempts`` equal to it), and the end is
    stamped no earlier than the run's start.
    """
    dialect = session.get_bind().dialect.name
    at = sa.bindparam("e_at", type_=UTCDateTime())
    statement = (
        sa.update(JobRow)
        .where(JobRow.id == sa.bindparam("e_id"))
        .where(*where)
        .where(JobRow.attempts == sa.bindparam("e_attempt"))
        .values(
            status=new.value,
            results=sa.bindparam("e_results"),
            detail=sa.bindparam("e_detail"),
            date_finished=_later(
                dialect, at, sa.func.coalesce(JobRow.date_started, JobRow.date_submitted)
            ),
            version=JobRow.version + 1,
        )
        .execution_options(synchronize_session=False)
    )
    rows = [
        {
            "e_id": move.job_id,
            "e_at": move.at,
            "e_attempt": move.attempt,
            "e_results": move.columns.get("results"),
            "e_detail": move.columns.get("detail"),
        }
        for move in moves
    ]
    return move_each(session, statement, rows, moves, from_status, new, JobRow.date_finished)


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
            run_provenance=None,
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
    return move_each(session, statement, rows, moves, Status.WORKING, Status.REGISTERED)


def held_until_a_time() -> sa.ColumnElement[bool]:
    """A REGISTERED job waiting unpublished for its ``not_before``: a producer's, or a retry's.

    The rows of the outbox's partial index on ``not_before``. Beat publishes
    those whose time has come (``not_before <= now``); status counts the rest
    as not before a later time.
    """
    return sa.and_(
        JobRow.published_at.is_(None),
        JobRow.not_before.is_not(None),
        JobRow.status == Status.REGISTERED.value,
    )


def not_before_start(dialect: str, at: Any, start: Any) -> sa.ColumnElement[Any]:
    """``at``, or ``start`` if that is later: an end is never stamped before its start.

    For the attempts kept beside a job (``broker.models.attempts``), whose
    ends are stamped by the same rule as the job's own.
    """
    return _later(dialect, at, sa.func.coalesce(start, at))
