"""HTTP claims belong to their caller: a claimer that hangs up takes nothing; late reports count."""

from __future__ import annotations

import logging
import math
import socket
import uuid
from urllib.parse import urlsplit

import pytest
from support import wait_for

from broker.gateway.dispatch import Dispatcher
from broker.messaging import keys, priorities
from broker.messaging.claims import DEFAULT_WINDOW_SECONDS
from broker.mirror.process import Mirror
from broker.storage.tables import JobRow

pytest_plugins = ["gateway_support"]
pytestmark = [pytest.mark.postgres, pytest.mark.redis]

RIG = {"X-TopChef-Worker": "rig"}


def _hang_up_while_claiming(url: str, service: str, caplog) -> None:
    """A long-poll claim whose caller closes the connection while it waits for a job."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as connection:
        connection.sendall(
            f"POST /services/{service}/jobs/claim?wait=30 HTTP/1.1\r\n"
            f"Host: {parts.netloc}\r\nX-TopChef-Worker: ghost\r\nContent-Length: 0\r\n\r\n".encode()
        )
        wait_for(lambda: "http:ghost waits" in caplog.text, 30, "the claim to be waiting")


def test_a_long_poll_whose_caller_hung_up_takes_no_job(gateway, stack, caplog):
    caplog.set_level(logging.DEBUG, logger="broker.gateway.dispatch")
    api = gateway.api
    service = api.create_service()
    _hang_up_while_claiming(gateway.url, service, caplog)
    wait_for(
        lambda: "http:ghost hung up while waiting" in caplog.text, 30, "the hang-up to be seen"
    )

    job = api.submit(service, {"x": 2})
    claimed = api.post(f"/services/{service}/jobs/claim?wait=5", headers=RIG)
    assert claimed.json()["data"]["id"] == job
    assert claimed.json()["meta"]["worker"] == "http:rig"


def test_a_job_won_just_as_its_claimer_hung_up_is_given_back(gateway, stack):
    api = gateway.api
    service = api.create_service()
    job = uuid.UUID(api.submit(service, {"x": 2}))
    queue = priorities.queue_list(keys.service_queue(uuid.UUID(service)), priorities.DEFAULT)
    queued = stack.redis.llen(queue)
    shared = gateway.server.app.extensions["topchef"]
    dispatcher = Dispatcher(stack.redis, stack.settings, shared.closing)
    answers = iter([False, True])  # still there when it claims, gone when the job is won

    won = dispatcher.claim_next(
        shared.writing, uuid.UUID(service), "http:ghost", 1.0, lambda: next(answers)
    )

    assert won is None
    assert stack.status(job) == "REGISTERED"
    assert stack.claims.state(job) is None
    assert stack.redis.llen(queue) == queued + 1  # sent again, for a Celery worker
    # The mirror replays the claim and its release: the job stays REGISTERED,
    # and its history shows the one cycle the gateway recorded.
    mirror = Mirror(stack.settings, block_ms=10)
    mirror.ensure_group()
    assert mirror.step() == 2
    assert stack.status(job) == "REGISTERED"
    assert _moves(stack, job) == [(None, "REGISTERED"), *ONE_CYCLE]
    claimed = api.post(f"/services/{service}/jobs/claim", headers=RIG)
    assert claimed.json()["data"]["id"] == str(job)


#: A claim given back: the job started, then was REGISTERED again.
ONE_CYCLE = [("REGISTERED", "WORKING"), ("WORKING", "REGISTERED")]


def _moves(stack, job: uuid.UUID) -> list[tuple[str | None, str]]:
    return [(move["from"], move["to"]) for move in stack.producer.history(job)]


@pytest.mark.parametrize("batch_size", [1, 1000], ids=["entry by entry", "in one reading"])
def test_the_mirror_copy_of_a_claim_given_back_and_taken_again_records_each_move_once(
    gateway, stack, batch_size
):
    """Two claims of one job by one caller, the first given back; the mirror applies them late.

    The gateway moves the job itself; the mirror's copies come after, one
    reading per entry or all in one: the start of the take given back must
    not start the job again, nor its release end the take that runs now.
    """
    api = gateway.api
    service = api.create_service()
    job = api.submit(service, {"x": 2})
    assert api.post(f"/services/{service}/jobs/claim", headers=RIG).json()["data"]["id"] == job
    assert api.patch(f"/jobs/{job}", json={"status": "REGISTERED"}, headers=RIG).status_code == 200
    assert api.post(f"/services/{service}/jobs/claim", headers=RIG).json()["data"]["id"] == job
    job_id = uuid.UUID(job)
    before = stack.producer.history(job_id)

    mirror = Mirror(stack.settings, block_ms=10, batch_size=batch_size)
    mirror.ensure_group()
    while mirror.step():
        pass

    assert stack.status(job_id) == "WORKING"
    assert stack.producer.provenance(job_id)["run"] == {"worker": "http:rig"}
    assert stack.producer.history(job_id) == before
    assert _moves(stack, job_id) == [(None, "REGISTERED"), *ONE_CYCLE, ("REGISTERED", "WORKING")]
    report = {"status": "COMPLETED", "results": {"square": 4}}
    assert api.patch(f"/jobs/{job}", json=report, headers=RIG).status_code == 200


@pytest.mark.slow  # waits out a lease
def test_a_report_after_the_lease_lapsed_is_recorded_late(gateway, stack):
    api = gateway.api
    service = api.create_service(timeout=1)  # an HTTP claim's lease is the service's timeout
    job = api.submit(service, {"x": 3})
    assert api.post(f"/services/{service}/jobs/claim", headers=RIG).status_code == 200
    wait_for(lambda: not stack.redis.exists(keys.lease(job)), 30, "the lease to lapse")
    wait_for(lambda: stack.tick() and stack.status(uuid.UUID(job)) == "ERROR", 30, "beat")

    report = {"status": "COMPLETED", "results": {"square": 9}}
    assert api.patch(f"/jobs/{job}", json=report).status_code == 409  # not the holder
    assert api.patch(f"/jobs/{job}", json=report, headers=RIG).status_code == 200
    stack.start_mirror()
    finished = stack.wait_status(uuid.UUID(job), "COMPLETED")
    assert finished["results"] == {"square": 9}
    assert "presumed lost at" in finished["detail"]


def test_the_gateways_claims_keep_a_finished_job_for_the_workers_duplicate_window(gateway, stack):
    """A duplicate the gateway meets shortens a finished job's claim as a worker's would."""
    api = gateway.api
    service = api.create_service()
    job = api.submit(service, {"x": 2})
    assert api.post(f"/services/{service}/jobs/claim", headers=RIG).ok
    report = {"status": "COMPLETED", "results": {"square": 4}}
    assert api.patch(f"/jobs/{job}", json=report, headers=RIG).ok
    assert stack.redis.ttl(keys.claim(uuid.UUID(job))) > 3600  # until SQL records the end

    shared = gateway.server.app.extensions["topchef"]
    with shared.writing() as session:
        row = session.get(JobRow, uuid.UUID(job))
        assert shared.dispatcher.claim(session, row, 30.0, "http:late").value == "done"

    window = stack.settings.duplicate_window
    assert window < DEFAULT_WINDOW_SECONDS  # so that the default would show
    assert 0 < stack.redis.ttl(keys.claim(uuid.UUID(job))) <= math.ceil(window)
