"""The state mirror against real Redis and SQL: batches, idempotence, outages."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime

import lab
import pytest
import sqlalchemy as sa

from broker.messaging import keys
from broker.messaging.messages import StateMessage
from broker.mirror.process import Mirror

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _report(stack, message: StateMessage) -> None:
    stack.report(message)


def _started(stack, service, job) -> None:
    """The WORKING report that makes the stack's credential the holder, as a claim sends it."""
    _report(stack, StateMessage("status", service, job, "WORKING", worker="w:1"))


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
    _started(stack, service, job)
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
    _started(stack, service, job)
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
    _started(stack, service, job)
    _report(stack, StateMessage("status", service, job, "COMPLETED", results={"square": 9}))
    with pytest.raises(
        sa.exc.OperationalError, match="port 1 failed"
    ):  # the database's, not Redis's
        broken.step()
    assert stack.redis.xpending(keys.STATE_STREAM, keys.MIRROR_GROUP)["pending"] == 2
    assert stack.status(job) == "REGISTERED"

    recovered = Mirror(stack.settings, block_ms=10, consumer="mirror@test")
    assert recovered.step() == 2
    assert stack.status(job) == "COMPLETED"
    assert stack.redis.xpending(keys.STATE_STREAM, keys.MIRROR_GROUP)["pending"] == 0


def test_empty_results_are_kept_as_an_empty_object(stack):
    stack.create_lab_services()
    stack.producer.create_service("Empty", "", {"type": "object"}, {"type": "object"})
    job = stack.producer.submit("Empty", {})
    service = stack.service("Empty").id
    mirror = Mirror(stack.settings, block_ms=10)
    mirror.ensure_group()
    _started(stack, service, job)
    _report(stack, StateMessage("status", service, job, "COMPLETED", results={}))
    mirror.step()
    assert (stack.status(job), stack.job(job)["results"]) == ("COMPLETED", {})


def _report_at(stack, message: StateMessage, ms: int) -> None:
    """A report stamped by Redis at ``ms`` (as if made then), whenever the mirror reads it."""
    stack.report(message, id=f"{ms}-0")


def test_transitions_are_stamped_when_they_happened_not_when_applied(stack):
    job, service = _job(stack)
    submitted = stack.job(job)["date_submitted"]
    mirror = Mirror(stack.settings, block_ms=10)
    mirror.ensure_group()
    seconds, micros = stack.redis.time()
    now_ms = seconds * 1000 + micros // 1000
    # Reports made 20 and 50 s from now, which the mirror applies right away.
    _report_at(
        stack, StateMessage("status", service, job, "WORKING", worker="w:1"), now_ms + 20_000
    )
    completed = StateMessage("status", service, job, "COMPLETED", results={"square": 9})
    _report_at(stack, completed, now_ms + 50_000)
    _report_at(stack, StateMessage("checkin", service, available=True), now_ms + 50_001)
    assert mirror.step() == 3

    row = stack.job(job)
    started = datetime.fromisoformat(row["date_started"])
    finished = datetime.fromisoformat(row["date_finished"])
    assert abs((started - datetime.fromisoformat(submitted)).total_seconds() - 20) < 2
    assert abs((finished - started).total_seconds() - 30) < 0.01
    checked_in = stack.service(lab.SQUARE).last_checked_in
    assert abs((checked_in - finished).total_seconds() - 0.001) < 0.01


def test_reports_of_unknown_or_misattributed_jobs_are_dead_lettered(stack):
    job, service = _job(stack)
    other = stack.service(lab.HELD).id
    mirror = Mirror(stack.settings, block_ms=10)
    mirror.ensure_group()
    stranger = uuid.uuid4()
    _report(stack, StateMessage("status", service, stranger, "COMPLETED", results={"square": 1}))
    # The Square job's id reported by the Held service, with a Held result.
    _report(stack, StateMessage("status", other, job, "COMPLETED", results={"tag": "x"}))
    _report(stack, StateMessage("progress", other, job, progress=0.5))
    assert mirror.step() == 3

    assert (stack.status(job), stack.job(job)["progress"]) == ("REGISTERED", None)
    assert stack.count_jobs() == 1
    dead = [fields[b"error"].decode() for _id, fields in stack.redis.xrange(keys.DEAD_STATE_STREAM)]
    assert dead[0] == f"no job {stranger} exists"
    assert dead[1:] == [f"job {job} belongs to service {service}, not {other}"] * 2
    assert stack.redis.xlen(keys.STATE_STREAM) == 0  # dead-lettered, not left pending


def test_results_are_checked_against_the_jobs_own_service(stack):
    """A report naming the right service but carrying another service's kind of result."""
    job, service = _job(stack)
    mirror = Mirror(stack.settings, block_ms=10)
    mirror.ensure_group()
    _started(stack, service, job)
    _report(stack, StateMessage("status", service, job, "COMPLETED", results={"tag": "x"}))
    mirror.step()
    assert stack.status(job) == "ERROR"
    assert '"square" is a required property' in stack.job(job)["detail"]


def test_a_run_provenance_is_stored_once_and_a_malformed_one_dead_lettered(stack):
    from broker.messaging.provenance import RunProvenance
    from broker.storage.tables import RunProvenanceRow, open_session

    job, service = _job(stack)
    mirror = Mirror(stack.settings, block_ms=10)
    mirror.ensure_group()
    record = RunProvenance("lab:1", "lab", "0123abc", "CPython 3.11.2")
    entry = StateMessage("provenance", service, worker="lab:1", extra=record.as_dict())
    _report(stack, entry)
    _report(stack, entry)  # a second process start of the same record: one row
    forged = {**record.as_dict(), "python": 42}
    _report(stack, StateMessage("provenance", service, worker="x", extra=forged))
    working = StateMessage(
        "status", service, job, "WORKING", worker="lab:1", provenance=record.digest
    )
    _report(stack, working)

    assert mirror.step() == 4
    with open_session(stack.settings.database_url) as session:
        stored = session.scalars(sa.select(RunProvenanceRow)).all()
        assert [(row.digest, row.module, row.code_version) for row in stored] == [
            (record.digest, "lab", "0123abc")
        ]
    assert stack.producer.provenance(job)["run"]["code_version"] == "0123abc"
    dead = stack.redis.xrange(keys.DEAD_STATE_STREAM)
    assert len(dead) == 1
    assert b"invalid provenance" in dead[0][1][b"error"]
