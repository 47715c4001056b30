"""Only registered work runs: forged, altered and misrouted deliveries through a real worker.

A message on a service's queue may come from anyone who reaches Redis — a
plain Celery app's ``send_task``, ``celery call``, Flower's send-task. Each
test here sends one the way such a tool would and counts what the handler ran.
"""

from __future__ import annotations

import uuid

import lab
import pytest
from celery import Celery
from support import wait_for

from broker.messaging import keys, priorities
from broker.messaging.connections import celery_url, text
from broker.models.service import Service
from broker.storage.tables import JobRow, ServiceRow, open_session

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def _forger(stack) -> Celery:
    """Anyone with the broker's address: a stock Celery app, nothing of TopChef's."""
    return Celery("forger", broker=celery_url(stack.settings.broker_url), set_as_current=False)


def _refused(stack) -> dict[str, int]:
    return {text(k): int(v) for k, v in stack.redis.hgetall(keys.REFUSED).items()}


def _queued_then_taken_off(stack, service: str, parameters: dict) -> uuid.UUID:
    """A registered job whose genuine message is no longer queued (it stays REGISTERED)."""
    job = stack.producer.submit(service, parameters)
    stack.redis.delete(*priorities.queue_lists(keys.service_queue(stack.service(service).id)))
    return job


def _send_again(stack, job: uuid.UUID) -> None:
    """The genuine message once more, as beat's outbox would send it."""
    with open_session(stack.settings.database_url) as session:
        row = session.get(JobRow, job)
        service = Service(session.get(ServiceRow, row.service_id))
        stack.producer.publisher.publish_jobs([service.message_for(row)])


def test_forged_altered_invalid_misrouted_and_malformed_deliveries_never_run(stack):
    stack.create_lab_services()
    stack.start_mirror()
    registered = _queued_then_taken_off(stack, lab.HELD, {"tag": "registered"})
    failing = _queued_then_taken_off(stack, lab.FAILING, {"x": 4})
    held, square = stack.service(lab.HELD).id, stack.service(lab.SQUARE).id
    stack.release("registered")
    for tag in ("forged", "altered"):
        stack.release(tag)
    worker = stack.worker()
    stack.wait_available(lab.HELD)
    forger = _forger(stack)

    def send(queue_of: uuid.UUID, **kwargs: object) -> None:
        forger.send_task(keys.JOB_TASK, kwargs=kwargs, queue=keys.service_queue(queue_of))

    # No producer ever registered this id.
    send(held, job_id=str(uuid.uuid4()), service_id=str(held), parameters={"tag": "forged"})
    # A registered job's id with other parameters, valid and then invalid for the schema.
    send(held, job_id=str(registered), service_id=str(held), parameters={"tag": "altered"})
    send(held, job_id=str(registered), service_id=str(held), parameters={"tag": 10_000})
    # A Failing job put on Square's queue: Square's handler would have completed it.
    send(square, job_id=str(failing), service_id=str(square), parameters={"x": 4})
    # Not a job message at all.
    send(held, hello="world")

    expected = {"unregistered": 1, "altered": 1, "invalid": 1, "misrouted": 1, "malformed": 1}
    wait_for(lambda: _refused(stack) == expected, 30, f"the refusals {expected}")
    assert stack.runs("forged") == stack.runs("altered") == stack.runs("registered") == 0
    assert stack.status(registered) == stack.status(failing) == "REGISTERED"
    assert stack.claims.state(registered) is None
    assert stack.claims.state(failing) is None
    assert stack.count_jobs() == 2  # nothing forged reached SQL
    log = worker.log()
    for reason in expected:
        assert log.count(f"({reason})") == 1, reason
    entries = stack.redis.xrange(keys.REFUSED_LOG)
    assert sorted(text(fields[b"reason"]) for _id, fields in entries) == sorted(expected)

    # The refusals poisoned nothing: the genuine messages still run, once.
    _send_again(stack, registered)
    _send_again(stack, failing)
    assert stack.producer.wait(registered, timeout=30) == {"tag": "registered"}
    assert stack.runs("registered") == 1
    assert "boom 4" in stack.wait_status(failing, "ERROR")["detail"]


def test_a_forged_batch_runs_only_its_registered_jobs(stack):
    stack.create_lab_services()
    stack.start_mirror()
    registered = _queued_then_taken_off(stack, lab.HELD, {"tag": "in-batch"})
    held = stack.service(lab.HELD).id
    for tag in ("in-batch", "stowaway"):
        stack.release(tag)
    stack.worker()
    jobs = [
        {"job_id": str(registered), "parameters": {"tag": "in-batch"}, "attempt": 1},
        {"job_id": str(uuid.uuid4()), "parameters": {"tag": "stowaway"}, "attempt": 1},
    ]
    _forger(stack).send_task(
        keys.JOB_BATCH_TASK,
        kwargs={"batch_id": "forged", "service_id": str(held), "jobs": jobs},
        queue=keys.service_queue(held),
    )
    assert stack.producer.wait(registered, timeout=30) == {"tag": "in-batch"}
    wait_for(lambda: _refused(stack) == {"unregistered": 1}, 30, "the stowaway's refusal")
    assert (stack.runs("in-batch"), stack.runs("stowaway")) == (1, 0)
