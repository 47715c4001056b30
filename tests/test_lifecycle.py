"""The lifecycle's compare-and-sets in SQL, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker.models import attempts, lifecycle
from broker.models.lifecycle import Status
from broker.models.moves import Move
from broker.models.service import Service
from broker.storage.tables import JobRow, JobTransitionRow, database_now

SCHEMA = {"type": "object"}


@pytest.fixture
def job(session: Session) -> JobRow:
    service = Service.new("oven", "", SCHEMA, SCHEMA, session)
    row = service.new_job({})._row
    session.flush()
    return row


def _reload(session: Session, row: JobRow) -> JobRow:
    session.expire(row)
    return row


def test_times_never_run_backwards_whatever_the_reporting_clocks(session, job):
    submitted = job.date_submitted
    early = submitted - timedelta(seconds=30)  # a report stamped before the job existed
    lifecycle.advance(
        session, Status.WORKING, [Move(job.id, early, {"worker": "w", "attempts": 1})]
    )
    lifecycle.advance(session, Status.COMPLETED, [Move(job.id, early, {"results": {}}, attempt=1)])
    row = _reload(session, job)
    assert row.status == "COMPLETED"
    assert row.date_submitted <= row.date_started <= row.date_finished
    assert row.date_started == submitted


def test_a_start_and_end_reported_together_record_both_times(session, job):
    start = job.date_submitted + timedelta(seconds=2)
    end = start + timedelta(seconds=5)
    move = Move(job.id, end, {"results": {}, "attempts": 1}, started_at=start, attempt=1)
    assert lifecycle.advance(session, Status.COMPLETED, [move]) == 1
    row = _reload(session, job)
    assert (row.date_started, row.date_finished) == (start, end)


def test_an_earlier_attempt_never_moves_a_job_a_later_one_holds(session, job):
    now = database_now(session)
    lifecycle.advance(session, Status.WORKING, [Move(job.id, now, {"attempts": 2})])
    stale = Move(job.id, now, {"results": {"from": 1}}, attempt=1)
    assert lifecycle.advance(session, Status.COMPLETED, [stale]) == 0
    current = Move(job.id, now, {"results": {"from": 2}}, attempt=2)
    assert lifecycle.advance(session, Status.COMPLETED, [current]) == 1
    assert _reload(session, job).results == {"from": 2}


def test_only_a_presumed_loss_of_the_same_attempt_is_corrected(session, job):
    now = database_now(session)
    lifecycle.advance(session, Status.WORKING, [Move(job.id, now, {"attempts": 1})])
    lost = {"detail": "worker lost", "presumed_lost_at": now}
    lifecycle.advance(session, Status.ERROR, [Move(job.id, now, lost, attempt=1)])
    late = Move(job.id, now + timedelta(seconds=9), {"results": {"x": 1}, "detail": "late"})
    other_attempt = Move(late.job_id, late.at, late.columns, attempt=2)
    assert lifecycle.correct_presumed_loss(session, Status.COMPLETED, [other_attempt]) == 0
    same_attempt = Move(late.job_id, late.at, late.columns, attempt=1)
    assert lifecycle.correct_presumed_loss(session, Status.COMPLETED, [same_attempt]) == 1
    row = _reload(session, job)
    assert (row.status, row.results, row.detail) == ("COMPLETED", {"x": 1}, "late")
    # COMPLETED is a fact, not a presumption: nothing corrects it again.
    assert lifecycle.correct_presumed_loss(session, Status.ERROR, [same_attempt]) == 0


def test_a_real_error_is_never_corrected(session, job):
    now = database_now(session)
    lifecycle.advance(session, Status.ERROR, [Move(job.id, now, {"detail": "boom"}, attempt=1)])
    late = Move(job.id, now, {"results": {}}, attempt=0)
    assert lifecycle.correct_presumed_loss(session, Status.COMPLETED, [late]) == 0
    assert _reload(session, job).status == "ERROR"


def test_only_the_holder_releases_a_first_attempt(session, job):
    now = database_now(session)
    lifecycle.advance(
        session, Status.WORKING, [Move(job.id, now, {"worker": "http:a", "attempts": 1})]
    )
    assert lifecycle.release(session, [Move(job.id, now, {"worker": "http:b"})]) == 0
    assert lifecycle.release(session, [Move(job.id, now, {"worker": "http:a"})]) == 1
    row = _reload(session, job)
    assert (row.status, row.worker, row.attempts, row.date_started) == ("REGISTERED", None, 0, None)


def test_reports_of_a_take_given_back_move_nothing_once_it_is(session, job):
    """The gateway moves a job itself; the mirror's copies of older takes come after."""
    now = database_now(session)
    holder = {"worker": "http:a", "attempts": 1}

    def start(take: int) -> int:
        return lifecycle.advance(session, Status.WORKING, [Move(job.id, now, holder, take=take)])

    def give_back(take: int) -> int:
        return lifecycle.release(session, [Move(job.id, now, {"worker": "http:a"}, take=take)])

    assert start(1) == 1
    assert give_back(1) == 1
    assert _reload(session, job).released_take == 1
    assert start(1) == 0  # the copy of the start of the take given back
    assert give_back(1) == 0  # and of its release: the job is REGISTERED already
    assert start(2) == 1  # taken again
    assert give_back(1) == 0  # an old release never ends the take that runs now
    assert _reload(session, job).status == "WORKING"
    history = session.scalars(
        sa.select(JobTransitionRow.to_status)
        .where(JobTransitionRow.job_id == job.id)
        .order_by(JobTransitionRow.id)
    ).all()
    assert history == ["WORKING", "REGISTERED", "WORKING"]


def test_a_superseded_attempt_is_kept_and_its_late_outcome_stored_with_it(session, job):
    now = database_now(session)
    lifecycle.advance(session, Status.WORKING, [Move(job.id, now, {"worker": "a", "attempts": 1})])
    attempts.restart(session, [attempts.Restart(job.id, 2, "b", now + timedelta(seconds=1))])
    row = _reload(session, job)
    assert (row.attempts, row.worker) == (2, "b")
    late = attempts.LateOutcome(job.id, 1, Status.COMPLETED, {"x": 1}, "late", "a", now)
    assert attempts.keep_late(session, [late]) == 1
    assert attempts.keep_late(session, [late]) == 1  # idempotent: the same row, updated
    [kept] = attempts.of_job(session, job.id)
    assert (kept.attempt, kept.worker, kept.status, kept.results) == (1, "a", "COMPLETED", {"x": 1})
    # The current attempt's own outcome is never taken for a superseded one.
    current = attempts.LateOutcome(job.id, 2, Status.COMPLETED, {}, None, "b", now)
    assert attempts.keep_late(session, [current]) == 0
