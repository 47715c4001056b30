"""End to end through real Redis, PostgreSQL and Celery worker processes."""

from __future__ import annotations

import socket
import threading
import uuid
from datetime import datetime

import jsonschema
import lab
import pytest
import sqlalchemy as sa
from support import wait_for

from broker.errors import (
    DeserializationError,
    InvalidTransitionError,
    JobCancelledError,
    JobFailedError,
    ServiceWithNameNotFound,
)
from broker.messaging import keys
from broker.messaging.presence import Presence
from broker.storage.tables import JobRow, open_session

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def test_two_hundred_jobs_complete_in_postgresql(stack):
    stack.create_lab_services()
    stack.start_mirror()
    stack.worker("--concurrency", "4")
    stack.wait_available(lab.SQUARE)

    jobs = stack.producer.submit_many(lab.SQUARE, [{"x": i} for i in range(200)])
    results = stack.producer.wait_all(jobs, timeout=120)

    assert results == [{"square": i * i} for i in range(200)]
    with open_session(stack.settings.database_url) as session:
        rows = session.scalars(sa.select(JobRow).where(JobRow.id.in_(jobs))).all()
    assert len(rows) == 200
    for row in rows:
        assert row.status == "COMPLETED"
        jsonschema.validate(row.results, lab.SQUARE_RESULTS)
        assert row.date_submitted <= row.date_started <= row.date_finished
        assert row.attempts == 1
        assert row.worker
        assert row.progress == 0.5


def test_invalid_parameters_are_refused_with_nothing_queued(stack):
    stack.create_lab_services()
    with pytest.raises(DeserializationError) as refused:
        stack.producer.submit_many(lab.SQUARE, [{"x": 1}, {"x": "two"}])
    assert refused.value.path == (1, "x")  # the sweep's point, then the field
    assert 'parameters[1].x: "two" is not of type "integer"' in refused.value.detail
    assert stack.count_jobs() == 0
    assert stack.queue_length(lab.SQUARE) == 0


def test_unknown_service_is_a_clear_error(stack):
    with pytest.raises(ServiceWithNameNotFound, match="No service is named 'Nope'"):
        stack.producer.submit("Nope", {})


def test_handler_exception_and_invalid_results_end_in_error(stack):
    stack.create_lab_services()
    stack.start_mirror()
    stack.worker("--concurrency", "2")
    stack.wait_available(lab.FAILING)

    failed = stack.producer.submit(lab.FAILING, {"x": 42})
    invalid = stack.producer.submit(lab.INVALID, {"x": 1})

    with pytest.raises(JobFailedError, match="ValueError: boom 42"):
        stack.producer.wait(failed, timeout=30)
    with pytest.raises(JobFailedError, match="invalid results") as error:
        stack.producer.wait(invalid, timeout=30)
    assert '"not a number" is not of type "integer"' in error.value.reason
    assert stack.job(invalid)["results"] is None


def test_cancelled_job_never_runs_even_though_queued(stack):
    stack.create_lab_services()
    stack.start_mirror()
    tag = uuid.uuid4().hex
    job = stack.producer.submit(lab.HELD, {"tag": tag})
    assert stack.queue_length(lab.HELD) == 1

    stack.producer.cancel(job)
    assert stack.status(job) == "CANCELLED"

    stack.release(tag)
    stack.worker()
    wait_for(lambda: stack.queue_length(lab.HELD) == 0, 30, "the queued message to be consumed")
    after = stack.producer.submit(lab.HELD, {"tag": tag + "-after"})
    stack.release(tag + "-after")
    stack.producer.wait(after, timeout=30)  # the worker has seen the cancelled message by now
    assert stack.runs(tag) == 0
    assert stack.status(job) == "CANCELLED"
    with pytest.raises(JobCancelledError):
        stack.producer.wait(job, timeout=1)


def test_a_running_job_cannot_be_cancelled(stack):
    stack.create_lab_services()
    stack.start_mirror()
    stack.worker()
    tag = uuid.uuid4().hex
    job = stack.producer.submit(lab.HELD, {"tag": tag})
    stack.wait_status(job, "WORKING")
    with pytest.raises(InvalidTransitionError):
        stack.producer.cancel(job)
    stack.release(tag)
    assert stack.producer.wait(job, timeout=30) == {"tag": tag}


def test_worker_marks_its_services_available_then_unavailable_on_clean_shutdown(stack):
    stack.create_lab_services()
    stack.start_mirror()
    assert not stack.service(lab.SQUARE).is_service_available
    worker = stack.worker()
    stack.wait_available(lab.SQUARE)
    worker.stop()
    stack.wait_available(lab.SQUARE, available=False)


def test_a_service_stays_available_while_any_of_its_workers_serves_it(stack):
    stack.create_lab_services(timeout=6)  # a check-in every 2 s
    stack.start_mirror()
    first, second = stack.worker(), stack.worker()
    square = stack.service(lab.SQUARE).id
    presence = Presence(stack.redis)
    wait_for(lambda: presence.live([square]) == {square: 2}, 60, "both workers to be present")
    stack.wait_available(lab.SQUARE)

    unavailable: list[datetime] = []
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            row = stack.service(lab.SQUARE)
            if not row.is_service_available:
                unavailable.append(row.last_checked_in)
            watching.wait(0.02)  # the sampling rate, not a synchronisation

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert first.stop() == 0  # SIGTERM: a clean shutdown, which withdraws its presence
        survivor = f"{socket.gethostname()}:{second.pid}"
        members = stack.redis.zrange(keys.service_workers(square), 0, -1)
        assert members == [survivor.encode()]
        # Two check-ins applied after the first worker exited: the second of
        # them came after its leave, which the mirror has therefore applied.
        seen = stack.service(lab.SQUARE).last_checked_in
        for _ in range(2):
            seen = wait_for(
                lambda since=seen: (at := stack.service(lab.SQUARE).last_checked_in) > since and at,
                30,
                "a check-in of the remaining worker",
            )
    finally:
        watching.set()
        watcher.join(10)
    assert unavailable == []
    assert stack.service(lab.SQUARE).is_service_available

    assert second.stop() == 0
    stack.wait_available(lab.SQUARE, available=False)
    assert presence.live([square]) == {square: 0}


def test_a_pickled_message_is_refused(stack):
    """JSON only on the wire: a worker never deserialises pickle."""
    from kombu import Connection

    from broker.messaging import keys
    from broker.messaging.connections import celery_url

    stack.create_lab_services()
    worker = stack.worker()
    queue = keys.service_queue(stack.service(lab.SQUARE).id)
    with Connection(celery_url(stack.settings.broker_url)) as connection:
        producer = connection.Producer(serializer="pickle")
        producer.publish(
            {"job_id": str(uuid.uuid4()), "service_id": "x", "parameters": {"x": 1}},
            routing_key=queue,
            headers={"task": keys.JOB_TASK, "id": str(uuid.uuid4())},
        )
    wait_for(
        lambda: "pickle" in worker.log() and "disallowed" in worker.log().lower(),
        30,
        "the worker to refuse the pickled message",
    )
    assert stack.queue_length(lab.SQUARE) == 0
