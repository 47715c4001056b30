"""What beat and the mirror recover: dead workers, lost publishes, timeouts, mirror crashes."""

from __future__ import annotations

import uuid

import lab
import pytest
import sqlalchemy as sa
from support import wait_for

from broker.messaging import keys, priorities
from broker.models.service_list import ServiceList
from broker.storage.tables import JobRow, open_session

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def _held_job_killed_mid_run(stack, policy):
    """A HELD job running on a worker that is then killed with SIGKILL."""
    worker, tag, job = stack.running_held_job(policy)
    worker.kill()
    return tag, job


def _tick_until(stack, condition, what, timeout=30.0):
    """Run beat ticks (as ``topchef beat`` would) until ``condition`` holds."""
    return wait_for(lambda: stack.tick() and condition(), timeout, what)


def test_kill_9_under_fail_policy_ends_in_error_and_never_runs_again(stack):
    tag, job = _held_job_killed_mid_run(stack, "fail")
    stack.release(tag)
    survivor = stack.worker()
    _tick_until(stack, lambda: stack.status(job) == "ERROR", "the lost job to be failed")

    assert "worker lost" in stack.job(job)["detail"]
    # The survivor takes new work, but the lost job never runs again.
    other = stack.producer.submit(lab.HELD, {"tag": tag + "-next"})
    stack.release(tag + "-next")
    stack.producer.wait(other, timeout=60)
    assert stack.runs(tag) == 1
    assert stack.status(job) == "ERROR"
    survivor.stop()


def test_kill_9_under_requeue_policy_runs_again_and_completes(stack):
    tag, job = _held_job_killed_mid_run(stack, "requeue")
    stack.release(tag)
    stack.worker()
    _tick_until(stack, lambda: stack.status(job) == "COMPLETED", "the job to run again")

    assert stack.runs(tag) == 2
    assert stack.job(job)["attempts"] == 2
    assert stack.job(job)["results"] == {"tag": tag}


def test_a_job_that_kills_every_worker_stops_after_max_attempts(stack):
    stack.create_lab_services(held_policy="requeue")
    stack.start_mirror()
    tag = uuid.uuid4().hex
    job = stack.producer.submit(lab.HELD, {"tag": tag})
    for attempt in range(1, 4):
        worker = stack.worker()
        wait_for(lambda a=attempt: stack.runs(tag) == a, 60, f"attempt {attempt} to start")
        worker.kill()
        if attempt < 3:
            _tick_until(
                stack,
                lambda a=attempt: stack.claims.state(job) == "requeued",
                f"attempt {attempt} to be requeued",
            )
    _tick_until(stack, lambda: stack.status(job) == "ERROR", "the job to give up")
    assert "worker lost on each of 3 attempts" in stack.job(job)["detail"]
    assert stack.runs(tag) == 3


def test_outbox_job_committed_without_publish_is_published_by_beat_and_runs_once(stack):
    stack.create_lab_services()
    stack.start_mirror()
    tag = uuid.uuid4().hex
    # A plain session has no publisher: as if the producer died right after COMMIT.
    with open_session(stack.settings.database_url) as session:
        job = ServiceList(session).by_name(lab.HELD).new_job({"tag": tag}).id
        session.commit()
    assert stack.queue_length(lab.HELD) == 0
    stack.release(tag)
    stack.worker()

    _tick_until(stack, lambda: stack.status(job) == "COMPLETED", "beat to publish the job")
    stack.tick()  # a later tick publishes nothing more
    assert stack.runs(tag) == 1
    with open_session(stack.settings.database_url) as session:
        assert session.get(JobRow, job).published_at is not None


def test_service_whose_worker_stops_checking_in_times_out(stack):
    stack.create_lab_services(timeout=1.0)
    stack.start_mirror()
    beat = stack.process("beat", "--loglevel", "INFO")
    worker = stack.worker()
    stack.wait_available(lab.SQUARE)
    assert stack.service(lab.SQUARE).timed_out_at is None

    worker.kill()
    last = stack.service(lab.SQUARE).last_checked_in
    # Within timeout + one beat interval (plus the mirror's and the check's own latency).
    limit = 1.0 + stack.settings.beat_interval + 2.0
    wait_for(
        lambda: stack.service(lab.SQUARE).timed_out_at is not None, limit, "the service to time out"
    )
    service = stack.service(lab.SQUARE)
    assert not service.is_service_available
    assert (service.timed_out_at - last).total_seconds() >= 1.0
    beat.stop()


def test_two_beats_never_double_a_transition(stack):
    _tag, job = _held_job_killed_mid_run(stack, "requeue")
    wait_for(lambda: not stack.redis.exists(f"topchef:lease:{job}"), 30, "the lease to lapse")

    first, second = stack.tick(), stack.tick()
    assert (first.requeued, second.requeued) == ([job], [])


def test_mirror_killed_mid_run_catches_up_with_nothing_backwards(stack):
    stack.create_lab_services()
    mirror = stack.process("mirror", "--batch-size", "20")
    stack.worker("--concurrency", "4")
    stack.wait_available(lab.SQUARE)
    jobs = stack.producer.submit_many(lab.SQUARE, [{"x": i} for i in range(300)])
    wait_for(lambda: stack.count_jobs(status="COMPLETED") >= 20, 60, "some jobs to complete")
    mirror.kill()
    restarted = stack.process("mirror")
    results = stack.producer.wait_all(jobs, timeout=120)
    assert results == [{"square": i * i} for i in range(300)]
    with open_session(stack.settings.database_url) as session:
        statuses = session.execute(
            sa.select(JobRow.status, sa.func.count()).group_by(JobRow.status)
        ).all()
    assert dict(statuses) == {"COMPLETED": 300}
    restarted.stop()


def test_a_job_whose_message_vanished_is_sent_again_once_later_jobs_have_run(stack):
    """A worker killed between taking a message and recording it unacknowledged takes it along."""
    stack.create_lab_services()
    stack.start_mirror()
    vanished, later = (stack.producer.submit(lab.SQUARE, {"x": x}) for x in (3, 4))
    queue = keys.service_queue(stack.service(lab.SQUARE).id)
    queue = priorities.queue_list(queue, priorities.DEFAULT)
    assert stack.redis.rpop(queue)  # the oldest message: what the next delivery takes
    stack.worker()
    assert stack.producer.wait(later, timeout=30) == {"square": 16}
    assert stack.status(vanished) == "REGISTERED"
    stack.tick()  # published_at is marked by beat
    wait_for(
        lambda: stack.tick_looking_for_overtaken(0.2).republished == [vanished],
        30,
        "beat to send the vanished job again",
    )
    assert stack.producer.wait(vanished, timeout=30) == {"square": 9}
    assert stack.tick_looking_for_overtaken(0.2).republished == []
