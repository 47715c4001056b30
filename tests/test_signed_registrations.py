"""Only signed registrations run, even for someone who can write to Redis.

A lab PC holds the Redis password, so it can write a claim hash and a parameters
digest as well as any producer, queue a message, and rewrite a parked one.
These tests attack as such a PC would, through a real Redis and a real worker
process, and count what the handler ran; then fuzz what a worker verifies.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import lab
import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import keyed, wait_for

from broker.beat.refusals import Refusals
from broker.errors import ConfigurationError
from broker.messaging import keys
from broker.messaging.claims import Claims
from broker.messaging.connections import celery_url, text
from broker.messaging.messages import ServiceDescriptor, parameters_digest
from broker.models.service import Service
from broker.producer import Producer
from broker.settings import Settings
from broker.storage.tables import JobRow, ServiceRow, open_session
from broker.trust import credentials
from broker.trust.credentials import Credential
from broker.trust.registrations import Registrar, RegistrationCheck
from broker.trust.reports import ReportKey
from broker.trust.signing import SigningKey, read_private, read_public
from broker.worker.handlers import Declaration
from broker.worker.registrations import Registrations
from broker.worker.runtime import Refused, WorkerRuntime

pytestmark = [pytest.mark.redis]


def _forger(stack) -> Celery:
    """Anyone with the broker's address: a stock Celery app, nothing of TopChef's."""
    return Celery("forger", broker=celery_url(stack.settings.broker_url), set_as_current=False)


def _refused(stack) -> dict[str, int]:
    return {text(k): int(v) for k, v in stack.redis.hgetall(keys.REFUSED).items()}


def _register_by_hand(stack, service_id: uuid.UUID, job: uuid.UUID, parameters: dict) -> None:
    """What register.lua writes, written with plain HSET: the forger's registration."""
    stack.redis.hset(
        keys.claim(job),
        mapping={"service": str(service_id), "digest": parameters_digest(parameters)},
    )


def _genuine_kwargs(stack, job: uuid.UUID) -> dict[str, Any]:
    """The kwargs of a job's genuine message, as the producer published it."""
    service = stack.service(lab.HELD).id
    for queue in (keys.service_queue(service), *_lists(stack, service)):
        for raw in stack.redis.lrange(queue, 0, -1):
            envelope = json.loads(raw)
            _args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
            if kwargs.get("job_id") == str(job):
                return kwargs
    raise AssertionError(f"no queued message of job {job}")


def _lists(stack, service: uuid.UUID) -> list[str]:
    from broker.messaging import priorities

    return priorities.queue_lists(keys.service_queue(service))


def _taken_off(stack, job: uuid.UUID) -> dict[str, Any]:
    """A registered job's genuine kwargs; its message is then taken off the queue."""
    kwargs = _genuine_kwargs(stack, job)
    stack.redis.delete(*_lists(stack, stack.service(lab.HELD).id))
    return kwargs


def _send_again(stack, job: uuid.UUID) -> None:
    """The genuine message once more, as beat's outbox would send it."""
    with open_session(stack.settings.database_url) as session:
        row = session.get(JobRow, job)
        service = Service(session.get(ServiceRow, row.service_id))
        stack.producer.publisher.publish_jobs([service.message_for(row)])


@pytest.mark.slow
@pytest.mark.postgres
def test_a_registration_written_by_hand_never_runs_whatever_signature_it_carries(stack):
    stack.create_lab_services()
    stack.start_mirror()
    held = stack.service(lab.HELD).id
    # A genuine job, whose signature the forger copies; its message is taken off.
    donor = stack.producer.submit(lab.HELD, {"tag": "donor"})
    copied = _taken_off(stack, donor)["signature"]
    made_up = base64.urlsafe_b64encode(SigningKey.generate().sign(b"anything")).decode()
    for tag in ("no signature", "made up", "copied", "donor"):
        stack.release(tag)
    worker = stack.worker()
    stack.wait_available(lab.HELD)
    forger = _forger(stack)
    for tag, signature in (("no signature", None), ("made up", made_up), ("copied", copied)):
        job, parameters = uuid.uuid4(), {"tag": tag}
        _register_by_hand(stack, held, job, parameters)
        kwargs = {"job_id": str(job), "service_id": str(held), "parameters": parameters}
        if signature is not None:
            kwargs["signature"] = signature
        forger.send_task(keys.JOB_TASK, kwargs=kwargs, queue=keys.service_queue(held))
    # The donor's own id, with other parameters and its genuine signature.
    forger.send_task(
        keys.JOB_TASK,
        kwargs={
            "job_id": str(donor),
            "service_id": str(held),
            "parameters": {"tag": "copied"},
            "signature": copied,
        },
        queue=keys.service_queue(held),
    )

    wait_for(lambda: _refused(stack) == {"forged": 4}, 30, "four forged refusals")
    assert sum(stack.runs(tag) for tag in ("no signature", "made up", "copied", "donor")) == 0
    assert stack.count_jobs() == 1  # nothing forged reached SQL
    assert stack.status(donor) == "REGISTERED"
    assert worker.log().count("(forged)") == 4
    entries = stack.redis.xrange(keys.REFUSED_LOG)
    assert [text(fields[b"reason"]) for _id, fields in entries] == ["forged"] * 4

    # The refusals poisoned nothing: the genuine message runs, once.
    _send_again(stack, donor)
    assert stack.producer.wait(donor, timeout=30) == {"tag": "donor"}
    assert stack.runs("donor") == 1


def _rewrite_parked(stack, job: uuid.UUID, parameters: dict) -> None:
    """Rewrite a parked message's parameters and the claim's digest, as a lab PC can."""
    claim = keys.claim(job)
    envelope = json.loads(stack.redis.hget(claim, "parked_message"))
    args, kwargs, embed = json.loads(base64.b64decode(envelope["body"]))
    kwargs["parameters"] = parameters
    envelope["body"] = base64.b64encode(json.dumps([args, kwargs, embed]).encode()).decode()
    stack.redis.hset(
        claim,
        mapping={
            "parked_message": json.dumps(envelope),
            "digest": parameters_digest(parameters),
        },
    )


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("per_message", [1, 3])
def test_a_rewritten_parked_message_never_runs_and_the_record_stays_true(stack, per_message):
    """Alone (its own signature) and out of a batch (the batch's, stored when it parked)."""
    stack.create_lab_services()
    stack.start_mirror()
    held = stack.service(lab.HELD).id
    tags = ["small", "other-1", "other-2"][:per_message]
    for tag in [*tags, "large"]:
        stack.release(tag)
    stack.producer.set_jobs_per_message(lab.HELD, per_message)
    assert stack.producer.hold_service(lab.HELD, "rewriting")
    jobs = stack.producer.submit_many(lab.HELD, [{"tag": tag} for tag in tags])
    stack.worker()
    wait_for(lambda: stack.claims.parked([held])[0] == per_message, 30, "the jobs to park")
    target = jobs[0]
    if per_message > 1:
        assert stack.redis.exists(keys.signed_batch(_parked_kwargs(stack, target)["signed_batch"]))

    _rewrite_parked(stack, target, {"tag": "large"})
    assert stack.producer.resume_service(lab.HELD)
    wait_for(lambda: _refused(stack) == {"forged": 1}, 30, "the rewritten delivery's refusal")
    for other in jobs[1:]:  # the batch's other parked jobs still verify, and run
        stack.wait_status(other, "COMPLETED")
    assert stack.runs("large") == 0
    assert stack.status(target) == "REGISTERED"

    # Beat reads the refusal and sends the job again from SQL, signed: it runs
    # once, with what SQL records. A second look finds nothing new to send.
    refusals = Refusals(stack.redis)
    assert stack.tick(refusals=refusals).republished == [target]
    done = stack.wait_status(target, "COMPLETED")
    assert stack.tick(refusals=refusals).republished == []
    assert done["parameters"] == done["results"] == {"tag": "small"}
    assert (stack.runs("small"), stack.runs("large")) == (1, 0)
    assert all(stack.runs(tag) == 1 for tag in tags)


def _parked_kwargs(stack, job: uuid.UUID) -> dict[str, Any]:
    envelope = json.loads(stack.redis.hget(keys.claim(job), "parked_message"))
    return json.loads(base64.b64decode(envelope["body"]))[1]


@pytest.mark.slow
@pytest.mark.postgres
def test_signed_work_runs_once_alone_in_batches_and_parked_out_of_a_batch(stack):
    stack.create_lab_services()
    stack.start_mirror()
    square = stack.service(lab.SQUARE).id
    stack.worker("--concurrency", "2")
    alone = stack.producer.submit(lab.SQUARE, {"x": 3})
    stack.producer.set_jobs_per_message(lab.SQUARE, 5)
    batched = stack.producer.submit_many(lab.SQUARE, [{"x": x} for x in range(12)])
    assert stack.producer.wait(alone, timeout=30) == {"square": 9}
    for x, job in enumerate(batched):
        assert stack.producer.wait(job, timeout=30) == {"square": x * x}
    # A batch whose jobs all park while the service is held, then resumed.
    assert stack.producer.hold_service(lab.SQUARE, "sample change")
    parked = stack.producer.submit_many(lab.SQUARE, [{"x": x} for x in range(5)])
    wait_for(lambda: stack.claims.parked([square])[0] == 5, 30, "the batch's jobs to park")
    assert stack.producer.resume_service(lab.SQUARE)
    for x, job in enumerate(parked):
        assert stack.producer.wait(job, timeout=30) == {"square": x * x}
    assert _refused(stack) == {}
    with open_session(stack.settings.database_url) as session:
        attempts = session.query(JobRow.attempts).filter(JobRow.id.in_(parked)).all()
    assert {count for (count,) in attempts} == {1}  # each ran once


# -- the verification input, fuzzed through a runtime on a real Redis ------------

SERVICE = uuid.UUID("00000000-0000-4000-8000-000000000025")
DESCRIPTOR = ServiceDescriptor(SERVICE, "Fuzzed", {"type": "object"}, 30.0)


def _never(parameters: dict[str, Any]) -> dict[str, Any]:
    raise AssertionError(f"the handler ran on {parameters!r}")


@pytest.fixture
def client(real_redis_url: str) -> redis.Redis:
    """The test Redis, empty, with one service in its directory."""
    client = redis.Redis.from_url(real_redis_url)
    client.flushdb()
    client.hset(keys.SERVICE_IDS, DESCRIPTOR.name, str(SERVICE))
    client.hset(keys.SERVICE_DESCRIPTORS, str(SERVICE), DESCRIPTOR.to_json())
    return client


@pytest.fixture
def runtime(real_redis_url: str, client: redis.Redis, tmp_path: Path) -> WorkerRuntime:
    """A worker runtime serving that service, whose handler fails the test if it ever runs."""
    key_file = tmp_path / "refusing.key"  # its reports go nowhere: no mirror reads them
    credentials.write(key_file, Credential("refusing", ReportKey.generate()))
    settings = keyed(Settings(broker_url=real_redis_url, worker_key=str(key_file)))
    return WorkerRuntime(settings, [Declaration(DESCRIPTOR.name, _never)])


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
SIGNATURES = (
    st.none()
    | st.text(max_size=120)
    | st.binary(max_size=64).map(lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("="))
    | JSON
)
IDS = st.uuids().map(str) | st.text(max_size=40) | JSON


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    job_id=IDS,
    service_id=st.just(str(SERVICE)) | IDS,
    parameters=st.dictionaries(st.text(max_size=8), JSON, max_size=4) | JSON,
    signature=SIGNATURES,
    signed_batch=st.none() | st.text(max_size=120) | JSON,
    extra=st.dictionaries(st.text(max_size=10), JSON, max_size=3),
)
def test_any_message_a_worker_cannot_verify_is_refused_and_nothing_else_raises(
    runtime, client, job_id, service_id, parameters, signature, signed_batch, extra
):
    registered = uuid.uuid4()
    pipeline = client.pipeline()
    Claims(client).register(pipeline, SERVICE, [(registered, parameters_digest({}))])
    pipeline.execute()
    fields = {**extra, "job_id": job_id, "service_id": service_id, "parameters": parameters}
    fields |= {"signature": signature, "signed_batch": signed_batch}
    with pytest.raises(Refused) as refusal:
        runtime.run(**fields)
    assert refusal.value.reason in ("forged", "malformed")
    batch = [
        {"job_id": job_id, "parameters": parameters},
        {"job_id": str(registered), "parameters": {}},
    ]
    outcomes = runtime.run_batch(str(signed_batch), str(service_id), batch, signature)
    assert {outcome.status for outcome in outcomes} <= {"refused:forged", "refused:malformed"}


def test_a_signature_over_other_jobs_service_or_parameters_never_verifies(client):
    """The signature of the session's key over one registration, offered for its neighbours."""
    registrar = Registrar.from_file(os.environ["TOPCHEF_REGISTRATION_SIGNING_KEY"])
    registrations = Registrations(client, RegistrationCheck(registrar.verify_key))
    job, other = uuid.uuid4(), uuid.uuid4()
    digest = parameters_digest({"x": 1})
    signature = registrar.sign(SERVICE, [(job, digest)])
    single = registrations.single
    assert single(SERVICE, job, digest, signature, None) is not None
    assert single(SERVICE, other, digest, signature, None) is None
    assert single(uuid.uuid4(), job, digest, signature, None) is None
    assert single(SERVICE, job, parameters_digest({"x": 2}), signature, None) is None
    two = registrar.sign(SERVICE, [(job, digest), (other, digest)])
    batch = registrations.batch
    assert batch("b", SERVICE, [(job, digest), (other, digest)], two) is not None
    assert batch("b", SERVICE, [(job, digest)], two) is None  # a job dropped
    assert batch("b", SERVICE, [(other, digest), (job, digest)], two) is None  # reordered
    assert single(SERVICE, job, digest, two, None) is None  # a batch's, offered alone
    # A batch's stored registration proves its jobs only when it verifies.
    proof = batch("b", SERVICE, [(job, digest), (other, digest)], two)
    registrations.keep(proof)
    assert single(SERVICE, other, digest, two, "b") is not None
    client.set(keys.signed_batch("c"), proof.document + b"\0")
    assert single(SERVICE, other, digest, two, "c") is None
    assert single(SERVICE, other, digest, two, "absent") is None


def test_a_worker_without_the_public_key_refuses_to_start_in_one_line(real_redis_url):
    settings = Settings(broker_url=real_redis_url)
    with pytest.raises(ConfigurationError, match="TOPCHEF_REGISTRATION_PUBLIC_KEY"):
        WorkerRuntime(settings, [])


def test_a_producer_without_the_signing_key_refuses_a_submit_before_committing_it(
    real_redis_url, postgres_url
):
    from conftest import truncate_all

    truncate_all(postgres_url)
    producer = Producer(Settings(broker_url=real_redis_url, database_url=postgres_url))
    producer.create_service("Unsigned", "", {"type": "object"}, {"type": "object"})
    for submit in (
        lambda: producer.submit("Unsigned", {}),
        lambda: producer.submit_many("Unsigned", [{}, {}]),
    ):
        with pytest.raises(ConfigurationError, match="TOPCHEF_REGISTRATION_SIGNING_KEY"):
            submit()
    with open_session(postgres_url) as session:
        assert session.query(JobRow).count() == 0


def test_keys_init_makes_the_pair_once_and_says_where_each_half_goes(tmp_path):
    from click.testing import CliRunner

    from broker.cli import main

    runner = CliRunner()
    first = runner.invoke(
        main, ["keys", "init", str(tmp_path / "k"), "--public-dir", str(tmp_path / "p")]
    )
    assert first.exit_code == 0, first.output
    private, public = tmp_path / "k" / "registration.key", tmp_path / "p" / "registration.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = read_private(private)
    assert read_public(str(public)) == key.verify_key
    assert f"TOPCHEF_REGISTRATION_SIGNING_KEY={private}" in first.output
    assert key.verify_key.text in first.output
    assert key.text not in first.output
    again = runner.invoke(
        main, ["keys", "init", str(tmp_path / "k"), "--public-dir", str(tmp_path / "p")]
    )
    assert again.exit_code == 0, again.output
    assert read_private(private).text == key.text  # never replaced
