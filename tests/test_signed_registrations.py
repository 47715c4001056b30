"""Only signed registrations run, even for someone who can write to Redis.

A lab PC holds the Redis password, so it can write a claim hash and a parameters
digest as well as any producer. These tests attack as such a PC would, through
a real Redis and a real worker process, and count what the handler ran.
"""

from __future__ import annotations

import base64
import json
import uuid

import lab
import pytest
from celery import Celery
from support import wait_for

from broker.messaging import keys
from broker.messaging.connections import celery_url, text
from broker.messaging.messages import parameters_digest

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def _forger(stack) -> Celery:
    """Anyone with the broker's address: a stock Celery app, nothing of TopChef's."""
    return Celery("forger", broker=celery_url(stack.settings.broker_url), set_as_current=False)


def _refused(stack) -> dict[str, int]:
    return {text(k): int(v) for k, v in stack.redis.hgetall(keys.REFUSED).items()}


def _register_by_hand(stack, service_id: uuid.UUID, job: uuid.UUID, parameters: dict) -> None:
    """What register.lua writes, written with plain HSET: the forger's registration."""
    stack.redis.hset(
        keys.claim(job),
        mapping={"service": str(service_id), "digest": parameters_digest(parameters)},
    )


def test_a_registration_written_by_hand_never_runs_the_handler(stack):
    stack.create_lab_services()
    stack.start_mirror()
    held = stack.service(lab.HELD).id
    stack.release("forged")
    stack.worker()
    stack.wait_available(lab.HELD)
    job = uuid.uuid4()
    _register_by_hand(stack, held, job, {"tag": "forged"})
    _forger(stack).send_task(
        keys.JOB_TASK,
        kwargs={"job_id": str(job), "service_id": str(held), "parameters": {"tag": "forged"}},
        queue=keys.service_queue(held),
    )
    wait_for(lambda: _refused(stack) or stack.runs("forged"), 30, "the forged delivery's fate")
    assert stack.runs("forged") == 0
    assert stack.count_jobs() == 0


def _parked_body(stack, job: uuid.UUID) -> tuple[dict, list]:
    envelope = json.loads(stack.redis.hget(keys.claim(job), "parked_message"))
    return envelope, json.loads(base64.b64decode(envelope["body"]))


def test_a_rewritten_parked_message_never_runs_other_parameters(stack):
    stack.create_lab_services()
    stack.start_mirror()
    held = stack.service(lab.HELD).id
    for tag in ("small", "large"):
        stack.release(tag)
    stack.worker()
    stack.wait_available(lab.HELD)
    assert stack.producer.hold_service(lab.HELD, "rewriting")
    job = stack.producer.submit(lab.HELD, {"tag": "small"})
    wait_for(lambda: stack.claims.parked([held])[0] == 1, 30, "the job to park")

    envelope, (args, kwargs, embed) = _parked_body(stack, job)
    kwargs["parameters"] = {"tag": "large"}
    body = json.dumps([args, kwargs, embed]).encode()
    envelope["body"] = base64.b64encode(body).decode()
    stack.redis.hset(
        keys.claim(job),
        mapping={
            "parked_message": json.dumps(envelope),
            "digest": parameters_digest({"tag": "large"}),
        },
    )
    assert stack.producer.resume_service(lab.HELD)
    wait_for(lambda: _refused(stack) or stack.runs("large"), 30, "the rewritten delivery's fate")
    assert stack.runs("large") == 0
    assert stack.job(job)["parameters"] == {"tag": "small"}
