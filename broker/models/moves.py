"""A job's move and its history row, and how a batch of moves goes into SQL, per database.

``Move`` and ``Transition`` are the values every writer of a job's status
hands to ``lifecycle``; they live here, below it, so that this module needs
nothing of ``lifecycle`` and the two import in one direction only.

The rule (which statuses a move leaves, what it sets, the compare-and-set)
is ``lifecycle``'s and arrives here as a ``Rule``; this module only decides
how to put it into SQL so that a history row is written exactly when a job
moved, in the statement (PostgreSQL) or transaction (SQLite) that moves it.

The state mirror applies thousands of moves a second, so each batch costs a
fixed number of statements whatever its size: on PostgreSQL one, on SQLite
(a file on this machine, where a statement is a function call) two or three
``executemany``. Those statements are built once per ``Rule``, with every
value a bound parameter: building one and computing its cache key took as
long as PostgreSQL took to run it.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from broker.models.interfaces.job import Job
from broker.storage.tables import JobRow, JobTransitionRow, UTCDateTime

Status = Job.JobStatus

#: The columns of a history row, in the order every writer of it fills them.
HISTORY_COLUMNS = ["job_id", "from_status", "to_status", "at", "by", "attempt", "detail"]

_REGISTERED = Status.REGISTERED.value
_WORKING = Status.WORKING.value


@dataclass(frozen=True, slots=True)
class Move:
    """One job's move to a new status, as its writer saw it happen.

    ``at`` is when the transition happened at its source (a worker's report is
    stamped by the broker when it was made, not when the mirror applies it).
    ``started_at`` also records the start, for a job whose WORKING report
    arrives together with its end. ``attempt`` is the attempt that reports: a
    job that a later attempt holds is never moved by an earlier one. ``by`` is
    who made the move (``broker.actors``), as the history records it.
    ``take`` numbers the claim's take that reports (``Claims.release``): a
    move to WORKING, or a release, of a take at or before the last one given
    back is stale.
    """

    job_id: uuid.UUID
    at: datetime
    columns: Mapping[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    attempt: int | None = None
    by: str | None = None
    take: int | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """One history row: a job that moved, as ``record`` writes it."""

    job_id: uuid.UUID
    from_status: Status
    to_status: Status
    at: datetime
    by: str | None
    attempt: int | None
    detail: str | None = None


@dataclass(frozen=True, eq=False)
class Rule:
    """The rule of moves to one status, from which their statements are built.

    ``assign`` and ``allowed`` build the SET clause and the compare-and-set
    from a source of each move's values (``at``, ``started_at``, ``attempt``,
    ``take`` and the ``columns``): bound parameters, or the columns of an ``unnest``.
    ``leaving`` is the condition on the status a job moves from. Compared by
    identity: the statements are cached per rule object, so a caller keeps one
    rule per status and columns.
    """

    new: Status
    columns: tuple[str, ...]
    leaving: sa.ColumnElement[bool]
    assign: Callable[[Mapping[str, Any]], dict[str, Any]]
    allowed: Callable[[Mapping[str, Any]], list[sa.ColumnElement[bool]]]
    #: The job's column that records when it reached ``new``.
    at_column: str


def at_once(connection: sa.Connection, rule: Rule, moves: Sequence[Move]) -> int:
    """PostgreSQL: the whole batch in one statement, its history rows included."""
    arrays: dict[str, list[Any]] = {
        "u_id": [m.job_id for m in moves],
        "u_at": [m.at for m in moves],
        "u_started_at": [m.started_at for m in moves],
        "u_attempt": [m.attempt for m in moves],
        "u_take": [m.take for m in moves],
        "u_by": [m.by for m in moves],
    }
    arrays.update({f"u_{name}": [m.columns.get(name) for m in moves] for name in rule.columns})
    arrays["u_ids"] = arrays["u_id"]
    return int(connection.execute(_unnested(rule), arrays).scalar_one())


@functools.lru_cache(maxsize=64)
def _unnested(rule: Rule) -> sa.Select[Any]:
    """The statement of ``at_once``: the moves arrive as arrays (``unnest``).

    The jobs are locked first, in id order, to read the status each one
    leaves; the UPDATE (whose WHERE is the compare-and-set) returns the rows
    it moved, and the history rows are inserted from those. A job whose start
    and end are applied together (``started_at``, from REGISTERED) gets its
    WORKING step recorded too.
    """
    columns, new = rule.columns, rule.new
    types: dict[str, Any] = {
        "id": sa.Uuid(),
        "at": UTCDateTime(),
        "started_at": UTCDateTime(),
        "attempt": sa.Integer(),
        "take": sa.Integer(),
        "by": sa.String(),
    }
    types.update({name: JobRow.__table__.c[name].type for name in columns})
    given = (
        sa.func.unnest(*(sa.bindparam(f"u_{name}", type_=ARRAY(types[name])) for name in types))
        .table_valued(*(sa.column(name, type_) for name, type_ in types.items()))
        .render_derived(name="given")
    )
    ids = sa.bindparam("u_ids", type_=ARRAY(sa.Uuid()))
    locked = (
        sa.select(JobRow.id, JobRow.status)
        .where(JobRow.id == sa.any_(ids), rule.leaving)
        .order_by(JobRow.id)
        .with_for_update()
        .cte("locked")
    )
    source = {column.name: column for column in given.c}
    detail = given.c.detail if "detail" in columns else sa.null()
    moved = (
        sa.update(JobRow)
        .where(JobRow.id == locked.c.id, JobRow.id == given.c.id, *rule.allowed(source))
        .values(rule.assign(source))
        .returning(
            JobRow.id.label("job_id"),
            locked.c.status.label("from_status"),
            JobRow.date_started.label("started"),
            getattr(JobRow, rule.at_column).label("at"),
            JobRow.attempts.label("attempt"),
            given.c.by.label("by"),
            given.c.started_at.label("started_at"),
            sa.cast(detail, sa.Text()).label("detail"),
        )
        .cte("moved")
    )
    started_here = sa.and_(
        moved.c.from_status == sa.literal(_REGISTERED), moved.c.started_at.is_not(None)
    )
    rows: sa.Select[Any] = sa.select(
        moved.c.job_id,
        sa.case((started_here, sa.literal(_WORKING)), else_=moved.c.from_status),
        sa.literal(new.value),
        moved.c.at,
        moved.c.by,
        moved.c.attempt,
        moved.c.detail,
        sa.literal(1).label("step"),
    )
    if new is not Status.WORKING:
        steps = sa.select(
            moved.c.job_id,
            sa.literal(_REGISTERED),
            sa.literal(_WORKING),
            moved.c.started,
            moved.c.by,
            moved.c.attempt,
            sa.null(),
            sa.literal(0).label("step"),
        ).where(started_here)
        rows = sa.select(sa.union_all(steps, rows).subquery())
    history = rows.subquery()
    # Ordered, so that a job's WORKING step gets the lower id of its two rows.
    ordered = sa.select(*list(history.c)[:7]).order_by(history.c[0], history.c.step)
    recorded = sa.insert(JobTransitionRow).from_select(HISTORY_COLUMNS, ordered).cte("recorded")
    count = sa.select(sa.func.count()).select_from(moved).add_cte(recorded)
    return count


def each(connection: sa.Connection, rule: Rule, moves: Sequence[Move]) -> int:
    """SQLite: the history rows, then the moves, each an ``executemany`` of one statement.

    SQLite has one writer at a time: once the first INSERT runs, this
    transaction holds the write lock, so the UPDATE that follows sees the very
    rows the INSERTs read, and all apply the same compare-and-set to them.
    """
    rows = []
    for move in moves:
        row = {
            "v_id": move.job_id,
            "v_at": move.at,
            "v_started_at": move.started_at,
            "v_attempt": move.attempt,
            "v_take": move.take,
            "v_by": move.by,
        }
        row.update({f"v_{name}": move.columns.get(name) for name in rule.columns})
        rows.append(row)
    *recording, update = _one_by_one(rule)
    for statement in recording:
        connection.execute(statement, rows)
    result = connection.execute(update, rows)
    return result.rowcount if result.rowcount >= 0 else 0


@functools.lru_cache(maxsize=64)
def _one_by_one(rule: Rule) -> tuple[sa.Executable, ...]:
    """The statements of ``each``: its history INSERTs, then its UPDATE."""
    columns, new = rule.columns, rule.new
    kinds: dict[str, Any] = {
        "at": UTCDateTime(),
        "started_at": UTCDateTime(),
        "attempt": sa.Integer(),
        "take": sa.Integer(),
    }
    names = ["at", "started_at", "attempt", "take", *columns]
    source = {name: sa.bindparam(f"v_{name}", type_=kinds.get(name)) for name in names}
    job = JobRow.id == sa.bindparam("v_id", type_=sa.Uuid())
    allowed = rule.allowed(source)
    values = rule.assign(source)
    by = sa.bindparam("v_by", type_=sa.String())
    attempt = values.get("attempts", JobRow.attempts)
    started = sa.and_(JobRow.status == _REGISTERED, source["started_at"].is_not(None))
    statements = []
    if new is not Status.WORKING:
        steps = sa.select(
            JobRow.id,
            JobRow.status,
            sa.literal(_WORKING),
            values["date_started"],
            by,
            attempt,
            sa.null(),
        ).where(job, started, *allowed)
        statements.append(sa.insert(JobTransitionRow).from_select(HISTORY_COLUMNS, steps))
    transitions = sa.select(
        JobRow.id,
        sa.case((started, _WORKING), else_=JobRow.status),
        sa.literal(new.value),
        values[rule.at_column],
        by,
        attempt,
        values.get("detail", sa.null()),
    ).where(job, *allowed)
    statements.append(sa.insert(JobTransitionRow).from_select(HISTORY_COLUMNS, transitions))
    update = (
        sa.update(JobRow)
        .where(job, *allowed)
        .values(values)
        .execution_options(synchronize_session=False)
    )
    return (*statements, update)
