"""Holds and ``max_running`` in the claims: a delivery that may not start is parked, not run.

Real Lua on real Redis (both backends): the control hash is written by the
publisher, as a producer's commit and beat's tick write it; deliveries are
claimed as a worker claims them, and what a release sends back is read off
the queue's lists in the order a worker's BRPOP would take it: by a consumer
that is already waiting when the release comes, as an idle worker is (Redis
hands such a consumer the first list a script pushed to, whatever the order
it names them in), and then by one that finds the lists full.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from support import popped_by_waiting_consumers

from broker.app import make_app
from broker.messaging import keys, priorities
from broker.messaging.claims import ClaimResult, Claims, Parking
from broker.messaging.messages import ServiceDescriptor, StateMessage, parameters_digest
from broker.messaging.publisher import CeleryPublisher
from broker.settings import Settings

pytestmark = pytest.mark.redis

SERVICE = uuid.UUID("00000000-0000-4000-8000-0000000000aa")
QUEUE = keys.service_queue(SERVICE)
PARAMETERS = {"x": 1}
DIGEST = parameters_digest(PARAMETERS)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    yield connection
    connection.close()


@pytest.fixture
def claims(client: redis.Redis) -> Claims:
    return Claims(client, lease_seconds=0.2, window_seconds=30)


def _control(client: redis.Redis, redis_url: str, *, held: bool = False, most: int | None = None):
    """Write the service's hold and limit as a producer's commit (or beat) does."""
    descriptor = ServiceDescriptor(SERVICE, "Oven", {}, 30.0, held=held, max_running=most)
    # Services only: no signing key needed.
    CeleryPublisher(make_app(Settings(broker_url=redis_url)), client, "").publish_services(
        [descriptor]
    )


def _registered(claims: Claims) -> uuid.UUID:
    job = uuid.uuid4()
    pipeline = claims._client.pipeline()
    claims.register(pipeline, SERVICE, [(job, DIGEST)])
    pipeline.execute()
    return job


def _working(job: uuid.UUID, attempt: int = 1) -> StateMessage:
    return StateMessage("status", SERVICE, job, "WORKING", attempt=attempt, worker="w")


def _parking(job: uuid.UUID, priority: int = priorities.DEFAULT) -> Parking:
    """A stand-in for the delivery's message: its job id, so the order can be read back."""
    return Parking(json.dumps({"job": str(job)}), priorities.queue_list(QUEUE, priority), priority)


def _deliver(claims: Claims, job: uuid.UUID, priority: int = priorities.DEFAULT) -> ClaimResult:
    """One delivery as the worker runtime makes it: a claim, then one with its message if asked."""
    claimed = claims.claim(job, 1, "w", _working(job), DIGEST)
    if claimed is ClaimResult.MUST_PARK:
        claimed = claims.claim(job, 1, "w", _working(job), DIGEST, parking=_parking(job, priority))
    return claimed


def _finish(claims: Claims, job: uuid.UUID) -> None:
    final = StateMessage("status", SERVICE, job, "COMPLETED", attempt=1, results={})
    assert claims.finish(job, 1, final).on_time


def _taken(client: redis.Redis) -> list[uuid.UUID]:
    """Empty the queue as a worker's BRPOP would: highest priority list first, right end first."""
    order = []
    for queue_list in priorities.queue_lists(QUEUE):
        while (raw := client.rpop(queue_list)) is not None:
            order.append(uuid.UUID(json.loads(raw)["job"]))
    return order


def test_a_held_service_parks_every_delivery_and_resume_sends_them_back_in_order(
    claims, client, redis_url
):
    _control(client, redis_url, held=True)
    jobs = [_registered(claims) for _ in range(5)]
    # Nothing is encoded unless the claim asks for it.
    assert claims.claim(jobs[0], 1, "w", _working(jobs[0]), DIGEST) is ClaimResult.MUST_PARK
    assert [_deliver(claims, job) for job in jobs] == [ClaimResult.PARKED] * 5
    assert claims.parked([SERVICE]) == [5]
    assert all(claims.state(job) is None for job in jobs)  # registered, unclaimed, parked
    assert claims.release_parked(SERVICE) == 0  # still held: nothing goes
    assert _taken(client) == []

    _control(client, redis_url, held=False)
    assert claims.release_parked(SERVICE) == 5
    assert _taken(client) == jobs
    assert claims.parked([SERVICE]) == [0]
    assert [_deliver(claims, job) for job in jobs] == [ClaimResult.CLAIMED] * 5


def test_a_parked_job_keeps_its_place_and_its_priority(claims, client, redis_url):
    _control(client, redis_url, held=True)
    low, urgent, later_low = (_registered(claims) for _ in range(3))
    _deliver(claims, low, priority=1)
    _deliver(claims, urgent, priority=9)
    _deliver(claims, later_low, priority=1)
    _deliver(claims, low, priority=1)  # a duplicate delivery parks it again, in its first place
    _control(client, redis_url, held=False)
    assert claims.release_parked(SERVICE) == 3
    assert _taken(client) == [urgent, low, later_low]


def _handed_to_waiting_workers(
    redis_url: str, release: Callable[[], object], workers: int = 1
) -> list[uuid.UUID]:
    """The jobs ``release`` hands consumers already waiting on every list of the queue."""
    handed = popped_by_waiting_consumers(redis_url, priorities.queue_lists(QUEUE), release, workers)
    return [uuid.UUID(json.loads(message)["job"]) for _list, message in handed]


def test_a_worker_waiting_when_a_resume_comes_is_handed_the_highest_priority_job(
    claims, client, redis_url
):
    """Parked lowest first (15 at priority 1, then 1 at 9): the waiting worker gets the 9."""
    _control(client, redis_url, held=True)
    routine = [_registered(claims) for _ in range(15)]
    urgent = _registered(claims)
    for job in routine:
        _deliver(claims, job, priority=1)
    _deliver(claims, urgent, priority=9)
    _control(client, redis_url, held=False)

    handed = _handed_to_waiting_workers(redis_url, lambda: claims.release_parked(SERVICE))
    assert [*handed, *_taken(client)] == [urgent, *routine]


def test_every_priority_a_resume_sends_back_reaches_waiting_workers_in_order(
    claims, client, redis_url
):
    """Three at 1, three at 5, three at 9, parked lowest first; four workers wait."""
    _control(client, redis_url, held=True)
    by_priority = {priority: [_registered(claims) for _ in range(3)] for priority in (1, 5, 9)}
    for priority, jobs in by_priority.items():
        for job in jobs:
            _deliver(claims, job, priority=priority)
    _control(client, redis_url, held=False)

    handed = _handed_to_waiting_workers(redis_url, lambda: claims.release_parked(SERVICE), 4)
    expected = by_priority[9] + by_priority[5] + by_priority[1]
    assert [*handed, *_taken(client)] == expected


def test_max_running_parks_beyond_the_limit_and_each_end_lets_one_more_start(
    claims, client, redis_url
):
    _control(client, redis_url, most=1)
    first, second, third = (_registered(claims) for _ in range(3))
    assert _deliver(claims, first) is ClaimResult.CLAIMED
    assert _deliver(claims, second) is ClaimResult.PARKED
    assert _deliver(claims, third) is ClaimResult.PARKED
    assert claims.release_parked(SERVICE) == 0  # the one slot is taken

    _finish(claims, first)  # frees the slot and sends the oldest parked job back, at once
    assert _taken(client) == [second]
    assert _deliver(claims, second) is ClaimResult.CLAIMED
    assert _deliver(claims, third) is ClaimResult.PARKED  # a stray delivery parks again
    _finish(claims, second)
    assert _taken(client) == [third]
    assert _deliver(claims, third) is ClaimResult.CLAIMED


def test_a_raised_limit_lets_as_many_more_go(claims, client, redis_url):
    _control(client, redis_url, most=1)
    jobs = [_registered(claims) for _ in range(4)]
    assert [_deliver(claims, job) for job in jobs] == [ClaimResult.CLAIMED] + [
        ClaimResult.PARKED
    ] * 3
    _control(client, redis_url, most=3)
    assert claims.release_parked(SERVICE) == 2
    assert _taken(client) == jobs[1:3]


def test_a_raised_limit_hands_a_waiting_worker_the_highest_priority_parked_job(
    claims, client, redis_url
):
    _control(client, redis_url, most=1)
    running, low, urgent, later_low = (_registered(claims) for _ in range(4))
    assert _deliver(claims, running) is ClaimResult.CLAIMED
    assert _deliver(claims, low, priority=1) is ClaimResult.PARKED
    assert _deliver(claims, urgent, priority=9) is ClaimResult.PARKED
    assert _deliver(claims, later_low, priority=1) is ClaimResult.PARKED
    _control(client, redis_url, most=3)

    handed = _handed_to_waiting_workers(redis_url, lambda: claims.release_parked(SERVICE))
    assert [*handed, *_taken(client)] == [urgent, low]  # two slots free: two go
    assert claims.parked([SERVICE]) == [1]


def test_a_cancelled_parked_job_is_never_sent_back(claims, client, redis_url):
    _control(client, redis_url, held=True)
    kept, cancelled = _registered(claims), _registered(claims)
    _deliver(claims, kept)
    _deliver(claims, cancelled)
    assert claims.cancel(cancelled) is ClaimResult.CANCELLED
    assert claims.parked([SERVICE]) == [1]
    _control(client, redis_url, held=False)
    claims.release_parked(SERVICE)
    assert _taken(client) == [kept]


def test_a_lost_run_frees_its_slot_for_the_next_job(claims, client, redis_url):
    _control(client, redis_url, most=1)
    running, waiting = _registered(claims), _registered(claims)
    assert _deliver(claims, running) is ClaimResult.CLAIMED
    assert _deliver(claims, waiting) is ClaimResult.PARKED
    client.delete(keys.lease(running))  # its worker died: the lease lapsed
    assert claims.recover(running, requeue=False, max_attempts=3, service_id=SERVICE).verdict == (
        "fail"
    )
    assert _taken(client) == [waiting]
    assert _deliver(claims, waiting) is ClaimResult.CLAIMED


def test_a_claim_given_back_frees_its_slot(claims, client, redis_url):
    _control(client, redis_url, most=1)
    held, waiting = _registered(claims), _registered(claims)
    _deliver(claims, held)
    _deliver(claims, waiting)
    release = StateMessage("release", SERVICE, held, attempt=1, worker="w")
    assert claims.release(held, 1, "w", release) is not None
    assert _taken(client) == [waiting]


def test_beat_frees_a_slot_a_run_left_taken(claims, client, redis_url):
    """A path that ended a run without freeing its slot cannot stall the service."""
    _control(client, redis_url, most=1)
    ended, waiting = _registered(claims), _registered(claims)
    _deliver(claims, ended)
    _deliver(claims, waiting)
    client.hset(keys.claim(ended), "state", "done")  # ended, but its slot still taken
    assert claims.release_parked(SERVICE) == 0
    assert claims.release_parked(SERVICE, prune=True) == 1
    assert _taken(client) == [waiting]


def test_an_http_claimer_is_told_not_now_and_nothing_changes(claims, client, redis_url):
    _control(client, redis_url, held=True)
    job = _registered(claims)
    claimed = claims.claim(job, 1, "http:rig", _working(job), trusted=True)
    assert claimed is ClaimResult.DEFERRED
    assert claims.state(job) is None
    assert claims.parked([SERVICE]) == [0]


def test_the_common_path_parks_nothing_and_keeps_no_slot_after_the_end(claims, client):
    job = _registered(claims)  # no control written: neither held nor limited
    assert _deliver(claims, job) is ClaimResult.CLAIMED
    assert client.scard(keys.running_jobs(SERVICE)) == 1
    _finish(claims, job)
    assert client.scard(keys.running_jobs(SERVICE)) == 0


def test_a_run_that_asks_for_a_retry_frees_its_slot_for_the_next_parked_job(
    claims, client, redis_url
):
    _control(client, redis_url, most=1)
    running, waiting = _registered(claims), _registered(claims)
    assert _deliver(claims, running) is ClaimResult.CLAIMED
    assert _deliver(claims, waiting) is ClaimResult.PARKED

    entry = StateMessage("retry", SERVICE, running, attempt=1, worker="w")
    assert claims.retry(running, 1, entry) == "retrying"

    assert _taken(client) == [waiting]  # it may start while the retried job waits its turn
    assert _deliver(claims, waiting) is ClaimResult.CLAIMED
