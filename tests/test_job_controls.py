"""The job controls' rules on their own: the lifecycle moves on SQLite and PostgreSQL,
the retry rule, and the abort watch (and a shutdown's abort of every run) on a real Redis."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker.errors import DeserializationError
from broker.messaging import keys
from broker.messaging.claims import Claims
from broker.messaging.messages import ServiceDescriptor, StateMessage
from broker.models import attempts, lifecycle
from broker.models.lifecycle import Status
from broker.models.moves import Move
from broker.models.service import Service
from broker.storage.tables import JobRow, database_now
from broker.worker.controls import RunAbortWatch, judge_retry
from broker.worker.handlers import Aborted, Retry
from broker.worker.running import HeldRun, RunningJobs

SCHEMA = {"type": "object"}


@pytest.fixture
def running(session: Session) -> JobRow:
    """A job WORKING its first attempt on worker ``w``."""
    service = Service.new("oven", "", SCHEMA, SCHEMA, session)
    row = service.new_job({})._row
    session.flush()
    now = database_now(session)
    lifecycle.advance(session, Status.WORKING, [Move(row.id, now, {"worker": "w", "attempts": 1})])
    session.expire(row)
    return row


def test_a_plain_cancel_never_ends_a_running_job(session, running):
    move = Move(running.id, database_now(session), {"detail": "cancelled"})
    assert lifecycle.advance(session, Status.CANCELLED, [move]) == 0
    session.expire(running)
    assert running.status == "WORKING"


def test_an_abort_ends_a_running_job_cancelled_only_for_its_own_attempt(session, running):
    at = database_now(session)
    other = Move(running.id, at, {"detail": "aborted", "results": {"n": 1}}, attempt=2)
    assert lifecycle.abort_run(session, [other]) == 0
    own = Move(running.id, at, {"detail": "aborted", "results": {"n": 1}}, attempt=1)
    assert lifecycle.abort_run(session, [own]) == 1
    session.expire(running)
    assert (running.status, running.results, running.detail) == ("CANCELLED", {"n": 1}, "aborted")
    assert running.date_finished >= running.date_started
    assert lifecycle.abort_run(session, [own]) == 0  # a redelivered report changes nothing


def test_a_retry_keeps_the_attempt_and_sends_the_job_back_to_wait(session, running):
    at = database_now(session)
    due = at + timedelta(seconds=5)
    attempts.keep_retried(session, [attempts.Retried(running.id, 1, "busy", at)])
    moved = lifecycle.retry(session, [Move(running.id, at, {"not_before": due}, attempt=1)])
    assert moved == 1
    session.expire(running)
    assert running.status == "REGISTERED"
    assert (running.not_before, running.published_at, running.attempts) == (due, None, 1)
    assert running.worker is None
    kept = attempts.of_job(session, running.id)
    assert [(k.attempt, k.status, k.detail, k.worker) for k in kept] == [(1, "ERROR", "busy", "w")]
    # The same report again, or one of another attempt, moves nothing.
    assert lifecycle.retry(session, [Move(running.id, at, {"not_before": due}, attempt=1)]) == 0
    attempts.keep_retried(session, [attempts.Retried(running.id, 1, "busy", at)])
    assert len(attempts.of_job(session, running.id)) == 1


def test_a_job_cannot_be_held_until_a_time_without_a_zone(session):
    service = Service.new("oven", "", SCHEMA, SCHEMA, session)
    with pytest.raises(DeserializationError):
        service.new_job({}, not_before=database_now(session).replace(tzinfo=None))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retry_on": ["TimeoutError"]}, "needs retries=True"),
        ({"retries": True, "retry_on": "TimeoutError"}, "a list"),
        ({"retries": True, "retry_on": ["not a name"]}, "exception type names"),
        ({"retries": True, "retry_backoff": -1}, "from 0 to"),
        ({"retries": "yes"}, "true or false"),
    ],
)
def test_retry_options_that_say_nothing_clear_are_refused(session, options, message):
    with pytest.raises(DeserializationError, match=message):
        Service.new("oven", "", SCHEMA, SCHEMA, session, **options)


def _descriptor(**options) -> ServiceDescriptor:
    return ServiceDescriptor(uuid.uuid4(), "Stage", SCHEMA, 30.0, **options)


def test_the_retry_rule_opt_in_bound_and_doubling_backoff():
    strict = judge_retry(_descriptor(), Retry("busy"), 1)
    assert strict.after is None
    assert "does not allow retries" in strict.detail

    allowed = _descriptor(retries=True, max_attempts=4, retry_backoff=0.5)
    waits = [judge_retry(allowed, TimeoutError("slow"), n).after for n in (1, 2, 3)]
    assert waits == [0.5, 1.0, 2.0]
    assert judge_retry(allowed, Retry("busy", after=7), 1).after == 7
    last = judge_retry(allowed, Retry("busy"), 4)
    assert last.after is None
    assert "gave up after 4 attempts" in last.detail


@pytest.mark.redis
def test_the_abort_watch_reads_redis_at_most_once_per_interval_and_calls_back_once(redis_url):
    client = redis.Redis.from_url(redis_url)
    claims = Claims(client)
    job = uuid.uuid4()
    service = uuid.uuid4()
    claims.register(pipeline := client.pipeline(), service, [(job, "d")])
    pipeline.execute()
    working = StateMessage("status", service, job, status="WORKING", worker="w")
    assert claims.claim(job, 1, "w", working, "d").value == "claimed"
    now = [0.0]
    watch = RunAbortWatch(claims, job, interval=0.25, clock=lambda: now[0])
    called = []
    watch.on_abort(lambda: called.append(1))
    assert watch.requested() is None

    assert claims.abort(job, "drift", "alice@lab:1")[0] == "requested"
    assert claims.abort(job, "again", "bob@lab:2")[0] == "already"
    now[0] = 0.1
    assert watch.requested() is None  # within the interval: no read
    now[0] = 0.3
    seen = watch.requested()
    assert seen is not None
    assert (seen.reason, seen.by) == ("drift", "alice@lab:1")
    assert watch.requested() is seen
    assert called == [1]
    assert client.hget(keys.claim(job), "state") == b"running"  # the run decides its end


def _claimed(client: redis.Redis, count: int = 1) -> tuple[Claims, list[uuid.UUID]]:
    """``count`` jobs registered and claimed by worker ``w``."""
    claims = Claims(client)
    service = uuid.uuid4()
    jobs = [uuid.uuid4() for _ in range(count)]
    claims.register(pipeline := client.pipeline(), service, [(job, "d") for job in jobs])
    pipeline.execute()
    for job in jobs:
        working = StateMessage("status", service, job, status="WORKING", worker="w")
        assert claims.claim(job, 1, "w", working, "d").value == "claimed"
    return claims, jobs


SHUTDOWN = Aborted("the worker was shut down", "lab-pc:7", "2026-01-01T00:00:00.000+00:00")


@pytest.mark.redis
def test_a_shutdown_calls_back_once_for_a_handler_that_never_looked(redis_url):
    client = redis.Redis.from_url(redis_url)
    claims, (job,) = _claimed(client)
    watch = RunAbortWatch(claims, job, interval=0.0)
    called = []
    watch.on_abort(lambda: called.append("safe"))
    claims.abort(job, "drift", "alice@lab:1")  # a user's abort came first: it stands

    assert watch.call_back(SHUTDOWN) is True
    assert called == ["safe"]
    assert (watch.seen.by, watch.called_back_by_worker) == ("alice@lab:1", True)
    assert watch.call_back(SHUTDOWN) is False
    assert watch.requested() is watch.seen  # the handler now sees it, without a second call
    assert called == ["safe"]


@pytest.mark.redis
def test_a_shutdown_leaves_alone_a_run_with_no_safe_state_to_reach(redis_url):
    client = redis.Redis.from_url(redis_url)
    claims, (job,) = _claimed(client)
    claims.abort(job, "shutdown", "lab-pc:7")
    watch = RunAbortWatch(claims, job, interval=0.0)

    assert watch.call_back(SHUTDOWN) is False
    assert watch.seen is None  # its handler may still look, or run to its end


def test_a_shutdown_makes_the_instrument_safe_even_with_redis_gone():
    gone = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)  # nothing listens
    watch = RunAbortWatch(Claims(gone), uuid.uuid4(), interval=0.0)
    called = []
    watch.on_abort(lambda: called.append("safe"))

    assert watch.call_back(SHUTDOWN) is True
    assert (called, watch.seen) == (["safe"], SHUTDOWN)


@pytest.mark.redis
def test_the_handler_and_the_shutdown_racing_call_the_callbacks_once(redis_url):
    client = redis.Redis.from_url(redis_url)
    claims, jobs = _claimed(client, 20)
    for job in jobs:
        claims.abort(job, "shutdown", "lab-pc:7")
    assert [_race(claims, job) for job in jobs] == [[1]] * len(jobs)


def _race(claims: Claims, job: uuid.UUID) -> list[int]:
    """The callbacks' calls when the handler looks just as the shutdown calls back."""
    watch = RunAbortWatch(claims, job, interval=0.0)
    called: list[int] = []
    watch.on_abort(lambda: called.append(1))
    start = threading.Barrier(2)
    handler = threading.Thread(target=lambda: (start.wait(), watch.requested()))
    handler.start()
    start.wait()
    watch.call_back(SHUTDOWN)
    handler.join(5)
    return called


@pytest.mark.redis
def test_a_shutdown_waits_for_runs_that_stop_and_gives_up_on_the_ones_that_do_not(redis_url):
    client = redis.Redis.from_url(redis_url)
    claims, (heeding, deaf) = _claimed(client, 2)
    descriptor = ServiceDescriptor(uuid.uuid4(), "Oven", SCHEMA, 30.0)
    running = RunningJobs()
    watches = {job: RunAbortWatch(claims, job, interval=0.0) for job in (heeding, deaf)}
    for job, watch in watches.items():
        assert running.start(HeldRun(job, descriptor, watch)) is False
    safe: list[uuid.UUID] = []
    watches[deaf].on_abort(lambda: safe.append(deaf))

    def heed() -> None:  # a handler that looks, stops, and reports
        while watches[heeding].requested() is None:
            threading.Event().wait(0.01)
        running.returned(heeding)
        running.reported(heeding)

    handler = threading.Thread(target=heed)
    handler.start()
    stuck = running.abort_all(SHUTDOWN, lambda job: claims.abort(job, "shutdown", "lab-pc:7"), 0.4)
    handler.join(5)

    assert [run.job for run in stuck] == [deaf]
    assert safe == [deaf]  # its callback, called by the shutdown
    assert watches[heeding].called_back_by_worker is False
    assert claims.abort_request(deaf).by == "lab-pc:7"
    late = uuid.uuid4()  # a run that starts while the shutdown aborts is aborted as it starts
    assert running.start(HeldRun(late, descriptor, RunAbortWatch(claims, late))) is True


def test_a_finish_that_asks_after_aborts_ends_no_run_that_had_one_until_it_is_told(redis_url):
    client = redis.Redis.from_url(redis_url)
    claims = Claims(client)
    quiet, asked, service = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    claims.register(pipeline := client.pipeline(), service, [(quiet, "d"), (asked, "d")])
    pipeline.execute()
    for job in (quiet, asked):
        working = StateMessage("status", service, job, status="WORKING", worker="w")
        assert claims.claim(job, 1, "w", working, "d").value == "claimed"
    done = StateMessage("status", service, quiet, status="COMPLETED", worker="w")
    landed = claims.finish(quiet, 1, done, unless_aborted=True)
    assert (landed.on_time, landed.abort) == (True, None)
    assert client.hget(keys.claim(quiet), "state") == b"done"

    claims.abort(asked, "drift", "alice@lab:1")
    done = StateMessage("status", service, asked, status="COMPLETED", worker="w")
    held = claims.finish(asked, 1, done, unless_aborted=True)
    assert held.abort is not None
    assert (held.abort.reason, held.abort.by) == ("drift", "alice@lab:1")
    assert client.hget(keys.claim(asked), "state") == b"running"  # not ended, nothing sent
    reports = [StateMessage.from_fields(f) for _, f in client.xrange(keys.STATE_STREAM)]
    assert [m.status for m in reports if m.job_id == asked] == ["WORKING"]
    assert claims.finish(asked, 1, done).on_time
    assert client.hget(keys.claim(asked), "state") == b"done"


def test_the_census_counts_waiting_jobs_held_until_a_later_time(session):
    from broker.ops.census import take_census

    service = Service.new("oven", "", SCHEMA, SCHEMA, session)
    now = database_now(session)
    later = service.new_job({}, not_before=now + timedelta(hours=1))._row
    service.new_job({}, not_before=now - timedelta(seconds=1))  # due: beat sends it now
    service.new_job({})
    cancelled = service.new_job({}, not_before=now + timedelta(hours=2))._row
    session.flush()
    session.execute(sa.update(JobRow).where(JobRow.id == cancelled.id).values(status="CANCELLED"))
    session.commit()
    (reading,) = take_census(session).services
    assert (reading.waiting, reading.scheduled) == (3, 1)
    assert later.status == "REGISTERED"
