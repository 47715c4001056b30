"""Aborts and retries through real worker processes, the mirror and beat's ticks."""

from __future__ import annotations

import signal
import threading
import uuid
from datetime import UTC, datetime, timedelta

import lab_controls as lc
import pytest
import sqlalchemy as sa
from support import wait_for

from broker.errors import JobNotAbortableError
from broker.mirror.process import Mirror
from broker.storage.tables import JobAttemptRow, open_session

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]
pytest_plugins = ["gateway_support"]  # the api fixture


def _services(stack, **flaky_options):
    create = stack.producer.create_service
    for name in (lc.ABORTABLE, lc.ABORT_UNCAUGHT, lc.SAFE_STATE, lc.DEAF):
        create(name, "aborts", lc.TAGGED_SCHEMA, lc.COUNT_RESULTS)
    retries = {"retries": True, "max_attempts": 3, **flaky_options}
    create(lc.FLAKY, "retries", lc.TAGGED_SCHEMA, lc.COUNT_RESULTS, **retries)
    create(
        lc.FLAKY_TYPED,
        "retries on TimeoutError",
        lc.TAGGED_SCHEMA,
        lc.COUNT_RESULTS,
        retries=True,
        retry_on=["TimeoutError"],
        retry_backoff=0.1,
        max_attempts=3,
    )
    # The default: the 'fail' policy and no retries.
    create(lc.FLAKY_STRICT, "no retries", lc.TAGGED_SCHEMA, lc.COUNT_RESULTS)


def _running(stack, service, **parameters):
    tag = uuid.uuid4().hex
    job = stack.producer.submit(service, {"tag": tag, **parameters})
    stack.wait_status(job, "WORKING")
    wait_for(lambda: stack.runs(tag) == 1, 30, "the handler to start")
    return tag, job


def _ticking(stack, job, status, timeout=30.0):
    """Beat ticks (what ``topchef beat`` runs) until the job is ``status``."""
    return wait_for(
        lambda: stack.tick() is not None and stack.status(job) == status and stack.job(job),
        timeout,
        f"job {job} to be {status}",
    )


def _attempts(stack, job):
    with open_session(stack.settings.database_url) as session:
        rows = session.scalars(
            sa.select(JobAttemptRow)
            .where(JobAttemptRow.job_id == job)
            .order_by(JobAttemptRow.attempt)
        ).all()
        return [(row.attempt, row.status, row.detail) for row in rows]


# -- abort --------------------------------------------------------------------------


def test_abort_of_a_running_job_ends_it_cancelled_with_its_partial_results(stack):
    _services(stack)
    stack.start_mirror()
    stack.worker(module="lab_controls")
    tag, job = _running(stack, lc.ABORTABLE)

    assert stack.producer.abort(job, reason="sample is drifting", by="alice@lab:1") == "requested"
    assert stack.producer.abort(job, reason="again") == "already"
    ended = stack.wait_status(job, "CANCELLED")

    assert stack.redis.get(lc.safe_key(tag)) == b"parked"
    # Partial results are kept as returned, though the schema wants ``total`` too.
    assert set(ended["results"]) == {"done"}
    assert ended["results"]["done"] > 0
    assert ended["detail"].startswith("aborted while running at ")
    assert ended["detail"].endswith(" by alice@lab:1: sample is drifting")
    assert ended["date_finished"] >= ended["date_started"]
    assert stack.runs(tag) == 1
    with pytest.raises(JobNotAbortableError) as refused:
        stack.producer.abort(job)
    assert refused.value.status == "CANCELLED"


def test_an_abort_the_handler_lets_through_ends_it_cancelled_without_results(stack):
    _services(stack)
    stack.start_mirror()
    stack.worker(module="lab_controls")
    _tag, job = _running(stack, lc.ABORT_UNCAUGHT)

    stack.producer.abort(job)
    ended = stack.wait_status(job, "CANCELLED")

    assert ended["results"] is None
    assert "aborted while running" in ended["detail"]


def test_the_safe_state_callback_runs_once_when_the_handler_sees_the_abort(stack):
    _services(stack)
    stack.start_mirror()
    stack.worker(module="lab_controls")
    tag, job = _running(stack, lc.SAFE_STATE)

    stack.producer.abort(job, reason="door opened")
    ended = stack.wait_status(job, "CANCELLED")

    assert stack.redis.get(lc.safe_key(tag)) == b"1"
    assert ended["results"]["done"] > 0
    assert ended["detail"].endswith(": door opened")


def test_a_handler_that_never_checks_runs_to_its_end_and_the_request_is_noted(stack):
    _services(stack)
    stack.start_mirror()
    stack.worker(module="lab_controls")
    tag, job = _running(stack, lc.DEAF)

    stack.producer.abort(job, reason="too late")
    stack.release(tag)
    ended = stack.wait_status(job, "COMPLETED")

    assert ended["results"] == {"done": 1, "total": 1}
    assert "an abort was requested at " in ended["detail"]
    assert "never checked for it" in ended["detail"]


def test_abort_of_a_registered_job_is_a_cancel_and_of_a_finished_one_an_error(stack):
    _services(stack)
    stack.start_mirror()
    waiting = stack.producer.submit(lc.ABORTABLE, {"tag": "no worker yet"})

    assert stack.producer.abort(waiting, reason="wrong sample") == "cancelled"
    cancelled = stack.job(waiting)
    assert cancelled["status"] == "CANCELLED"
    assert "aborted before it ran" in cancelled["detail"]
    assert stack.claims.state(waiting) == "cancelled"

    stack.worker(module="lab_controls")
    tag = uuid.uuid4().hex
    done = stack.producer.submit(lc.DEAF, {"tag": tag})
    stack.release(tag)
    stack.wait_status(done, "COMPLETED")
    with pytest.raises(JobNotAbortableError) as refused:
        stack.producer.abort(done)
    assert (refused.value.job_id, refused.value.status) == (done, "COMPLETED")
    assert stack.runs(tag) == 1
    assert stack.runs("no worker yet") == 0


def test_an_abort_survives_a_mirror_restart(stack):
    _services(stack)
    stop = threading.Event()
    first = threading.Thread(target=Mirror(stack.settings, block_ms=50).run, args=(stop, 0.2))
    first.start()
    stack.worker(module="lab_controls")
    tag, job = _running(stack, lc.ABORTABLE)
    stop.set()
    first.join(10)

    stack.producer.abort(job, reason="mirror is down")
    wait_for(lambda: stack.claims.state(job) == "done", 30, "the aborted run to end in Redis")
    assert stack.status(job) == "WORKING"  # SQL learns of it when the mirror is back

    stack.start_mirror()
    ended = stack.wait_status(job, "CANCELLED")
    assert ended["detail"].endswith(": mirror is down")
    assert ended["results"]["done"] > 0
    assert stack.runs(tag) == 1


# -- retries ------------------------------------------------------------------------


def test_a_handler_that_asks_twice_for_a_retry_completes_on_its_third_attempt(stack, api):
    _services(stack)
    stack.start_mirror()
    stack.worker(module="lab_controls")
    tag = uuid.uuid4().hex
    job = stack.producer.submit(lc.FLAKY, {"tag": tag, "succeed_on": 3, "after": 0.2})

    ended = _ticking(stack, job, "COMPLETED")

    assert ended["attempts"] == 3
    assert ended["results"] == {"done": 3, "total": 3}
    assert stack.runs(tag) == 3
    kept = _attempts(stack, job)
    assert [(attempt, status) for attempt, status, _ in kept] == [(1, "ERROR"), (2, "ERROR")]
    assert all("Retry: instrument busy; retrying in 0.2 s" in detail for _, _, detail in kept)
    shown = api.job(str(job))["meta"]["earlier_attempts"]
    assert [(a["attempt"], a["status"]) for a in shown] == [(1, "ERROR"), (2, "ERROR")]
    for shown_attempt in shown:
        assert shown_attempt["worker"]
        started = datetime.fromisoformat(shown_attempt["date_started"])
        assert started <= datetime.fromisoformat(shown_attempt["date_finished"])


def test_retryable_exception_types_retry_with_backoff_until_max_attempts(stack):
    _services(stack)
    stack.start_mirror()
    stack.worker(module="lab_controls")
    tag = uuid.uuid4().hex
    job = stack.producer.submit(lc.FLAKY_TYPED, {"tag": tag, "succeed_on": 10})

    ended = _ticking(stack, job, "ERROR")

    assert ended["attempts"] == 3
    assert "TimeoutError: no answer from the stage" in ended["detail"]
    assert "gave up after 3 attempts" in ended["detail"]
    assert stack.runs(tag) == 3
    details = [detail for _, _, detail in _attempts(stack, job)]
    # The backoff doubles: 0.1 s, then 0.2 s.
    assert ["retrying in 0.1 s" in details[0], "retrying in 0.2 s" in details[1]] == [True, True]


def test_a_service_that_allows_no_retries_never_runs_a_job_again(stack):
    _services(stack)
    stack.start_mirror()
    stack.worker(module="lab_controls")
    tag = uuid.uuid4().hex
    job = stack.producer.submit(lc.FLAKY_STRICT, {"tag": tag, "succeed_on": 2})

    ended = stack.wait_status(job, "ERROR")
    for _ in range(5):
        stack.tick()

    assert "does not allow retries" in ended["detail"]
    assert stack.status(job) == "ERROR"
    assert stack.runs(tag) == 1
    assert ended["attempts"] == 1
    assert _attempts(stack, job) == []


def test_a_worker_killed_during_a_retry_backoff_loses_nothing(stack):
    _services(stack)
    stack.start_mirror()
    worker = stack.worker(module="lab_controls")
    tag = uuid.uuid4().hex
    job = stack.producer.submit(lc.FLAKY, {"tag": tag, "succeed_on": 2, "after": 2.0})
    wait_for(lambda: stack.job(job)["not_before"] is not None, 30, "the retry to be recorded")
    worker.kill()
    assert stack.status(job) == "REGISTERED"

    stack.worker(module="lab_controls")
    ended = _ticking(stack, job, "COMPLETED")

    assert ended["attempts"] == 2
    assert stack.runs(tag) == 2
    assert [attempt for attempt, _, _ in _attempts(stack, job)] == [1]


def test_a_job_waiting_for_its_retry_can_be_cancelled_and_never_runs_again(stack):
    _services(stack)
    stack.start_mirror()
    stack.worker(module="lab_controls")
    tag = uuid.uuid4().hex
    job = stack.producer.submit(lc.FLAKY, {"tag": tag, "succeed_on": 2, "after": 2.0})
    wait_for(lambda: stack.job(job)["not_before"] is not None, 30, "the retry to be recorded")

    assert stack.producer.abort(job) == "cancelled"
    due = datetime.fromisoformat(stack.job(job)["not_before"])
    wait_for(
        lambda: stack.tick() is not None and datetime.now(UTC) > due + timedelta(seconds=1),
        30,
        "the retry's time to pass, beat ticking",
    )

    assert stack.status(job) == "CANCELLED"
    assert stack.claims.state(job) == "cancelled"
    assert stack.runs(tag) == 1


def test_an_aborted_run_of_a_frozen_worker_presumed_lost_is_recorded_when_it_wakes(stack):
    _services(stack)
    stack.start_mirror()
    worker = stack.worker(module="lab_controls")
    tag, job = _running(stack, lc.ABORTABLE)
    worker.signal(signal.SIGSTOP)  # a laptop asleep mid-run
    stack.producer.abort(job, reason="asleep")
    _ticking(stack, job, "ERROR")  # its lease lapsed: presumed lost

    worker.signal(signal.SIGCONT)
    ended = stack.wait_status(job, "CANCELLED")

    assert "aborted while running" in ended["detail"]
    assert "presumed lost" in ended["detail"]
    assert ended["results"]["done"] >= 0
    assert stack.runs(tag) == 1
