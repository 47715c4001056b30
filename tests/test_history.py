"""Every move writes exactly one history row per job moved, and none when refused.

On SQLite and PostgreSQL: ``advance`` (one statement per batch on PostgreSQL),
``correct_presumed_loss``, ``release``, ``attempts.restart`` and the model's
own status setter; then the history and provenance as read back.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from support import wait_for

from broker import actors
from broker.contract import schema_fingerprint
from broker.errors import JobWithUUIDNotFound
from broker.models import attempts, history, lifecycle
from broker.models.job import Job
from broker.models.lifecycle import Status
from broker.models.moves import Move
from broker.models.service import Service
from broker.storage.tables import (
    JobRow,
    JobTransitionRow,
    RunProvenanceRow,
    database_now,
    open_session,
)

SCHEMA = {"type": "object"}


@pytest.fixture
def jobs(session: Session) -> list[uuid.UUID]:
    service = Service.new("oven", "", SCHEMA, {"type": "object", "title": "r"}, session)
    ids = [service.new_job({"n": n}).id for n in range(5)]
    session.flush()
    return ids


def rows(session: Session, job_id: uuid.UUID | None = None) -> list[tuple[object, ...]]:
    query = sa.select(
        JobTransitionRow.job_id,
        JobTransitionRow.from_status,
        JobTransitionRow.to_status,
        JobTransitionRow.by,
        JobTransitionRow.attempt,
        JobTransitionRow.detail,
    ).order_by(JobTransitionRow.id)
    if job_id is not None:
        query = query.where(JobTransitionRow.job_id == job_id)
    return [tuple(row) for row in session.execute(query)]


def start(session: Session, job_ids: list[uuid.UUID], worker: str = "lab:1") -> int:
    now = database_now(session)
    moves = [Move(j, now, {"worker": worker, "attempts": 1}, by=worker) for j in job_ids]
    return lifecycle.advance(session, Status.WORKING, moves)


def test_advance_writes_one_row_per_job_moved_and_none_for_those_refused(session, jobs):
    assert start(session, jobs[:3]) == 3
    # Moved already (WORKING), or repeated within the batch: refused, no row.
    assert start(session, [jobs[0], jobs[3], jobs[3]]) == 1
    now = database_now(session)
    done = [Move(j, now, {"results": {}, "attempts": 1}, attempt=1, by="lab:1") for j in jobs[:2]]
    stale = Move(jobs[2], now, {"results": {}}, attempt=0, by="lab:0")  # an earlier attempt
    assert lifecycle.advance(session, Status.COMPLETED, [*done, stale]) == 2
    cancel = [Move(j, now, {"detail": "cancelled before it ran"}, by="ann@pc:7") for j in jobs]
    assert lifecycle.advance(session, Status.CANCELLED, cancel) == 1  # only jobs[4] is REGISTERED

    # Each job's rows in the order it moved (jobs of one batch are written in id order).
    assert {j: rows(session, j) for j in jobs} == {
        jobs[0]: [
            (jobs[0], "REGISTERED", "WORKING", "lab:1", 1, None),
            (jobs[0], "WORKING", "COMPLETED", "lab:1", 1, None),
        ],
        jobs[1]: [
            (jobs[1], "REGISTERED", "WORKING", "lab:1", 1, None),
            (jobs[1], "WORKING", "COMPLETED", "lab:1", 1, None),
        ],
        jobs[2]: [(jobs[2], "REGISTERED", "WORKING", "lab:1", 1, None)],
        jobs[3]: [(jobs[3], "REGISTERED", "WORKING", "lab:1", 1, None)],
        jobs[4]: [(jobs[4], "REGISTERED", "CANCELLED", "ann@pc:7", 0, "cancelled before it ran")],
    }


def test_a_row_records_the_time_the_job_records(session, jobs):
    submitted = session.get(JobRow, jobs[0]).date_submitted
    early = submitted - timedelta(seconds=30)  # a clock behind the database's
    lifecycle.advance(session, Status.WORKING, [Move(jobs[0], early, {"attempts": 1}, by="w")])
    later = submitted + timedelta(seconds=5)
    lifecycle.advance(session, Status.ERROR, [Move(jobs[0], later, {"detail": "boom"}, by="w")])
    job = session.get(JobRow, jobs[0])
    session.refresh(job)
    times = [e.at for e in history.of_job(session, jobs[0])]
    assert times == [job.date_submitted, job.date_started, job.date_finished]


def test_a_start_and_end_applied_together_record_both_steps(session, jobs):
    now = database_now(session)
    begun, ended = now + timedelta(seconds=1), now + timedelta(seconds=3)
    together = Move(
        jobs[0], ended, {"results": {}, "attempts": 1}, started_at=begun, attempt=1, by="lab:2"
    )
    alone = Move(jobs[1], ended, {"results": {}, "attempts": 1}, attempt=1, by="lab:2")
    assert lifecycle.advance(session, Status.COMPLETED, [together, alone]) == 2
    assert rows(session, jobs[0]) == [
        (jobs[0], "REGISTERED", "WORKING", "lab:2", 1, None),
        (jobs[0], "WORKING", "COMPLETED", "lab:2", 1, None),
    ]
    assert [e.at for e in history.of_job(session, jobs[0])][1:] == [begun, ended]
    # Without a start time, a job that ended before it was seen running moved once.
    assert rows(session, jobs[1]) == [(jobs[1], "REGISTERED", "COMPLETED", "lab:2", 1, None)]


def test_correct_presumed_loss_records_its_correction_only(session, jobs):
    start(session, jobs[:2])
    now = database_now(session)
    lost = {"detail": "worker lost", "presumed_lost_at": now}
    failures = [Move(j, now, lost, attempt=1, by=actors.BEAT) for j in jobs[:2]]
    assert lifecycle.advance(session, Status.ERROR, failures) == 2
    late = Move(jobs[0], now, {"results": {"x": 1}, "detail": "late"}, attempt=1, by="lab:1")
    wrong_attempt = Move(jobs[1], now, {"results": {}}, attempt=2, by="lab:9")
    assert lifecycle.correct_presumed_loss(session, Status.COMPLETED, [late, wrong_attempt]) == 1
    assert lifecycle.correct_presumed_loss(session, Status.COMPLETED, [late]) == 0  # corrected
    assert rows(session, jobs[1])[-1] == (jobs[1], "WORKING", "ERROR", "beat", 1, "worker lost")
    assert rows(session, jobs[0])[1:] == [
        (jobs[0], "WORKING", "ERROR", "beat", 1, "worker lost"),
        (jobs[0], "ERROR", "COMPLETED", "lab:1", 1, "late"),
    ]


def test_release_records_the_claim_given_back_by_its_holder_only(session, jobs):
    start(session, jobs[:2], worker="http:rig-1")
    now = database_now(session)
    mine = Move(jobs[0], now, {"worker": "http:rig-1"}, by="http:rig-1")
    theirs = Move(jobs[1], now, {"worker": "http:rig-2"}, by="http:rig-2")
    assert lifecycle.release(session, [mine, theirs]) == 1
    assert rows(session, jobs[0])[-1] == (jobs[0], "WORKING", "REGISTERED", "http:rig-1", 1, None)
    assert len(rows(session, jobs[1])) == 1
    entry = history.of_job(session, jobs[0])[-1]
    assert entry.at == now


def test_a_restart_records_the_new_attempt_once(session, jobs):
    start(session, [jobs[0]])
    now = database_now(session)
    restart = attempts.Restart(jobs[0], 2, "lab:2", now, "digest-2")
    attempts.restart(session, [restart])
    attempts.restart(session, [restart])  # redelivered: attempt 2 runs already
    assert rows(session, jobs[0]) == [
        (jobs[0], "REGISTERED", "WORKING", "lab:1", 1, None),
        (
            jobs[0],
            "WORKING",
            "WORKING",
            "lab:2",
            2,
            "attempt 2 started: attempt 1 was given up for lost",
        ),
    ]
    assert session.get(JobRow, jobs[0]).run_provenance == "digest-2"


def test_the_models_own_status_setter_records_its_move(session, jobs):
    job = Job(session.get(JobRow, jobs[0]))
    job.status = Status.WORKING
    job.status = Status.WORKING  # no move: no row
    session.flush()
    assert rows(session, jobs[0]) == [(jobs[0], "REGISTERED", "WORKING", actors.person(), 0, None)]


def test_history_starts_with_the_submission_read_from_the_job(session, jobs):
    start(session, [jobs[0]])
    entries = history.of_job(session, jobs[0])
    first = entries[0]
    assert (first.from_status, first.to_status, first.by) == (None, "REGISTERED", actors.person())
    assert [e.to_status for e in entries] == ["REGISTERED", "WORKING"]
    assert first.as_dict()["from"] is None
    with pytest.raises(JobWithUUIDNotFound):
        history.of_job(session, uuid.uuid4())


def test_history_is_in_the_order_the_moves_happened_not_the_order_rows_were_written(session, jobs):
    """Two writers (the gateway and the mirror) may record a job's moves out of order."""
    submitted = session.get(JobRow, jobs[0]).date_submitted
    at = [submitted + timedelta(milliseconds=ms) for ms in (10, 20, 30)]
    lifecycle.record(
        session,
        [
            lifecycle.Transition(jobs[0], Status.WORKING, Status.COMPLETED, at[2], "w", 1),
            lifecycle.Transition(jobs[0], Status.REGISTERED, Status.WORKING, at[0], "w", 1),
            lifecycle.Transition(jobs[0], Status.WORKING, Status.REGISTERED, at[1], "w", 1),
            # Two moves at one time: in the order they were recorded.
            lifecycle.Transition(jobs[0], Status.REGISTERED, Status.WORKING, at[1], "w", 1),
        ],
    )
    entries = history.of_job(session, jobs[0])
    assert [(e.at, e.to_status) for e in entries] == [
        (submitted, "REGISTERED"),
        (at[0], "WORKING"),
        (at[1], "REGISTERED"),
        (at[1], "WORKING"),
        (at[2], "COMPLETED"),
    ]


def test_provenance_names_the_submitter_the_schemas_and_the_run(session, jobs):
    session.add(
        RunProvenanceRow(
            digest="d1",
            worker="lab:1",
            module="workers.echo",
            code_version="0123abc",
            python="CPython 3.11.2",
            recorded_at=database_now(session),
        )
    )
    now = database_now(session)
    columns = {"worker": "lab:1", "attempts": 1, "run_provenance": "d1"}
    lifecycle.advance(session, Status.WORKING, [Move(jobs[0], now, columns, by="lab:1")])
    found = history.provenance(session, jobs[0])
    assert found == {
        "submitted_by": actors.person(),
        "schema_fingerprint": schema_fingerprint(SCHEMA, {"type": "object", "title": "r"}),
        "run": {
            "worker": "lab:1",
            "module": "workers.echo",
            "code_version": "0123abc",
            "python": "CPython 3.11.2",
        },
        "earlier_runs": {},
    }
    assert history.provenance(session, jobs[1])["run"] is None  # never ran


def test_the_fingerprint_is_the_same_whatever_the_key_order():
    one = schema_fingerprint(
        {"type": "object", "required": ["a"]}, {"title": "x", "type": "object"}
    )
    two = schema_fingerprint(
        {"required": ["a"], "type": "object"}, {"type": "object", "title": "x"}
    )
    assert one == two
    assert one != schema_fingerprint({"type": "object"}, {"type": "object"})


# SQLite has one writer at a time: there is no race to lose.
@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_writers_racing_on_one_job_leave_one_row(database_url, jobs, session):
    """The batch statement locks the job: the loser sees the winner's move and records none."""
    start(session, [jobs[0]])
    session.commit()
    first, second = open_session(database_url), open_session(database_url)
    now = database_now(first)
    done = Move(jobs[0], now, {"results": {}}, attempt=1, by="lab:1")
    lost = Move(jobs[0], now, {"detail": "worker lost"}, attempt=1, by=actors.BEAT)
    assert lifecycle.advance(first, Status.COMPLETED, [done]) == 1  # holds the row's lock
    moved: list[int] = []
    loser = threading.Thread(
        target=lambda: moved.append(lifecycle.advance(second, Status.ERROR, [lost]))
    )
    loser.start()
    wait_for(lambda: _waiting_for_a_lock(session), 10, "the second writer to wait for the lock")
    first.commit()
    loser.join(10)
    second.commit()
    first.close()
    second.close()
    assert moved == [0]
    assert [r[2] for r in rows(session, jobs[0])] == ["WORKING", "COMPLETED"]


def _waiting_for_a_lock(session: Session) -> bool:
    waiting = session.scalar(
        sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
    )
    session.rollback()
    return bool(waiting)


def test_an_abort_and_a_retry_record_their_moves_once(session, jobs):
    start(session, jobs[:2])
    now = database_now(session)
    aborted = Move(jobs[0], now, {"detail": "aborted while running"}, attempt=1, by="lab:1")
    assert lifecycle.abort_run(session, [aborted]) == 1
    assert lifecycle.abort_run(session, [aborted]) == 0  # redelivered: no second row
    due = now + timedelta(seconds=5)
    again = Move(jobs[1], now, {"not_before": due, "detail": "busy"}, attempt=1, by="lab:1")
    assert lifecycle.retry(session, [again]) == 1
    assert lifecycle.retry(session, [again]) == 0
    assert rows(session, jobs[0])[-1] == (
        jobs[0],
        "WORKING",
        "CANCELLED",
        "lab:1",
        1,
        "aborted while running",
    )
    assert rows(session, jobs[1])[1:] == [(jobs[1], "WORKING", "REGISTERED", "lab:1", 1, "busy")]
