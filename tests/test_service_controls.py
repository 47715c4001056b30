"""Holds, ``max_running`` and priorities from Python, the CLI and HTTP: SQL is the truth.

On SQLite and PostgreSQL, each over real Redis and the embedded one: what a
producer sets is in the service's row, and reaches the Redis control hash the
claims read in the same commit; beat's tick writes it again from SQL.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import lab
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from support import keyed, popped_by_waiting_consumers

from broker import actors
from broker.beat.recovery import republish_overtaken, sync_directory
from broker.errors import DeserializationError, ServiceWithNameNotFound
from broker.messaging import keys, priorities
from broker.messaging.connections import redis_client, text
from broker.models.service_list import ServiceList
from broker.producer import Producer
from broker.settings import Settings
from broker.storage.tables import JobRow, database_now, open_session

pytest_plugins = ["gateway_support"]  # the gateway and api fixtures


@pytest.fixture
def producer(database_url: str, redis_url: str) -> Producer:
    broker_url = redis_url.replace("unix://", "redis+socket://")
    producer = Producer(keyed(Settings(database_url=database_url, broker_url=broker_url)))
    producer.create_service(lab.SQUARE, "squares x", lab.NUMBER_SCHEMA, lab.SQUARE_RESULTS)
    return producer


def _control(producer: Producer, name: str = lab.SQUARE) -> dict[str, str]:
    service_id = _service_id(producer, name)
    raw = redis_client(producer.settings.broker_url).hgetall(keys.service_control(service_id))
    return {text(key): text(value) for key, value in raw.items()}


def _service_id(producer: Producer, name: str) -> uuid.UUID:
    with open_session(producer.settings.database_url) as session:
        return ServiceList(session).by_name(name).id


def _show(producer: Producer, name: str = lab.SQUARE) -> dict[str, object]:
    with open_session(producer.settings.database_url) as session:
        return ServiceList(session).by_name(name).as_dict()


@pytest.mark.redis
def test_a_hold_is_recorded_in_sql_with_who_and_why_and_reaches_redis(producer):
    assert producer.hold_service(lab.SQUARE, "recalibrating the magnet")
    shown = _show(producer)
    assert shown["held"] is True
    assert shown["held_by"] == actors.person()
    assert shown["held_reason"] == "recalibrating the magnet"
    assert shown["held_at"]
    assert _control(producer) == {"held": "1"}

    assert not producer.hold_service(lab.SQUARE, "another reason")  # held already: unchanged
    assert _show(producer)["held_reason"] == "recalibrating the magnet"

    assert producer.resume_service(lab.SQUARE)
    assert _show(producer)["held"] is False
    assert _show(producer)["held_by"] is None
    assert _control(producer) == {}
    assert not producer.resume_service(lab.SQUARE)


@pytest.mark.redis
def test_max_running_is_set_at_creation_and_changed_later(producer):
    producer.create_service("Magnet", "one at a time", {}, {}, max_running=1)
    assert _show(producer, "Magnet")["max_running"] == 1
    assert _control(producer, "Magnet") == {"max_running": "1"}
    producer.set_max_running("Magnet", 3)
    assert _control(producer, "Magnet") == {"max_running": "3"}
    producer.set_max_running("Magnet", None)
    assert _show(producer, "Magnet")["max_running"] is None
    assert _control(producer, "Magnet") == {}
    for bad in (0, -1, 2.5, True, "1"):
        with pytest.raises(DeserializationError, match="max_running"):
            producer.set_max_running("Magnet", bad)  # type: ignore[arg-type]
    with pytest.raises(ServiceWithNameNotFound):
        producer.hold_service("No such service")


@pytest.mark.redis
def test_beat_writes_a_hold_redis_lost_back_from_sql(producer):
    producer.hold_service(lab.SQUARE, "bake-out")
    producer.set_max_running(lab.SQUARE, 2)
    client = redis_client(producer.settings.broker_url)
    client.delete(keys.service_control(_service_id(producer, lab.SQUARE)))  # a Redis restart
    assert _control(producer) == {}
    with open_session(producer.settings.database_url) as session:
        sync_directory(session, producer.publisher)
    assert _control(producer) == {"held": "1", "max_running": "2"}


@pytest.mark.redis
def test_a_job_is_queued_on_its_priority_list_and_keeps_its_priority_in_sql(producer):
    service_id = _service_id(producer, lab.SQUARE)
    urgent = producer.submit(lab.SQUARE, {"x": 1}, priority=9)
    routine = producer.submit(lab.SQUARE, {"x": 2})
    sweep = producer.submit_many(lab.SQUARE, [{"x": 3}, {"x": 4}], priority=0)
    client = redis_client(producer.settings.broker_url)
    queue = keys.service_queue(service_id)

    def queued(priority: int) -> list[str]:
        return [_job_id(m) for m in client.lrange(priorities.queue_list(queue, priority), 0, -1)]

    assert queued(9) == [str(urgent)]
    assert queued(5) == [str(routine)]
    assert queued(0) == [str(job) for job in reversed(sweep)]  # LPUSH: the oldest at the right
    assert [producer.job(job)["priority"] for job in (urgent, routine, *sweep)] == [9, 5, 0, 0]
    again = producer.resubmit(urgent)
    assert producer.job(again)["priority"] == 9
    for bad in (10, -1, 1.5, True):
        with pytest.raises(DeserializationError, match="priority"):
            producer.submit(lab.SQUARE, {"x": 1}, priority=bad)  # type: ignore[arg-type]


@pytest.mark.redis
def test_the_outbox_republishes_a_job_on_its_priority_list(producer):
    from broker.beat.recovery import publish_outbox
    from broker.storage.tables import database_now

    [job] = producer.submit_many(lab.SQUARE, [{"x": 5}], priority=8)
    client = redis_client(producer.settings.broker_url)
    queue = priorities.queue_list(keys.service_queue(_service_id(producer, lab.SQUARE)), 8)
    client.delete(queue)
    with open_session(producer.settings.database_url) as session:
        _unpublish(session, job)
        assert publish_outbox(session, producer.publisher, database_now(session), grace=0) == 1
    assert client.llen(queue) == 1


@pytest.mark.redis
def test_a_republish_of_several_priorities_reaches_a_waiting_worker_highest_first(
    producer, redis_url
):
    """Beat sends jobs again in one go (outbox, overtaken, lost workers): the 9 must start first."""
    from broker.beat.recovery import publish_outbox

    routine = [producer.submit(lab.SQUARE, {"x": x}, priority=1) for x in range(3)]
    urgent = producer.submit(lab.SQUARE, {"x": 9}, priority=9)
    client = redis_client(producer.settings.broker_url)
    lists = priorities.queue_lists(keys.service_queue(_service_id(producer, lab.SQUARE)))
    client.delete(*lists)  # their messages never left, as far as beat can tell
    with open_session(producer.settings.database_url) as session:
        for job in [*routine, urgent]:
            _unpublish(session, job)

        def republish() -> None:
            assert publish_outbox(session, producer.publisher, database_now(session), 0) == 4

        [(_list, first)] = popped_by_waiting_consumers(redis_url, lists, republish)
    rest = [_job_id(m) for name in lists for m in reversed(client.lrange(name, 0, -1))]
    assert [_job_id(first), *rest] == [str(job) for job in (urgent, *routine)]


def _job_id(message: bytes) -> str:
    """The job a task message on a queue's list carries."""
    return str(json.loads(base64.b64decode(json.loads(message)["body"]))[1]["job_id"])


def _unpublish(session: Session, job: uuid.UUID) -> None:
    row = session.get(JobRow, job)
    assert row is not None
    row.published_at = None
    session.commit()


@pytest.mark.postgres
@pytest.mark.redis
def test_the_cli_holds_resumes_limits_and_submits_with_a_priority(cli):
    run = cli
    schema = json.dumps(lab.NUMBER_SCHEMA)
    run("services", "create", "Magnet", "--parameters", schema, "--results", "{}")
    run("services", "create", "Laser", "--parameters", schema, "--results", "{}")
    run("services", "create", "Oven", "--parameters", schema, "--results", "{}")
    run("services", "set", "Oven", "--max-running", "1")
    assert "held" in run("services", "hold", "Magnet", "--reason", "helium refill")
    shown = json.loads(run("services", "show", "Magnet"))
    assert (shown["held"], shown["held_reason"]) == (True, "helium refill")
    status = run("status")
    assert "held by" in status
    assert "helium refill" in status
    assert " 0/1" in status  # Oven: none of its one slot running
    run("jobs", "submit", "Laser", '{"x": 1}', "--not-before", "2099-12-24T08:00:00Z")
    assert "(1 not before a later time)" in run("status")
    job = uuid.UUID(run("jobs", "submit", "Magnet", '{"x": 2}', "--priority", "8").strip())
    assert json.loads(run("jobs", "show", str(job)))["priority"] == 8
    shown = json.loads(run("services", "show", "Magnet"))
    assert (shown["jobs_waiting"], shown["jobs_running"], shown["jobs_parked"]) == (1, 0, 0)
    assert "resumed" in run("services", "resume", "Magnet")
    assert "not held" in run("services", "resume", "Magnet")
    run("services", "set", "Oven", "--max-running", "none")
    assert json.loads(run("services", "show", "Oven"))["max_running"] is None
    bad = cli.invoke("jobs", "submit", "Magnet", '{"x": 2}', "--priority", "10")
    assert bad.exit_code != 0


@pytest.mark.postgres
@pytest.mark.redis
def test_http_holds_resumes_limits_and_submits_with_a_priority(api, stack):
    service = api.create_service()
    held = api.post(
        f"/services/{service}/hold",
        json={"reason": "vacuum leak"},
        headers={"X-TopChef-Worker": "console-3"},
    )
    assert held.status_code == 200, held.text
    meta = held.json()["meta"]
    assert (meta["held"], meta["held_by"], meta["held_reason"]) == (
        True,
        "http:console-3",
        "vacuum leak",
    )
    assert meta["changed"] is True
    assert "held" not in held.json()["data"]  # the Java client refuses fields it does not know
    assert api.post(f"/services/{service}/hold").json()["meta"]["changed"] is False

    job = api.post(f"/services/{service}/jobs", json={"parameters": {"x": 1}, "priority": 7})
    assert job.status_code == 201, job.text
    job_id = job.json()["data"]["id"]
    assert api.get(f"/jobs/{job_id}").json()["meta"]["priority"] == 7
    claimed = api.post(f"/services/{service}/jobs/claim?wait=0", headers={"X-TopChef-Worker": "r"})
    assert claimed.status_code == 204  # held: nothing starts, over HTTP either
    working = api.patch(f"/jobs/{job_id}", json={"status": "WORKING"})
    assert working.status_code == 409
    assert "held" in working.text

    resumed = api.post(f"/services/{service}/resume")
    assert resumed.json()["meta"]["held"] is False
    claimed = api.post(f"/services/{service}/jobs/claim?wait=5", headers={"X-TopChef-Worker": "r"})
    assert claimed.status_code == 200
    assert claimed.json()["data"]["id"] == job_id

    limited = api.patch(f"/services/{service}", json={"max_running": 1})
    assert limited.json()["meta"]["max_running"] == 1
    assert (
        api.patch(f"/services/{service}", json={"max_running": None}).json()["meta"]["max_running"]
        is None
    )
    bad = api.post(f"/services/{service}/jobs", json={"parameters": {"x": 1}, "priority": 12})
    assert bad.status_code == 400
    paths = api.get("/openapi.json").json()["paths"]
    assert "/services/{service_id}/hold" in paths
    assert "/services/{service_id}/resume" in paths


@pytest.mark.redis
def test_a_later_job_of_a_higher_priority_does_not_count_as_overtaking(producer):
    """Beat sends again a job whose message vanished only if a job it should precede ran."""
    low = producer.submit(lab.SQUARE, {"x": 1}, priority=1)
    urgent = producer.submit(lab.SQUARE, {"x": 2}, priority=9)
    with open_session(producer.settings.database_url) as session:
        now = database_now(session)
        session.execute(sa.update(JobRow).values(published_at=now))
        _started(session, urgent, now - timedelta(seconds=60))
        assert republish_overtaken(session, producer._claims, producer.publisher, now, 1.0) == []
        later_low = producer.submit(lab.SQUARE, {"x": 3}, priority=1)
        session.execute(sa.update(JobRow).where(JobRow.id == later_low).values(published_at=now))
        _started(session, later_low, now - timedelta(seconds=60))
        resent = republish_overtaken(session, producer._claims, producer.publisher, now, 1.0)
    assert resent == [low]


def _started(session: Session, job: uuid.UUID, when: datetime) -> None:
    session.execute(
        sa.update(JobRow).where(JobRow.id == job).values(status="WORKING", date_started=when)
    )
    session.commit()


@pytest.mark.postgres
@pytest.mark.redis
def test_metrics_show_holds_and_parked_jobs_and_count_every_priority_list(stack):
    from test_metrics import scrape, value

    from broker.messaging.claims import ClaimResult, Parking
    from broker.messaging.messages import StateMessage, parameters_digest
    from broker.ops.metrics import serve

    stack.create_lab_services()
    stack.producer.hold_service(lab.SQUARE, "maintenance")
    parked = stack.producer.submit(lab.SQUARE, {"x": 1}, priority=9)
    stack.producer.submit(lab.FAILING, {"x": 3}, not_before=datetime.now(UTC) + timedelta(hours=1))
    stack.producer.submit(lab.SQUARE, {"x": 2}, priority=1)
    service_id = stack.service(lab.SQUARE).id
    working = StateMessage("status", service_id, parked, "WORKING", worker="w")
    parking = Parking("{}", "unused", 9)  # a delivery a worker took, parked as it would be
    digest = parameters_digest({"x": 1})
    claimed = stack.claims.claim(parked, 1, "w", working, digest, parking=parking)
    assert claimed is ClaimResult.PARKED
    server = serve(stack.settings, 0)
    try:
        families = scrape(server)
    finally:
        server.close()
    assert value(families, "topchef_service_held", service=lab.SQUARE) == 1
    assert value(families, "topchef_service_held", service=lab.FAILING) == 0
    assert value(families, "topchef_parked_jobs", service=lab.SQUARE) == 1
    assert value(families, "topchef_jobs_scheduled", service=lab.FAILING) == 1
    assert value(families, "topchef_jobs_scheduled", service=lab.SQUARE) == 0
    assert value(families, "topchef_queue_depth", service=lab.SQUARE) == 2  # lists 9 and 1
