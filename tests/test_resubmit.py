"""Resubmitting a job: a new job with its parameters, validated today, linked both ways.

From Python on SQLite and PostgreSQL (each over real Redis and the embedded
one), then from the CLI and over HTTP, and through a real worker.
"""

from __future__ import annotations

import base64
import json
import uuid

import lab
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from support import keyed

from broker.cli import main
from broker.errors import DeserializationError, JobWithUUIDNotFound
from broker.messaging import keys, priorities
from broker.messaging.connections import redis_client
from broker.producer import Producer
from broker.settings import Settings
from broker.storage.tables import JobRow, ServiceRow, open_session

pytest_plugins = ["gateway_support"]  # the gateway and api fixtures


@pytest.fixture
def producer(database_url: str, redis_url: str) -> Producer:
    """A producer over a clean database of each backend and an empty Redis database."""
    broker_url = redis_url.replace("unix://", "redis+socket://")
    producer = Producer(keyed(Settings(database_url=database_url, broker_url=broker_url)))
    producer.create_service(lab.SQUARE, "squares x", lab.NUMBER_SCHEMA, lab.SQUARE_RESULTS)
    return producer


def _queued(producer: Producer, service_id: uuid.UUID) -> list[str]:
    """The ids of the jobs waiting on the service's queue, oldest first."""
    client = redis_client(producer.settings.broker_url)
    queue = priorities.queue_list(keys.service_queue(service_id), priorities.DEFAULT)
    messages = client.lrange(queue, 0, -1)
    bodies = [json.loads(base64.b64decode(json.loads(m)["body"])) for m in reversed(messages)]
    return [kwargs["job_id"] for _args, kwargs, _embed in bodies]


@pytest.mark.redis
def test_a_resubmission_is_a_new_queued_job_with_the_same_parameters_linked_both_ways(producer):
    original = producer.submit(lab.SQUARE, {"x": 7})
    again = producer.resubmit(original)
    twice = producer.resubmit(original)

    assert len({original, again, twice}) == 3
    first, second, third = (producer.job(job) for job in (original, again, twice))
    assert first["parameters"] == second["parameters"] == third["parameters"] == {"x": 7}
    assert (second["status"], second["attempts"], second["results"]) == ("REGISTERED", 0, None)
    assert second["resubmitted_from"] == third["resubmitted_from"] == str(original)
    assert first["resubmissions"] == [str(again), str(twice)]
    assert first["resubmitted_from"] is None
    assert second["resubmissions"] == []
    service_id = uuid.UUID(first["service_id"])
    assert _queued(producer, service_id) == [str(original), str(again), str(twice)]


@pytest.mark.redis
def test_a_resubmission_is_validated_against_the_contract_as_it_is_now(producer):
    original = producer.submit(lab.SQUARE, {"x": 7})
    # An operator tightened the contract since (schemas change only by hand, in SQL).
    stricter = {**lab.NUMBER_SCHEMA, "properties": {"x": {"type": "integer", "maximum": 5}}}
    with open_session(producer.settings.database_url) as session, session.begin():
        session.execute(
            sa.update(ServiceRow)
            .where(ServiceRow.name == lab.SQUARE)
            .values(job_registration_schema=stricter)
        )
    with pytest.raises(DeserializationError) as refused:
        producer.resubmit(original)
    assert refused.value.path == ("x",)
    assert "parameters.x" in str(refused.value)
    with open_session(producer.settings.database_url) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(JobRow)) == 1
    service_id = uuid.UUID(producer.job(original)["service_id"])
    assert _queued(producer, service_id) == [str(original)]


@pytest.mark.redis
def test_resubmitting_an_unknown_job_says_so(producer):
    missing = uuid.uuid4()
    with pytest.raises(JobWithUUIDNotFound):
        producer.resubmit(missing)


@pytest.mark.redis
def test_deleting_the_original_keeps_its_resubmission_and_where_it_came_from(producer):
    original = producer.submit(lab.SQUARE, {"x": 2})
    again = producer.resubmit(original)
    with open_session(producer.settings.database_url) as session, session.begin():
        session.execute(sa.delete(JobRow).where(JobRow.id == original))
    assert producer.job(again)["resubmitted_from"] == str(original)
    with pytest.raises(JobWithUUIDNotFound):
        producer.resubmit(original)


@pytest.mark.postgres
@pytest.mark.redis
def test_a_finished_job_resubmitted_from_the_cli_runs_again(stack, monkeypatch):
    monkeypatch.setenv("TOPCHEF_DATABASE_URL", stack.settings.database_url)
    monkeypatch.setenv("TOPCHEF_BROKER_URL", stack.settings.broker_url)
    stack.create_lab_services()
    stack.start_mirror()
    stack.worker()
    original = stack.producer.submit(lab.SQUARE, {"x": 4})
    stack.wait_status(original, "COMPLETED")

    result = CliRunner().invoke(
        main, ["jobs", "resubmit", str(original)[:8], "--wait", "30"], catch_exceptions=False
    )

    assert result.exit_code == 0, result.output
    new_id = uuid.UUID(result.output.splitlines()[0])
    assert json.loads("\n".join(result.output.splitlines()[1:])) == {"square": 16}
    again = stack.wait_status(new_id, "COMPLETED")
    assert (again["resubmitted_from"], again["results"]) == (str(original), {"square": 16})
    assert stack.job(original)["resubmissions"] == [str(new_id)]
    help_text = CliRunner().invoke(main, ["jobs", "resubmit", "--help"]).output
    assert "validated against the service's contract as it is now" in help_text


@pytest.mark.postgres
@pytest.mark.redis
def test_resubmit_over_http_creates_a_linked_job(api, stack):
    stack.create_lab_services()
    original = stack.producer.submit(lab.SQUARE, {"x": 3})

    response = api.post(f"/jobs/{original}/resubmit")

    assert response.status_code == 201, response.text
    body = response.json()
    new_id = body["data"]["id"]
    assert response.headers["Location"].endswith(f"/jobs/{new_id}")
    assert body["data"]["parameters"] == {"x": 3}
    assert body["meta"]["resubmitted_from"] == str(original)
    shown = api.get(f"/jobs/{original}").json()
    assert shown["meta"]["resubmissions"] == [new_id]
    assert api.post(f"/jobs/{uuid.uuid4()}/resubmit").status_code == 404
    assert api.post("/jobs/not-an-id/resubmit").status_code == 404
