"""HTTP claims belong to their caller: a claimer that hangs up takes nothing; late reports count."""

from __future__ import annotations

import logging
import socket
import uuid
from urllib.parse import urlsplit

import pytest
from support import wait_for

from broker.gateway.dispatch import Dispatcher
from broker.messaging import keys, priorities
from broker.mirror.process import Mirror

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
    # The mirror replays the claim and its release in order: the job stays REGISTERED.
    mirror = Mirror(stack.settings, block_ms=10)
    mirror.ensure_group()
    assert mirror.step() == 2
    assert stack.status(job) == "REGISTERED"
    claimed = api.post(f"/services/{service}/jobs/claim", headers=RIG)
    assert claimed.json()["data"]["id"] == str(job)


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
