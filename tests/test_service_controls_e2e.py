"""Holds, ``max_running`` and priorities through real worker, beat and mirror processes.

Each run writes itself into a ledger of its own (``lab_slots``), so what ran,
how often, in which order and how many at once is counted apart from SQL: the
handler counts the runs inside it in Redis, atomically; and how many were
WORKING at once is read off the state stream, whose entry ids order every
start and end exactly. (SQL's ``date_started`` and ``date_finished`` are
stamped at the source too, but each mirror batch translates Redis's clock to
the database's with an offset it measures itself, to within a round trip, so
a run that started a millisecond after another ended may, when the two were
applied by different batches, appear to overlap it there.)
"""

from __future__ import annotations

import uuid
from datetime import datetime

import lab_slots
import pytest
import sqlalchemy as sa
from support import wait_for

from broker.messaging import keys
from broker.messaging.messages import StateMessage
from broker.storage.tables import JobRow, open_session

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

INSTRUMENT = lab_slots.INSTRUMENT


def _instrument(stack, **options) -> uuid.UUID:
    return stack.producer.create_service(
        INSTRUMENT, "an instrument", lab_slots.SCHEMA, lab_slots.RESULTS, **options
    )


def _submit(stack, tag: str, *, hold: bool = False, priority: int = 5) -> uuid.UUID:
    return stack.producer.submit(INSTRUMENT, {"tag": tag, "hold": hold}, priority=priority)


def _starts(stack) -> list[str]:
    return [value.decode() for value in stack.redis.lrange(lab_slots.starts_key(), 0, -1)]


def _parked(stack, service_id: uuid.UUID) -> int:
    return stack.claims.parked([service_id])[0]


def _wait_parked(stack, service_id: uuid.UUID, count: int) -> None:
    wait_for(lambda: _parked(stack, service_id) == count, 30, f"{count} parked jobs")


def _release(stack, tag: str) -> None:
    stack.redis.set(lab_slots.release_key(tag), 1)


def _runs(stack, service_id: uuid.UUID) -> list[tuple[datetime, datetime]]:
    with open_session(stack.settings.database_url) as session:
        rows = session.execute(
            sa.select(JobRow.date_started, JobRow.date_finished).where(
                JobRow.service_id == service_id, JobRow.date_started.is_not(None)
            )
        ).all()
    return [(started, finished) for started, finished in rows]


def test_a_held_service_starts_nothing_until_resumed_across_restarts_then_all_in_order(stack):
    service_id = _instrument(stack)
    stack.start_mirror()
    beat = stack.process("beat", "--loglevel", "INFO")
    worker = stack.worker(module="lab_slots")
    running = _submit(stack, "running", hold=True)
    stack.wait_status(running, "WORKING")

    assert stack.producer.hold_service(INSTRUMENT, "sample change")
    first = [_submit(stack, f"a{i}") for i in range(10)]  # accepted and queued while held
    _release(stack, "running")
    stack.wait_status(running, "COMPLETED")  # a job already running finishes
    _wait_parked(stack, service_id, 10)  # the worker, free again, took each and parked it
    assert _starts(stack) == ["running"]
    assert {stack.status(job) for job in first} == {"REGISTERED"}

    # Every process restarts, and Redis forgets the hold: beat writes it back from SQL.
    worker.stop()
    beat.stop()
    control = keys.service_control(service_id)
    stack.redis.delete(control)
    beat = stack.process("beat", "--loglevel", "INFO")
    wait_for(lambda: stack.redis.hexists(control, "held"), 30, "beat to restore the hold")
    worker = stack.worker(module="lab_slots")
    later = [_submit(stack, f"b{i}") for i in range(5)]
    _wait_parked(stack, service_id, 15)
    assert _starts(stack) == ["running"]

    assert stack.producer.resume_service(INSTRUMENT)
    for job in first + later:
        stack.wait_status(job, "COMPLETED")
    assert _starts(stack) == ["running"] + [f"a{i}" for i in range(10)] + [
        f"b{i}" for i in range(5)
    ]
    assert _parked(stack, service_id) == 0


def test_three_workers_never_run_two_jobs_of_a_max_running_1_service_at_once(stack):
    """Counted from the claims: every WORKING and final report on the state stream, in order.

    The mirror starts only once all have run, so every report is still on the
    stream, and entry ids give the exact order of each start and end.
    """
    service_id = _instrument(stack, max_running=1)
    for _ in range(3):
        stack.worker("--pool", "threads", "--concurrency", "2", module="lab_slots")
    jobs = stack.producer.submit_many(INSTRUMENT, [{"tag": f"j{i}"} for i in range(200)])
    wait_for(lambda: len(_ends(stack)) == 200, 180, "200 runs to end")

    assert most_at_once_on_the_stream(stack) == 1
    assert int(stack.redis.get(lab_slots.most_active_key()) or 0) == 1  # the handlers' own count
    assert sorted(_starts(stack)) == sorted(f"j{i}" for i in range(200))  # each ran once
    stack.start_mirror()
    outcomes = stack.producer.outcomes(jobs, timeout=60)
    assert [outcome.status for outcome in outcomes] == ["COMPLETED"] * 200
    assert len(_runs(stack, service_id)) == 200


def _reports(stack) -> list[StateMessage]:
    entries = stack.redis.xrange(keys.STATE_STREAM)
    return [StateMessage.from_fields(fields) for _id, fields in entries]


def _ends(stack) -> list[StateMessage]:
    ended = ("COMPLETED", "ERROR")
    return [r for r in _reports(stack) if r.kind == "status" and r.status in ended]


def most_at_once_on_the_stream(stack) -> int:
    """The most jobs between their WORKING report and their end, in the stream's own order."""
    most = running = 0
    for report in _reports(stack):
        if report.kind != "status":
            continue
        running += 1 if report.status == "WORKING" else -1
        most = max(most, running)
    return most


def test_a_worker_killed_holding_the_only_slot_loses_its_job_and_the_parked_jobs_still_run(
    stack,
):
    service_id = _instrument(stack, max_running=1)  # the 'fail' worker-loss policy
    stack.start_mirror()
    # Threads to spare: the worker takes the next deliveries while its one job runs.
    doomed = stack.worker("--concurrency", "4", module="lab_slots")
    held = _submit(stack, "held", hold=True)
    stack.wait_status(held, "WORKING")
    waiting = [_submit(stack, f"w{i}") for i in range(3)]
    _wait_parked(stack, service_id, 3)

    doomed.kill()
    stack.worker(module="lab_slots")
    wait_for(lambda: stack.tick().failed == [held], 30, "beat to find the lost job")

    assert "worker lost" in stack.wait_status(held, "ERROR")["detail"]
    for job in waiting:
        stack.wait_status(job, "COMPLETED")
    # Nothing ran twice. (The three were parked by four threads at once, so
    # their order among themselves is the order the threads claimed them in.)
    starts = _starts(stack)
    assert (starts[0], sorted(starts[1:])) == ("held", ["w0", "w1", "w2"])


def test_a_higher_priority_job_submitted_after_many_lower_ones_starts_next(stack):
    _instrument(stack)
    stack.start_mirror()
    stack.worker(module="lab_slots")  # one job at a time
    blocker = _submit(stack, "blocker", hold=True)
    stack.wait_status(blocker, "WORKING")
    routine = stack.producer.submit_many(
        INSTRUMENT, [{"tag": f"low{i}"} for i in range(50)], priority=1
    )
    urgent = _submit(stack, "urgent", priority=9)
    normal = _submit(stack, "normal")

    _release(stack, "blocker")
    stack.producer.wait_all([*routine, urgent, normal], timeout=60)

    lows = [f"low{i}" for i in range(50)]
    assert _starts(stack) == ["blocker", "urgent", "normal", *lows]  # FIFO within a priority
