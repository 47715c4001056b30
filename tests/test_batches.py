"""Jobs sent several to a Celery message: grouped right, each run once, none left behind."""

from __future__ import annotations

import json
import uuid

import lab
import pytest
from support import wait_for

from broker.errors import DeserializationError
from broker.messaging import keys
from broker.messaging.messages import JobBatch, JobMessage, batched

SERVICE = uuid.uuid4()
OTHER = uuid.uuid4()


def _message(service: uuid.UUID = SERVICE, per_message: int = 3, attempt: int = 1) -> JobMessage:
    return JobMessage(
        uuid.uuid4(), service, "S", {"x": 1}, attempt=attempt, per_message=per_message
    )


def _shape(messages: list[JobMessage]) -> list[int]:
    return [len(m.jobs) if isinstance(m, JobBatch) else 1 for m in batched(messages)]


def test_jobs_are_grouped_up_to_per_message_in_submission_order():
    messages = [_message() for _ in range(8)]
    sent = list(batched(messages))

    assert _shape(messages) == [3, 3, 2]
    assert [j for m in sent for j in (m.jobs if isinstance(m, JobBatch) else [m])] == messages
    assert len({m.batch_id for m in sent if isinstance(m, JobBatch)}) == 3


def test_a_batch_never_mixes_queues_attempts_or_batch_sizes():
    mixed = [_message(), _message(OTHER), _message(OTHER), _message(OTHER, attempt=2)]
    assert _shape(mixed) == [1, 2, 1]
    assert _shape([_message(per_message=2), _message(per_message=3)]) == [1, 1]


def test_one_job_per_message_is_the_default_and_travels_as_a_job():
    plain = JobMessage(uuid.uuid4(), SERVICE, "S", {})
    assert list(batched([plain, plain])) == [plain, plain]


def test_a_batch_carries_each_job_with_its_own_id_parameters_and_attempt():
    first, second = _message(), _message()
    (batch,) = batched([first, second])
    assert isinstance(batch, JobBatch)
    kwargs = json.loads(json.dumps(batch.task_kwargs()))

    assert kwargs["batch_id"] == batch.batch_id
    assert kwargs["service_id"] == str(SERVICE)
    assert [job["job_id"] for job in kwargs["jobs"]] == [str(first.job_id), str(second.job_id)]
    assert kwargs["jobs"][0] == {
        "job_id": str(first.job_id),
        "parameters": {"x": 1},
        "attempt": 1,
        "priority": 5,
    }


# -- end to end --------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("per_message", [0, 1001, True, 2.5])
def test_jobs_per_message_out_of_range_is_refused_and_nothing_is_queued(stack, per_message):
    stack.create_lab_services()
    with pytest.raises(DeserializationError, match="jobs_per_message"):
        stack.producer.submit_many(lab.SQUARE, [{"x": 1}], jobs_per_message=per_message)
    assert stack.queue_length(lab.SQUARE) == 0
    assert stack.count_jobs() == 0


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_a_batched_sweep_runs_every_job_once_with_its_own_results(stack):
    stack.create_lab_services()
    stack.start_mirror()
    jobs = stack.producer.submit_many(
        lab.SQUARE, [{"x": x} for x in range(25)], jobs_per_message=10
    )
    assert stack.queue_length(lab.SQUARE) == 3  # 10 + 10 + 5 jobs

    cancelled = jobs[12]
    stack.producer.cancel(cancelled)
    stack.worker("--concurrency", "2")
    others = [job for job in jobs if job != cancelled]
    results = stack.producer.wait_all(others, timeout=60)

    assert results == [{"square": x * x} for x in range(25) if x != 12]
    assert stack.status(cancelled) == "CANCELLED"
    assert all(stack.job(job)["attempts"] == 1 for job in others[:3])
    assert wait_for(lambda: stack.redis.hlen(keys.BATCHES) == 0, 10, "batch records removed")


def _held_batch(stack, size, policy="fail"):
    """A batch of HELD jobs whose first is running on a worker."""
    stack.create_lab_services(held_policy=policy)
    stack.start_mirror()
    worker = stack.worker()
    tags = [uuid.uuid4().hex for _ in range(size)]
    jobs = stack.producer.submit_many(
        lab.HELD, [{"tag": tag} for tag in tags], jobs_per_message=size
    )
    stack.wait_status(jobs[0], "WORKING")
    return worker, tags, jobs


def _tick_until(stack, condition, what, timeout=30.0):
    return wait_for(lambda: stack.tick() and condition(), timeout, what)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_kill_9_mid_batch_fails_the_running_job_and_requeues_the_unstarted_ones(stack):
    worker, tags, jobs = _held_batch(stack, 3)
    worker.kill()
    for tag in tags:
        stack.release(tag)
    requeued: list[uuid.UUID] = []
    wait_for(
        lambda: requeued.extend(stack.tick().requeued) or set(jobs[1:]) <= set(requeued),
        30,
        "beat to re-queue the unstarted jobs (not waiting for a visibility timeout)",
    )
    stack.worker()

    _tick_until(
        stack,
        lambda: [stack.status(job) for job in jobs] == ["ERROR", "COMPLETED", "COMPLETED"],
        "the lost job failed and the rest run by the survivor",
    )
    assert [stack.runs(tag) for tag in tags] == [1, 1, 1]
    assert "worker lost" in stack.job(jobs[0])["detail"]
    assert stack.redis.hlen(keys.BATCHES) == 0


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_warm_shutdown_finishes_the_running_job_and_hands_back_the_rest(stack):
    worker, tags, jobs = _held_batch(stack, 3)
    worker.popen.terminate()
    wait_for(lambda: "Warm shutdown" in worker.log(), 20, "the worker to begin shutting down")
    stack.release(tags[0])
    assert worker.popen.wait(30) == 0
    assert stack.wait_status(jobs[0], "COMPLETED")
    assert [stack.runs(tag) for tag in tags] == [1, 0, 0]

    for tag in tags[1:]:
        stack.release(tag)
    stack.worker()
    _tick_until(
        stack,
        lambda: all(stack.status(job) == "COMPLETED" for job in jobs),
        "beat to re-queue the rest and a new worker to run them",
    )
    assert [stack.runs(tag) for tag in tags] == [1, 1, 1]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_a_batched_run_that_never_heard_its_abort_keeps_its_outcome_and_the_batch_goes_on(stack):
    """A run's end goes with the next job's claim; one that must say an abort went unheeded too."""
    _, tags, jobs = _held_batch(stack, 3)
    stack.producer.abort(jobs[0], "drift", by="alice@lab:1")
    for tag in tags:
        stack.release(tag)

    assert stack.producer.wait_all(jobs, timeout=60) == [{"tag": tag} for tag in tags]
    assert [stack.runs(tag) for tag in tags] == [1, 1, 1]
    first = stack.job(jobs[0])
    assert first["status"] == "COMPLETED"
    assert "never checked for it" in first["detail"]
    assert "alice@lab:1" in first["detail"]
    assert all(stack.job(job)["detail"] in (None, "") for job in jobs[1:])


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_batches_on_an_exclusive_instrument_run_every_job_once_and_park_none_for_good(stack):
    """Ending a run frees its slot before the next job of the batch claims it, in one script."""
    stack.create_lab_services()
    stack.producer.set_max_running(lab.SQUARE, 1)
    stack.start_mirror()
    jobs = stack.producer.submit_many(lab.SQUARE, [{"x": x} for x in range(12)], jobs_per_message=4)
    stack.worker("--concurrency", "3")

    assert stack.producer.wait_all(jobs, timeout=60) == [{"square": x * x} for x in range(12)]
    assert all(stack.job(job)["attempts"] == 1 for job in jobs)
    service = stack.job(jobs[0])["service_id"]
    assert stack.redis.zcard(keys.parked_jobs(service)) == 0
