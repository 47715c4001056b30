"""Only registered work runs: forged, altered and misrouted deliveries through a real worker.

A message on a service's queue may come from anyone who reaches Redis — a
plain Celery app's ``send_task``, ``celery call``, Flower's send-task. Each
test here sends one the way such a tool would and counts what the handler ran.
(Forgeries that also write the claim hash: ``test_signed_registrations.py``.)
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


def test_forged_and_malformed_deliveries_never_run(stack):
    """Every message a forger sends without the core's signature is refused first."""
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

    expected = {"forged": 4, "malformed": 1}
    wait_for(lambda: _refused(stack) == expected, 30, f"the refusals {expected}")
    assert stack.runs("forged") == stack.runs("altered") == stack.runs("registered") == 0
    assert stack.status(registered) == stack.status(failing) == "REGISTERED"
    assert stack.claims.state(registered) is None
    assert stack.claims.state(failing) is None
    assert stack.count_jobs() == 2  # nothing forged reached SQL
    log = worker.log()
    for reason, count in expected.items():
        assert log.count(f"({reason})") == count, reason
    entries = stack.redis.xrange(keys.REFUSED_LOG)
    reasons = sorted(text(fields[b"reason"]) for _id, fields in entries)
    assert reasons == ["forged"] * 4 + ["malformed"]

    # The refusals poisoned nothing: the genuine messages still run, once.
    _send_again(stack, registered)
    _send_again(stack, failing)
    assert stack.producer.wait(registered, timeout=30) == {"tag": "registered"}
    assert stack.runs("registered") == 1
    assert "boom 4" in stack.wait_status(failing, "ERROR")["detail"]


def _genuine(stack, service: str, parameters: dict) -> tuple[uuid.UUID, bytes]:
    """A registered job and its genuine, signed message, taken off its queue."""
    job = stack.producer.submit(service, parameters)
    lists = priorities.queue_lists(keys.service_queue(stack.service(service).id))
    (message,) = [raw for name in lists for raw in stack.redis.lrange(name, 0, -1)]
    stack.redis.delete(*lists)
    return job, message


def test_a_signed_message_whose_claim_was_removed_or_rewritten_never_runs(stack):
    """Behind the signature, the claim still decides: unregistered, altered."""
    stack.create_lab_services()
    stack.start_mirror()
    gone, gone_message = _genuine(stack, lab.HELD, {"tag": "gone"})
    rewritten, rewritten_message = _genuine(stack, lab.HELD, {"tag": "rewritten"})
    stack.redis.delete(keys.claim(gone))  # as if its claim had expired
    stack.redis.hset(keys.claim(rewritten), "digest", "0" * 64)
    for tag in ("gone", "rewritten"):
        stack.release(tag)
    stack.worker()
    lists = priorities.queue_lists(keys.service_queue(stack.service(lab.HELD).id))
    stack.redis.lpush(lists[-1], gone_message, rewritten_message)
    expected = {"unregistered": 1, "altered": 1}
    wait_for(lambda: _refused(stack) == expected, 30, f"the refusals {expected}")
    assert stack.runs("gone") == stack.runs("rewritten") == 0
    assert stack.status(gone) == stack.status(rewritten) == "REGISTERED"


def test_a_forged_batch_runs_none_of_its_jobs(stack):
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
    wait_for(lambda: _refused(stack) == {"forged": 1}, 30, "the batch's refusal")
    assert (stack.runs("in-batch"), stack.runs("stowaway")) == (0, 0)
    # Its registered job still runs from its own message.
    _send_again(stack, registered)
    assert stack.producer.wait(registered, timeout=30) == {"tag": "in-batch"}
    assert (stack.runs("in-batch"), stack.runs("stowaway")) == (1, 0)
