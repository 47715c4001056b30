"""No outcome is dropped: a worker frozen past its lease still has its run recorded.

A laptop that sleeps, a network cut or a long pause looks to beat like a dead
worker. Here a real worker is frozen with SIGSTOP while it runs a job, beat
gives the job up, and the worker is woken again to finish the run it had begun.
"""

from __future__ import annotations

import signal

import lab
import pytest
from support import wait_for

from broker.messaging import keys
from broker.models import attempts
from broker.storage.tables import JobRow, open_session

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def _frozen_mid_run(stack, policy: str):
    """A HELD job running on a worker that is then frozen until its lease has lapsed."""
    worker, tag, job = stack.running_held_job(policy)
    worker.signal(signal.SIGSTOP)
    wait_for(lambda: not stack.redis.exists(keys.lease(job)), 30, "the lease to lapse")
    return worker, tag, job


def _tick_until(stack, condition, what, timeout=30.0):
    return wait_for(lambda: stack.tick() and condition(), timeout, what)


def test_under_fail_the_real_outcome_replaces_the_presumed_loss(stack):
    worker, tag, job = _frozen_mid_run(stack, "fail")
    _tick_until(stack, lambda: stack.status(job) == "ERROR", "beat to give the job up")
    assert "worker lost" in stack.job(job)["detail"]

    stack.release(tag)
    worker.signal(signal.SIGCONT)
    finished = stack.wait_status(job, "COMPLETED")

    assert finished["results"] == {"tag": tag}
    assert "presumed lost at" in finished["detail"]
    assert stack.runs(tag) == 1  # nothing ran again
    assert "reported all the same" in worker.log()
    with open_session(stack.settings.database_url) as session:
        row = session.get(JobRow, job)
        assert row.presumed_lost_at <= row.date_finished
        assert row.attempts == 1


def test_under_requeue_a_superseded_attempt_keeps_its_outcome_beside_the_job(stack):
    frozen, tag, job = _frozen_mid_run(stack, "requeue")
    _tick_until(stack, lambda: stack.claims.state(job) == "requeued", "beat to re-queue the job")
    second = stack.worker()
    wait_for(lambda: stack.runs(tag) == 2, 30, "the second attempt to start")
    wait_for(lambda: stack.job(job)["attempts"] == 2, 30, "SQL to show attempt 2")

    def first_attempt():
        with open_session(stack.settings.database_url) as session:
            rows = attempts.of_job(session, job)
            return rows and rows[0].status and rows[0]

    # Attempt 1 reports while attempt 2 holds the job. Both wait for the same
    # release: were attempt 2 to end first, nothing would hold the job any more.
    second.signal(signal.SIGSTOP)
    stack.release(tag)
    frozen.signal(signal.SIGCONT)
    kept = wait_for(first_attempt, 30, "attempt 1's late outcome to be kept")
    second.signal(signal.SIGCONT)
    finished = stack.wait_status(job, "COMPLETED")
    assert (finished["attempts"], finished["results"], finished["detail"]) == (
        2,
        {"tag": tag},
        None,
    )
    assert (kept.attempt, kept.status, kept.results) == (1, "COMPLETED", {"tag": tag})
    assert "later attempt" in kept.detail
    assert kept.superseded_at is not None


def test_under_requeue_an_attempt_that_wakes_before_the_next_starts_is_the_outcome(stack):
    frozen, tag, job = _frozen_mid_run(stack, "requeue")
    _tick_until(stack, lambda: stack.claims.state(job) == "requeued", "beat to re-queue the job")
    stack.release(tag)
    frozen.signal(signal.SIGCONT)
    finished = stack.wait_status(job, "COMPLETED")
    assert (finished["attempts"], finished["results"]) == (1, {"tag": tag})
    assert "presumed lost at" in finished["detail"]
    # The re-queued message arrives at a worker and is refused: the job ran once.
    wait_for(lambda: stack.queue_length(lab.HELD) == 0, 30, "the re-queued message to be taken")
    assert stack.runs(tag) == 1
