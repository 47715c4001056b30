"""What a newcomer types and returns, taken as meant or refused saying where and why.

Ids as the CLI prints them, whole numbers for ``integer`` fields, NumPy results,
a sweep's bad point, a mistyped service, ``--not-before`` as a person writes it,
and reading past results from a stack that has stopped: through the producer,
the CLI, the HTTP gateway and real worker processes.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime, timedelta

import lab
import lab_inputs as li
import pytest
import sqlalchemy as sa
from support import (
    start_in_session,
    stop_session,
    topchef,
    unconfigured_environment,
    wait_for,
)

from broker.errors import (
    ConfigurationError,
    DeserializationError,
    JobCancelledError,
    NotUUIDError,
    ServiceWithNameNotFound,
)
from broker.messaging import keys, priorities
from broker.messaging.messages import parameters_digest
from broker.producer import Producer
from broker.producer.reader import Reader
from broker.settings import Settings
from broker.storage.tables import JobRow, open_session

pytest_plugins = ["gateway_support"]  # the gateway and api fixtures


def _one_line(result, expected: str) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert expected in lines[0], lines[0]
    return lines[0]


# -- ids: a UUID or its text ----------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
def test_every_call_that_takes_a_job_id_takes_the_text_the_cli_prints(stack):
    stack.create_lab_services()
    producer = stack.producer
    job = str(producer.submit(lab.SQUARE, {"x": 2}))  # as `topchef jobs submit` prints it
    assert producer.job(job)["id"] == job
    assert producer.job(f" {job.upper()}\n")["id"] == job
    assert [move["to"] for move in producer.history(job)] == ["REGISTERED"]
    assert producer.provenance(job)["submitted_by"]
    again = producer.resubmit(job)
    assert producer.job(again)["resubmitted_from"] == job
    assert producer.cancel(job) is True
    assert producer.abort(str(again)) == "cancelled"
    outcomes = producer.outcomes([job, str(again)], timeout=1)
    assert [(str(o.job_id), o.status.value) for o in outcomes] == [
        (job, "CANCELLED"),
        (str(again), "CANCELLED"),
    ]
    with pytest.raises(JobCancelledError):
        producer.wait(job, timeout=1)
    reader = Reader(stack.settings.database_url)
    assert reader.job(job)["status"] == "CANCELLED"
    assert reader.earlier_attempts(job) == []


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize(
    "call",
    [
        lambda p, bad: p.job(bad),
        lambda p, bad: p.history(bad),
        lambda p, bad: p.provenance(bad),
        lambda p, bad: p.wait(bad, timeout=1),
        lambda p, bad: p.wait_all([uuid.uuid4(), bad], timeout=1),
        lambda p, bad: p.outcomes([bad], timeout=1),
        lambda p, bad: p.cancel(bad),
        lambda p, bad: p.abort(bad),
        lambda p, bad: p.resubmit(bad),
        lambda p, bad: p.release_parked(bad),
    ],
    ids=[
        "job",
        "history",
        "provenance",
        "wait",
        "wait_all",
        "outcomes",
        "cancel",
        "abort",
        "resubmit",
        "release_parked",
    ],
)
@pytest.mark.parametrize("bad", ["8a94d8b8", "not-a-job", "", 42, None])
def test_an_id_that_is_not_one_is_a_clear_error_naming_it(stack, call, bad):
    with pytest.raises(NotUUIDError) as caught:
        call(stack.producer, bad)
    assert caught.value.value == bad
    assert f"{bad!r} is not a valid UUID" in str(caught.value)


# -- a sweep's bad point, and a mistyped service ------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
def test_a_sweep_error_names_the_point_and_a_single_job_s_does_not(stack):
    stack.create_lab_services()
    sweep = [{"x": 1}, {"x": 2}, {"x": "three"}]
    with pytest.raises(DeserializationError) as caught:
        stack.producer.submit_many(lab.SQUARE, sweep)
    assert caught.value.path == (2, "x")
    assert str(caught.value).endswith('parameters[2].x: "three" is not of type "integer"')
    for _ in range(2):  # the second submit takes PostgreSQL's one-statement path
        with pytest.raises(DeserializationError) as single:
            stack.producer.submit(lab.SQUARE, {"x": "three"})
        assert single.value.path == ("x",)
        stack.producer.submit(lab.SQUARE, {"x": 1})
    assert stack.count_jobs() == 2


@pytest.mark.postgres
@pytest.mark.redis
def test_an_unknown_service_name_says_which_one_was_probably_meant(stack):
    stack.create_lab_services()
    producer = stack.producer
    for mistyped in ("square", "Sqare", "Squares"):
        with pytest.raises(ServiceWithNameNotFound) as caught:
            producer.submit(mistyped, {"x": 1})
        assert caught.value.suggestions == (lab.SQUARE,)
        assert str(caught.value).endswith(
            f"No service is named {mistyped!r}; did you mean 'Square'?"
        )
    with pytest.raises(ServiceWithNameNotFound) as both:
        producer.submit_many("Faling", [{"x": 1}])
    assert both.value.suggestions == (lab.FAILING,)
    with pytest.raises(ServiceWithNameNotFound) as far:
        producer.hold_service("Oven")
    assert (far.value.suggestions, str(far.value)) == (
        (),
        "Service not found: No service is named 'Oven'",
    )


@pytest.mark.postgres
@pytest.mark.redis
def test_the_cli_says_did_you_mean_and_names_a_sweep_s_point(cli, stack):
    stack.create_lab_services()
    _one_line(
        cli.invoke("jobs", "submit", "squre", '{"x": 1}'),
        "No service is named 'squre'; did you mean 'Square'?",
    )
    _one_line(cli.invoke("services", "show", "Held up"), "did you mean 'Held'?")
    _one_line(
        cli.invoke("jobs", "submit", lab.SQUARE, '[{"x": 1}, {"x": "a"}]'),
        'invalid parameters[1].x: "a" is not of type "integer"',
    )
    _one_line(
        cli.invoke("jobs", "submit", lab.SQUARE, '{"x": "a"}'),
        'invalid parameters.x: "a" is not of type "integer"',
    )
    assert stack.count_jobs() == 0


# -- whole numbers for integer fields, wherever a job is submitted ----------------------------


def _stored(stack, job: uuid.UUID) -> dict:
    with open_session(stack.settings.database_url) as session:
        return session.get(JobRow, job).parameters


def _queued(stack, service: str) -> dict[uuid.UUID, dict]:
    """The parameters of every job message on the service's queue, as a worker receives them."""
    queue = priorities.queue_list(keys.service_queue(stack.service(service).id), priorities.DEFAULT)
    raw = stack.redis.lrange(queue, 0, -1)
    bodies = [json.loads(base64.b64decode(json.loads(message)["body"])) for message in raw]
    return {uuid.UUID(kwargs["job_id"]): kwargs["parameters"] for _a, kwargs, _e in bodies}


@pytest.mark.postgres
@pytest.mark.redis
def test_a_whole_float_is_registered_stored_and_sent_as_an_int(stack):
    stack.create_lab_services()
    producer = stack.producer
    jobs = [producer.submit(lab.SQUARE, {"x": 10.0}) for _ in range(2)]  # both submit paths
    jobs += producer.submit_many(lab.SQUARE, [{"x": 3.0}, {"x": 4}], jobs_per_message=1)
    for job, x in zip(jobs, (10, 10, 3, 4), strict=True):
        assert _stored(stack, job) == {"x": x}
        assert type(_stored(stack, job)["x"]) is int
        assert type(producer.job(str(job))["parameters"]["x"]) is int
    sent = _queued(stack, lab.SQUARE)
    assert sent == {job: {"x": x} for job, x in zip(jobs, (10, 10, 3, 4), strict=True)}
    for job, parameters in sent.items():  # the registration a worker checks a delivery against
        assert type(parameters["x"]) is int
        registered = stack.redis.hget(keys.claim(job), "digest")
        assert registered.decode() == parameters_digest(parameters)


@pytest.mark.postgres
@pytest.mark.redis
def test_over_http_a_whole_float_is_an_int_too(api, stack):
    service = api.create_service("HTTP counter", li.COUNTER_SCHEMA, li.RESULTS)
    job = api.submit(service, {"points": 7.0})
    assert api.job(job)["data"]["parameters"] == {"points": 7}
    assert type(_stored(stack, uuid.UUID(job))["points"]) is int
    refused = api.post(f"/services/{service}/jobs", json={"parameters": {"points": 7.5}})
    assert refused.status_code == 400
    assert "parameters.points" in refused.json()["errors"][0]["detail"]


# -- not before: ISO 8601 as a person writes it, and delays from the CLI ----------------------


@pytest.mark.postgres
@pytest.mark.redis
def test_the_cli_takes_iso_8601_without_seconds_and_delays(cli, stack):
    stack.create_lab_services()
    job = cli("jobs", "submit", lab.SQUARE, '{"x": 1}', "--not-before", "2030-01-01T08:00Z").strip()
    assert stack.job(job)["not_before"] == "2030-01-01T08:00:00+00:00"
    offset = cli(
        "jobs", "submit", lab.SQUARE, '{"x": 1}', "--not-before", "2030-01-01T09:00:00.25+01:00"
    ).strip()
    assert stack.job(offset)["not_before"] == "2030-01-01T08:00:00.250000+00:00"

    before = datetime.now(UTC)
    later = cli("jobs", "submit", lab.SQUARE, '[{"x": 1}, {"x": 2}]', "--not-before", "+10m")
    after = datetime.now(UTC)
    for job in later.split():
        due = datetime.fromisoformat(stack.job(job)["not_before"])
        # Counted on the database's clock, which is this machine's here.
        assert (
            before + timedelta(minutes=10, seconds=-5)
            <= due
            <= after + timedelta(minutes=10, seconds=5)
        )
        assert stack.job(job)["status"] == "REGISTERED"

    _one_line(
        cli.invoke("jobs", "submit", lab.SQUARE, '{"x": 1}', "--not-before", "2030-01-01T08:00"),
        "invalid --not-before: '2030-01-01T08:00' has no zone: add Z for UTC or its offset",
    )
    _one_line(
        cli.invoke("jobs", "submit", lab.SQUARE, '{"x": 1}', "--not-before", "tomorrow"),
        "invalid --not-before: 'tomorrow' is not a time: give ISO 8601 with its zone",
    )
    _one_line(
        cli.invoke("jobs", "submit", lab.SQUARE, '{"x": 1}', "--not-before", "+10 minutes"),
        "is not a delay: give a delay from now such as +30s, +10m",
    )
    assert stack.count_jobs() == 4


@pytest.mark.postgres
@pytest.mark.redis
def test_python_takes_a_delay_on_the_database_s_clock(stack):
    stack.create_lab_services()
    with open_session(stack.settings.database_url) as session:
        now = session.scalar(sa.select(sa.func.now()))
    job = stack.producer.submit(lab.SQUARE, {"x": 1}, not_before=timedelta(hours=1))
    due = datetime.fromisoformat(stack.job(job)["not_before"])
    assert timedelta(minutes=59) < due - now < timedelta(minutes=61)
    with pytest.raises(DeserializationError, match="at most 3653 days"):
        stack.producer.submit(lab.SQUARE, {"x": 1}, not_before=timedelta(days=10**6))


@pytest.mark.postgres
@pytest.mark.redis
def test_over_http_not_before_takes_the_same_iso_8601_forms(api, stack):
    service = api.create_service("HTTP later", {"type": "object"}, {"type": "object"})

    def submit(when: object):
        return api.post(f"/services/{service}/jobs", json={"parameters": {}, "not_before": when})

    for text in ("2030-01-01T08:00Z", "2030-01-01T09:00+01:00", "2030-01-01t08:00:00.000z"):
        created = submit(text)
        assert created.status_code == 201, created.text
        due = api.job(created.json()["data"]["id"])["meta"]["not_before"]
        assert datetime.fromisoformat(due) == datetime(2030, 1, 1, 8, tzinfo=UTC)
    for text, why in [
        ("2030-01-01T08:00", "has no zone"),
        ("+10m", "is not a time"),
        ("soon", "is not a time"),
        (12, "must be a time with its zone"),
    ]:
        refused = submit(text)
        assert refused.status_code == 400, refused.text
        assert why in refused.json()["errors"][0]["detail"], refused.text


# -- through real workers -------------------------------------------------------------------


def _lab_inputs_services(producer: Producer) -> None:
    producer.create_service(li.COUNTER, "counts", li.COUNTER_SCHEMA, li.RESULTS)
    producer.create_service(li.SPECTRUM, "measures", li.SPECTRUM_SCHEMA, li.RESULTS)


@pytest.mark.slow  # starts a worker process
@pytest.mark.postgres
@pytest.mark.redis
def test_a_handler_gets_ints_for_whole_floats_and_may_return_numpy(stack, api):
    _lab_inputs_services(stack.producer)
    stack.start_mirror()
    stack.worker(module="lab_inputs")
    producer = stack.producer
    counted = [producer.submit(li.COUNTER, {"points": 3.0})]
    counted += producer.submit_many(li.COUNTER, [{"points": 2.0}, {"points": 1}])
    service = str(stack.service(li.COUNTER).id)
    counted.append(uuid.UUID(api.submit(service, {"points": 4.0})))
    results = producer.wait_all([str(job) for job in counted], timeout=60)
    assert results == [
        {"received": "int", "steps": [0, 1, 2]},
        {"received": "int", "steps": [0, 1]},
        {"received": "int", "steps": [0]},
        {"received": "int", "steps": [0, 1, 2, 3]},
    ]

    measured = producer.submit(li.SPECTRUM, {"points": 3})
    assert producer.wait(measured, timeout=60) == {
        "spectrum": [0.0, 0.5, 1.0],
        "peak": 1.0,
        "points": 3,
    }
    gap = producer.submit(li.SPECTRUM, {"points": 3, "gap": True})
    [outcome] = producer.outcomes([gap], timeout=60)
    assert outcome.status.value == "ERROR"
    assert outcome.detail == (
        "invalid results: results.spectrum[1]: nan is not a JSON number: "
        "JSON has no NaN or infinity; give None for a missing value"
    )


# -- reading a stopped stack ---------------------------------------------------------------


@pytest.mark.postgres
def test_a_producer_without_a_broker_reads_and_says_what_needs_one(postgres_url):
    from conftest import truncate_all

    truncate_all(postgres_url)
    reader_only = Producer(Settings(database_url=postgres_url))
    with open_session(postgres_url) as session, session.begin():
        from broker.models.service import Service

        service = Service.new("Oven", "", {"type": "object"}, {"type": "object"}, session)
        job = service.new_job({"tray": 1}).id
        session.flush()
    assert reader_only.job(str(job))["parameters"] == {"tray": 1}
    assert reader_only.outcomes([job], timeout=0)[0].status.value == "REGISTERED"
    for needs_redis in (
        lambda: reader_only.submit("Oven", {"tray": 2}),
        lambda: reader_only.cancel(job),
        lambda: reader_only.hold_service("Oven"),
    ):
        with pytest.raises(ConfigurationError, match="this call needs the message broker"):
            needs_redis()
    assert reader_only.job(job)["status"] == "REGISTERED"


@pytest.mark.slow  # starts `topchef up`
def test_past_results_are_read_from_python_after_topchef_up_stopped(tmp_path):
    env = unconfigured_environment()
    up_command = topchef("up", "--worker", "workers.echo", "-c", "1")
    up = start_in_session(up_command, tmp_path, env, tmp_path / "up.out")
    try:
        wait_for(
            lambda: re.search(r"Broker: redis\+socket://", (tmp_path / "up.out").read_text()),
            60,
            "topchef up to start",
        )
        submitted = subprocess.run(
            [sys.executable, "-m", "broker", "jobs", "submit", "Echo", '{"message": "kept"}'],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        job = submitted.stdout.strip()
        waited = subprocess.run(
            [sys.executable, "-m", "broker", "jobs", "wait", job, "--timeout", "30"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert waited.returncode == 0, waited.stderr
        assert stop_session(up, signal.SIGINT) == 0
    finally:
        stop_session(up, signal.SIGKILL)
    program = textwrap.dedent(
        f"""
        from broker.producer import Producer, TopChefError

        producer = Producer()
        print(producer.wait({job!r}, timeout=1))
        print(producer.history({job!r})[-1]["to"])
        try:
            producer.submit("Echo", {{"message": "again"}})
        except TopChefError as error:
            print(error)
        """
    )
    read = subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert read.returncode == 0, read.stderr
    results, last, refusal = read.stdout.splitlines()
    assert (results, last) == ("{'message': 'kept'}", "COMPLETED")
    assert refusal.startswith("Configuration error: this call needs the message broker: ")
    assert f"the TopChef stack in {tmp_path} is not running" in refusal


@pytest.mark.redis
def test_an_unconfigured_producer_finds_a_stack_that_started_after_it(
    tmp_path, monkeypatch, redis_url
):
    from broker.settings import DATABASE_FILE, STATE_DIR, URL_FILE
    from broker.storage.tables import create_schema

    for name in ("TOPCHEF_BROKER_URL", "TOPCHEF_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    create_schema(f"sqlite:///{tmp_path / DATABASE_FILE}")  # a stack that ran here, and stopped
    (tmp_path / STATE_DIR).mkdir()
    producer = Producer()
    with pytest.raises(ConfigurationError, match=f"the TopChef stack in {tmp_path} is not running"):
        producer.create_service("Oven", "", {"type": "object"}, {"type": "object"})
    (tmp_path / STATE_DIR / URL_FILE).write_text(redis_url + "\n")  # and now it runs again
    producer.create_service("Oven", "", {"type": "object"}, {"type": "object"})
    job = producer.submit("Oven", {"tray": 1})
    assert producer.job(str(job))["status"] == "REGISTERED"
