"""The state mirror against real Redis and SQL: batches, idempotence, outages."""

from __future__ import annotations

import dataclasses

import lab
import pytest

from broker import keys
from broker.messages import StateMessage
from broker.mirror import Mirror

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _report(stack, message: StateMessage) -> None:
    stack.redis.xadd(keys.STATE_STREAM, message.to_fields())


def _job(stack):
    stack.create_lab_services()
    job = stack.producer.submit(lab.SQUARE, {"x": 3})
    service = stack.service(lab.SQUARE).id
    return job, service


def test_a_batch_applies_in_one_step_and_is_acknowledged(stack):
    job, service = _job(stack)
    mirror = Mirror(stack.settings, block_ms=10)
    mirror.ensure_group()
    _report(stack, StateMessage("status", service, job, "WORKING", worker="w:1"))
    _report(stack, StateMessage("progress", service, job, progress=0.25, message="a quarter"))
    _report(stack, StateMessage("status", service, job, "COMPLETED", results={"square": 9}))
    _report(stack, StateMessage("checkin", service, available=True))

    assert mirror.step() == 4
    job_now = stack.job(job)
    assert (job_now["status"], job_now["results"], job_now["attempts"]) == (
        "COMPLETED",
        {"square": 9},
        1,
    )
    assert stack.service(lab.SQUARE).is_service_available
    assert stack.redis.xlen(keys.STATE_STREAM) == 0
    assert mirror.step() == 0


def test_redelivered_and_out_of_order_messages_never_move_a_job_backwards(stack):
    job, service = _job(stack)
    mirror = Mirror(stack.settings, block_ms=10)
    mirror.ensure_group()
    completed = StateMessage("status", service, job, "COMPLETED", results={"square": 9})
    _report(stack, completed)
    mirror.step()
    for late in (
        StateMessage("status", service, job, "WORKING", worker="late"),
        StateMessage("progress", service, job, progress=0.1),
        StateMessage("status", service, job, "ERROR", detail="late error"),
        completed,
    ):
        _report(stack, late)
    mirror.step()
    job_now = stack.job(job)
    assert (job_now["status"], job_now["detail"], job_now["progress"]) == ("COMPLETED", None, None)
    assert stack.count_jobs() == 1


def test_results_that_violate_the_schema_are_stored_as_an_error(stack):
    job, service = _job(stack)
    mirror = Mirror(stack.settings, block_ms=10)
    mirror.ensure_group()
    _report(stack, StateMessage("status", service, job, "COMPLETED", results={"square": "nine"}))
    mirror.step()
    assert stack.status(job) == "ERROR"
    assert "invalid results" in stack.job(job)["detail"]


def test_while_the_database_is_down_state_waits_in_the_broker(stack):
    job, service = _job(stack)
    down = dataclasses.replace(
        stack.settings, database_url="postgresql://postgres@127.0.0.1:1/test?connect_timeout=1"
    )
    broken = Mirror(down, block_ms=10, consumer="mirror@test")
    broken.ensure_group()
    _report(stack, StateMessage("status", service, job, "COMPLETED", results={"square": 9}))
    with pytest.raises(Exception, match="connection"):
        broken.step()
    assert stack.redis.xpending(keys.STATE_STREAM, keys.MIRROR_GROUP)["pending"] == 1
    assert stack.status(job) == "REGISTERED"

    recovered = Mirror(stack.settings, block_ms=10, consumer="mirror@test")
    assert recovered.step() == 1
    assert stack.status(job) == "COMPLETED"
    assert stack.redis.xpending(keys.STATE_STREAM, keys.MIRROR_GROUP)["pending"] == 0


def test_empty_results_are_kept_as_an_empty_object(stack):
    stack.create_lab_services()
    stack.producer.create_service("Empty", "", {"type": "object"}, {"type": "object"})
    job = stack.producer.submit("Empty", {})
    service = stack.service("Empty").id
    mirror = Mirror(stack.settings, block_ms=10)
    mirror.ensure_group()
    _report(stack, StateMessage("status", service, job, "COMPLETED", results={}))
    mirror.step()
    assert (stack.status(job), stack.job(job)["results"]) == ("COMPLETED", {})
