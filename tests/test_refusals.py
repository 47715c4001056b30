"""Beat's reading of the refused-deliveries log: each job named once, and a forged log harmless.

The log is writable with the Redis password, so what it holds is only a hint:
anything that is not a job id is passed over, and a flood costs one tick a
bounded read. That a named job waiting in SQL is then sent again is shown
through a real worker in ``test_signed_registrations``.
"""

from __future__ import annotations

import uuid

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.beat.refusals import READ_AT_MOST, Refusals
from broker.messaging import keys


def test_each_refused_job_is_named_once_in_order_and_junk_is_passed_over(redis_url):
    client = redis.Redis.from_url(redis_url)
    refusals = Refusals(client)
    assert refusals.new_jobs() == []
    first, second = uuid.uuid4(), uuid.uuid4()
    for fields in (
        {"reason": "forged", "job_id": str(first)},
        {"reason": "forged", "job_id": "None"},
        {"reason": "forged", "job_id": "x" * 10_000},
        {"reason": "forged"},
        {"reason": "altered", "job_id": str(second)},
        {"reason": "forged", "job_id": str(first)},
    ):
        client.xadd(keys.REFUSED_LOG, fields)
    assert refusals.new_jobs() == [first, second]
    assert refusals.new_jobs() == []
    third = uuid.uuid4()
    client.xadd(keys.REFUSED_LOG, {"job_id": str(third)})
    assert refusals.new_jobs() == [third]


def test_a_flood_is_read_a_bounded_chunk_at_a_time(redis_url):
    client = redis.Redis.from_url(redis_url)
    refusals = Refusals(client)
    refusals.new_jobs()
    jobs = [uuid.uuid4() for _ in range(READ_AT_MOST + 7)]
    pipeline = client.pipeline()
    for job in jobs:
        pipeline.xadd(keys.REFUSED_LOG, {"job_id": str(job)})
    pipeline.execute()
    assert refusals.new_jobs() == jobs[:READ_AT_MOST]
    assert refusals.new_jobs() == jobs[READ_AT_MOST:]


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.binary(max_size=20), st.binary(max_size=100), min_size=1, max_size=5))
def test_any_entry_a_redis_writer_adds_is_a_job_id_or_nothing(redis_url, fields):
    client = redis.Redis.from_url(redis_url)
    refusals = Refusals(client)
    refusals.new_jobs()
    client.xadd(keys.REFUSED_LOG, fields)
    found = refusals.new_jobs()
    assert all(isinstance(job, uuid.UUID) for job in found)
    assert len(found) <= 1
