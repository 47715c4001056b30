"""`Producer.ensure_service`, and the errors a producer imports from `broker.producer`."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import lab
import pytest

import broker.errors
import broker.producer
from broker.producer import Producer, ServiceSchemaMismatchError

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_ensure_service_creates_once_and_then_returns_the_same_service(stack):
    ensure = stack.producer.ensure_service
    first = ensure(lab.SQUARE, "squares x", lab.NUMBER_SCHEMA, lab.SQUARE_RESULTS, timeout=10)
    again = ensure(lab.SQUARE, "another text", lab.NUMBER_SCHEMA, lab.SQUARE_RESULTS, timeout=99)
    assert again == first
    row = stack.service(lab.SQUARE)
    assert (row.id, row.description, row.timeout) == (first, "squares x", 10.0)
    assert stack.redis.hget("topchef:service-ids", lab.SQUARE).decode() == str(first)


def test_ensure_service_refuses_other_schemas_and_changes_nothing(stack):
    stack.create_lab_services()
    before = stack.service(lab.SQUARE)
    with pytest.raises(ServiceSchemaMismatchError) as refused:
        stack.producer.ensure_service(lab.SQUARE, "", lab.NUMBER_SCHEMA, {"type": "object"})
    assert refused.value.fields == ("job_result_schema",)
    assert refused.value.status_code == 409
    assert "'Square' already exists with another job_result_schema" in str(refused.value)
    with pytest.raises(ServiceSchemaMismatchError, match="job_registration_schema and"):
        stack.producer.ensure_service(lab.SQUARE, "", {"type": "object"}, {"type": "object"})
    after = stack.service(lab.SQUARE)
    assert (after.job_result_schema, after.job_registration_schema) == (
        before.job_result_schema,
        before.job_registration_schema,
    )


@pytest.mark.parametrize(
    "name",
    [
        "DeserializationError",
        "JobFailedError",
        "JobCancelledError",
        "WaitTimeoutError",
        "JobWithUUIDNotFound",
        "ServiceWithNameNotFound",
        "DuplicateServiceNameError",
        "NotUUIDError",
        "ConfigurationError",
        "TopChefError",
    ],
)
def test_the_errors_producer_calls_raise_are_importable_from_the_producer(name):
    assert getattr(broker.producer, name) is getattr(broker.errors, name)
    assert name in broker.producer.__all__


def test_producers_ensuring_one_service_at_once_all_get_the_same_one(stack):
    """Both may find no service and create it: the loser of the insert reads the winner's."""
    producers = [Producer(stack.settings) for _ in range(6)]
    start = threading.Barrier(len(producers))

    def ensure(producer: Producer) -> uuid.UUID:
        start.wait(10)
        return producer.ensure_service(lab.SQUARE, "", lab.NUMBER_SCHEMA, lab.SQUARE_RESULTS)

    with ThreadPoolExecutor(len(producers)) as pool:
        ids = list(pool.map(ensure, producers))
    assert len(set(ids)) == 1
    assert stack.service(lab.SQUARE).id == ids[0]
