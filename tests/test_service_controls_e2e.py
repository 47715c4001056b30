"""Holds, ``max_running`` and priorities through real worker, beat and mirror processes.

Priority is checked on every path that parks or releases work, each on the
pools it differs on: a resume and a freed slot (solo, threads, prefork), beat
sending lost messages again, and the bound a worker's prefetch sets, with the
messages a dead worker had taken coming back. Where a release must reach a
worker that waits for its queue (as an idle one mostly does, blocked in
BRPOP), the test waits until it does and releases at once.

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

import base64
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import lab
import lab_slots
import pytest
import sqlalchemy as sa
from support import Process, wait_for, waiting_in_brpop

import celeryconfig
from broker.beat.recovery import publish_outbox
from broker.messaging import keys, priorities
from broker.messaging.messages import StateMessage
from broker.storage.tables import JobRow, database_now, open_session

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

INSTRUMENT = lab_slots.INSTRUMENT
POOLS = ["solo", "threads", "prefork"]


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


def _lows(count: int) -> list[str]:
    return [f"low{i}" for i in range(count)]


def _wait_idle(stack) -> None:
    """Until a ready worker waits for its queue, blocked in BRPOP, as an idle one mostly does.

    A release that comes while it does not (kombu's wait lapses every second
    and is taken up again a moment later; for its first second a worker waits
    on Celery's start-up replies instead) finds a worker that reads the lists
    in the order it names them, which would pass these tests whatever the
    order of the pushes. So a test releases at once after this.
    """
    stack.wait_available(INSTRUMENT)  # its check-in comes once Celery's start-up is over
    wait_for(lambda: waiting_in_brpop(stack.redis) >= 1, 30, "a worker to wait for its queue")


@pytest.mark.parametrize("pool", POOLS)
def test_resume_starts_the_urgent_job_before_the_routine_ones_queued_while_held(stack, pool):
    """Held, 15 jobs at priority 1 then one at 9, resumed: the 9 starts first (issue 24)."""
    service_id = _instrument(stack)
    stack.start_mirror()
    assert stack.producer.hold_service(INSTRUMENT, "swapping the sample")
    stack.worker("--pool", pool, module="lab_slots")
    routine = [_submit(stack, tag, priority=1) for tag in _lows(15)]
    urgent = _submit(stack, "urgent", priority=9)
    _wait_parked(stack, service_id, 16)

    _wait_idle(stack)
    assert stack.producer.resume_service(INSTRUMENT)
    stack.producer.wait_all([*routine, urgent], timeout=60)
    assert _starts(stack) == ["urgent", *_lows(15)]


@pytest.mark.parametrize("pool", POOLS)
def test_a_freed_slot_starts_the_highest_priority_parked_job(stack, pool):
    service_id = _instrument(stack, max_running=1)
    stack.start_mirror()
    for _ in range(2):  # one runs the blocker, the other parks what comes meanwhile
        stack.worker("--pool", pool, module="lab_slots")
    blocker = _submit(stack, "blocker", hold=True)
    stack.wait_status(blocker, "WORKING")
    routine = [_submit(stack, tag, priority=1) for tag in _lows(5)]
    urgent = _submit(stack, "urgent", priority=9)
    _wait_parked(stack, service_id, 6)

    _wait_idle(stack)
    _release(stack, "blocker")
    stack.producer.wait_all([blocker, *routine, urgent], timeout=60)
    assert _starts(stack) == ["blocker", "urgent", *_lows(5)]


def test_beat_sends_lost_messages_again_highest_priority_first(stack):
    """The outbox's re-publish (the one beat's tick runs), of jobs of two priorities at once."""
    service_id = _instrument(stack)
    stack.start_mirror()
    routine = [_submit(stack, tag, priority=1) for tag in _lows(3)]
    urgent = _submit(stack, "urgent", priority=9)
    stack.tick()  # beat marks them published
    # Their messages are gone, and as far as beat can tell they never left.
    stack.redis.delete(*priorities.queue_lists(keys.service_queue(service_id)))
    stack.worker(module="lab_slots")
    with open_session(stack.settings.database_url) as session:
        session.execute(sa.update(JobRow).values(published_at=None))
        session.commit()
        now = database_now(session)
        _wait_idle(stack)
        assert publish_outbox(session, stack.producer.publisher, now, grace=0) == 4
    stack.producer.wait_all([*routine, urgent], timeout=60)
    assert _starts(stack) == ["urgent", *_lows(3)]


def _prefetching_worker(stack, multiplier: int) -> Process:
    """A threads worker that reserves ``multiplier`` jobs per thread, not one.

    Its own ``celeryconfig.py`` (the project's, with Celery's
    ``worker_prefetch_multiplier`` changed, as a lab would edit it) is in the
    directory it runs in, which Python searches first.
    """
    directory = stack.tmp_path / f"prefetch-{multiplier}"
    directory.mkdir()
    settings = Path(celeryconfig.__file__).read_text(encoding="utf-8")
    (directory / "celeryconfig.py").write_text(
        f"{settings}\nworker_prefetch_multiplier = {multiplier}\n", encoding="utf-8"
    )
    return stack.worker("--pool", "threads", module="lab_slots", cwd=directory)


def _wait_queue(stack, length: int) -> None:
    wait_for(lambda: stack.queue_length(INSTRUMENT) == length, 30, f"{length} queued jobs")


def test_an_urgent_job_starts_after_what_the_worker_had_already_taken_and_no_more(stack):
    """The bound: a worker's prefetch (4 here: one thread, multiplier 4) is taken already."""
    _instrument(stack)
    stack.start_mirror()
    _prefetching_worker(stack, 4)
    blocker = _submit(stack, "blocker", hold=True)
    stack.wait_status(blocker, "WORKING")
    routine = [_submit(stack, tag, priority=1) for tag in _lows(6)]
    _wait_queue(stack, 3)  # the worker holds four: the blocker and three waiting in it
    urgent = _submit(stack, "urgent", priority=9)

    _release(stack, "blocker")
    stack.producer.wait_all([blocker, *routine, urgent], timeout=60)
    assert _starts(stack) == ["blocker", *_lows(3), "urgent", "low3", "low4", "low5"]


def test_jobs_a_dead_worker_had_taken_come_back_each_on_its_priority_list(stack):
    """Redelivered after a crash: each message goes back to the list of its own priority.

    kombu's redelivery is done by whichever worker is alive, for every queue:
    here one of another service, so that where each lands can be read before
    anything takes it. It brings a message back once the visibility timeout
    has passed since it was taken; those whose time has come at one check go
    back together, the last taken first, so two of one priority taken apart
    may come back in either order.
    """
    stack.producer.create_service(lab.SQUARE, "squares x", lab.NUMBER_SCHEMA, lab.SQUARE_RESULTS)
    service_id = _instrument(stack)
    stack.start_mirror()
    doomed = _prefetching_worker(stack, 4)
    blocker = _submit(stack, "blocker", hold=True)
    stack.wait_status(blocker, "WORKING")
    taken = []
    for tag, priority in (("low0", 1), ("low1", 1), ("urgent", 9)):
        taken.append(_submit(stack, tag, priority=priority))
        _wait_queue(stack, 0)  # taken by the worker, not started: its one thread is busy

    doomed.kill()
    stack.worker(module="lab")
    _wait_queue(stack, 4)  # after the visibility timeout: the three, and the blocker's
    queue = keys.service_queue(service_id)
    landed = {p: _tags(stack, priorities.queue_list(queue, p)) for p in (9, 5, 1)}
    assert landed == {9: ["urgent"], 5: ["blocker"], 1: ["low0", "low1"]}
    stack.worker(module="lab_slots")
    stack.producer.wait_all(taken, timeout=60)
    starts = _starts(stack)
    assert starts[:2] == ["blocker", "urgent"]  # the blocker's copy is refused: it ran once
    assert sorted(starts[2:]) == ["low0", "low1"]


def _tags(stack, queue_list: str) -> list[str]:
    """The tags of the jobs on one list, sorted (their order within it is kombu's)."""
    messages = stack.redis.lrange(queue_list, 0, -1)
    return sorted(_kwargs(message)["parameters"]["tag"] for message in messages)


def _kwargs(message: bytes) -> dict[str, Any]:
    """A task message's keyword arguments, as kombu's Redis transport stores it."""
    body = json.loads(base64.b64decode(json.loads(message)["body"]))
    return dict(body[1])
