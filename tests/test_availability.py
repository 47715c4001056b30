"""A service is available while any live worker serves it; status counts what really waits.

The mirror and the gateway run for real over the ``stack`` fixture's Redis and
PostgreSQL; the worker processes themselves are in ``test_broker_e2e.py``.
"""

from __future__ import annotations

import lab
import pytest

from broker.messaging import keys
from broker.messaging.messages import StateMessage
from broker.messaging.presence import Presence
from broker.mirror.process import Mirror
from broker.ops.report import render_status

pytest_plugins = ["gateway_support"]  # the gateway and api fixtures
pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _check_in(stack, presence: Presence, worker: str, service, available: bool) -> None:
    """What ``WorkerRuntime.check_in`` sends: this worker's presence first, then its entry."""
    if available:
        presence.arrive(worker, [service], 30)
    else:
        presence.leave(worker, [service])
    stack.report(StateMessage("checkin", service, available=available, worker=worker))


def test_a_leave_keeps_the_service_available_while_another_worker_serves_it(stack):
    stack.create_lab_services()
    service = stack.service(lab.SQUARE).id
    presence = Presence(stack.redis)
    mirror = Mirror(stack.settings, block_ms=10)
    mirror.ensure_group()
    _check_in(stack, presence, "pc-1:1", service, True)
    _check_in(stack, presence, "pc-2:2", service, True)
    assert mirror.step() == 2
    assert stack.service(lab.SQUARE).is_service_available

    _check_in(stack, presence, "pc-1:1", service, False)
    assert mirror.step() == 1
    assert stack.service(lab.SQUARE).is_service_available

    _check_in(stack, presence, "pc-2:2", service, False)
    assert mirror.step() == 1
    assert not stack.service(lab.SQUARE).is_service_available


def test_within_one_reading_the_last_leave_still_counts_who_remains(stack):
    stack.create_lab_services()
    service = stack.service(lab.SQUARE).id
    presence = Presence(stack.redis)
    mirror = Mirror(stack.settings, block_ms=10)
    mirror.ensure_group()
    _check_in(stack, presence, "pc-2:2", service, True)
    _check_in(stack, presence, "pc-1:1", service, True)
    _check_in(stack, presence, "pc-1:1", service, False)
    assert mirror.step() == 3
    assert stack.service(lab.SQUARE).is_service_available


def _patch(api, service: str, worker: str, **body):
    response = api.patch(
        f"/services/{service}", json=body or None, headers={"X-TopChef-Worker": worker}
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_an_http_worker_withdraws_only_itself(api, stack):
    service = api.create_service(timeout=30)
    key = keys.service_workers(service)

    assert _patch(api, service, "rig-1", is_available=True)["is_service_available"] is True
    assert _patch(api, service, "rig-2", is_available=True)["is_service_available"] is True
    assert stack.redis.zcard(key) == 2
    assert _patch(api, service, "rig-1", is_available=False)["is_service_available"] is True
    assert stack.service(lab.SQUARE).is_service_available
    assert stack.redis.zrange(key, 0, -1) == [b"http:rig-2"]

    assert _patch(api, service, "rig-2", is_available=False)["is_service_available"] is False
    assert not stack.service(lab.SQUARE).is_service_available


def test_http_and_celery_workers_keep_a_service_available_together(api, stack):
    service = api.create_service(timeout=30)
    row = stack.service(lab.SQUARE)
    presence = Presence(stack.redis)
    mirror = Mirror(stack.settings, block_ms=10)
    mirror.ensure_group()
    _check_in(stack, presence, "pc-1:1", row.id, True)
    mirror.step()

    # The HTTP worker leaves: the Celery worker still serves the service.
    _patch(api, service, "rig-1", is_available=True)
    assert _patch(api, service, "rig-1", is_available=False)["is_service_available"] is True
    # The Celery worker leaves while an HTTP worker serves it.
    _patch(api, service, "rig-1", is_available=True)
    _check_in(stack, presence, "pc-1:1", row.id, False)
    mirror.step()
    assert stack.service(lab.SQUARE).is_service_available
    assert presence.live([row.id]) == {row.id: 1}


def test_a_bare_check_in_renews_the_callers_presence_only(api, stack):
    service = api.create_service(timeout=30)
    key = keys.service_workers(service)
    _patch(api, service, "rig-1", is_available=True)
    before = stack.redis.zscore(key, "http:rig-1")

    _patch(api, service, "rig-1")
    _patch(api, service, "operator")

    assert stack.redis.zrange(key, 0, -1) == [b"http:rig-1"]
    assert stack.redis.zscore(key, "http:rig-1") > before


def _status_row(settings, name: str) -> dict[str, str]:
    """The row of ``name`` in ``topchef status``, by column, plus its trailing mark."""
    lines = render_status(settings).splitlines()
    header = lines[0]
    assert header.split() == [
        "service",
        "available",
        "workers",
        "timed",
        "out",
        "check-in",
        "waiting",
        "running",
    ]
    (line,) = [line for line in lines[1:] if line.startswith(name + " ")]
    fields = line[28:].split()
    # available, workers, timed out, "N s ago", waiting, running, then the mark.
    return {
        "available": fields[0],
        "workers": fields[1],
        "timed out": fields[2],
        "waiting": fields[6],
        "running": fields[7],
        "mark": " ".join(fields[8:]),
    }


def test_status_counts_only_jobs_that_will_run_as_waiting(api, stack):
    service = api.create_service(timeout=30)
    waiting = [api.submit(service, {"x": i}) for i in range(3)]
    stack.producer.cancel(stack.producer.submit(lab.SQUARE, {"x": 9}))
    claim = api.post(f"/services/{service}/jobs/claim", headers={"X-TopChef-Worker": "rig-1"})
    assert claim.status_code == 200, claim.text
    assert claim.json()["data"]["id"] == waiting[0]
    # A sweep of 5 jobs in one message: 5 jobs wait.
    stack.producer.submit_many(lab.SQUARE, [{"x": i} for i in range(5)], jobs_per_message=5)
    # Every message is still queued, the cancelled and the claimed job's too.
    assert stack.queue_length(lab.SQUARE) == 3 + 1 + 1

    row = _status_row(stack.settings, lab.SQUARE)

    assert (row["waiting"], row["running"]) == ("7", "1")
    assert "CANCELLED 1" in render_status(stack.settings)


def test_status_marks_a_service_whose_jobs_wait_with_no_worker(api, stack):
    stack.create_lab_services()
    stack.producer.submit(lab.SQUARE, {"x": 1})
    stack.producer.submit(lab.FAILING, {"x": 1})
    served = stack.service(lab.FAILING).id
    Presence(stack.redis).arrive("pc-1:1", [served], 30)

    square = _status_row(stack.settings, lab.SQUARE)
    failing = _status_row(stack.settings, lab.FAILING)
    idle = _status_row(stack.settings, lab.INVALID)

    assert (square["workers"], square["waiting"], square["mark"]) == ("0", "1", "no worker")
    assert (failing["workers"], failing["waiting"], failing["mark"]) == ("1", "1", "")
    assert (idle["workers"], idle["waiting"], idle["mark"]) == ("0", "0", "")


def test_an_http_worker_that_claims_jobs_is_one_of_the_services_workers(api, stack):
    service = api.create_service(timeout=30)
    first, second = api.submit(service, {"x": 1}), api.submit(service, {"x": 2})
    assert _status_row(stack.settings, lab.SQUARE)["mark"] == "no worker"

    claim = api.post(f"/services/{service}/jobs/claim", headers={"X-TopChef-Worker": "rig-1"})
    assert claim.json()["data"]["id"] == first
    row = _status_row(stack.settings, lab.SQUARE)
    assert (row["workers"], row["waiting"], row["mark"]) == ("1", "1", "")

    # TopChef's own loop claims with PATCH to WORKING.
    patch = api.patch(
        f"/jobs/{second}", json={"status": "WORKING"}, headers={"X-TopChef-Worker": "rig-2"}
    )
    assert patch.status_code == 200, patch.text
    row = _status_row(stack.settings, lab.SQUARE)
    assert (row["workers"], row["waiting"], row["running"]) == ("2", "0", "2")
    # Claiming says nothing of availability: only is_available does.
    assert not stack.service(lab.SQUARE).is_service_available


def test_a_claim_that_waits_for_a_job_in_vain_still_serves_the_service(api, stack):
    service = api.create_service(timeout=30)
    idle = api.post(f"/services/{service}/jobs/claim", headers={"X-TopChef-Worker": "rig-1"})
    assert idle.status_code == 204
    api.submit(service, {"x": 1})
    row = _status_row(stack.settings, lab.SQUARE)
    assert (row["workers"], row["waiting"], row["mark"]) == ("1", "1", "")


def test_a_job_running_with_no_live_worker_is_marked_too(api, stack):
    service = api.create_service(timeout=30)
    job = api.submit(service, {"x": 1})
    claim = api.post(f"/services/{service}/jobs/claim", headers={"X-TopChef-Worker": "rig-1"})
    assert claim.json()["data"]["id"] == job
    assert _status_row(stack.settings, lab.SQUARE)["mark"] == ""

    _patch(api, service, "rig-1", is_available=False)  # it went away, holding its job

    row = _status_row(stack.settings, lab.SQUARE)
    assert (row["workers"], row["waiting"], row["running"], row["mark"]) == (
        "0",
        "0",
        "1",
        "no worker",
    )
