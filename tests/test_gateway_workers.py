"""HTTP workers on the broker: atomic claims, TopChef's worker loop, leases, Celery workers.

Through a real gateway (waitress on 127.0.0.1) over real Redis and PostgreSQL.
"""

from __future__ import annotations

import re
import threading
import uuid

import lab
import pytest
import requests
from support import run_in_threads, wait_for

from broker.messaging import keys

pytest_plugins = ["gateway_support"]  # the gateway and api fixtures
pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.mark.slow  # 500 jobs over HTTP: ~10 s
def test_two_concurrent_claimers_over_500_jobs_get_disjoint_sets(gateway, stack):
    service = gateway.api.create_service()
    jobs = stack.producer.submit_many(lab.SQUARE, [{"x": i} for i in range(500)])
    taken: dict[str, list[str]] = {"a": [], "b": []}

    def claimer(name):
        def run():
            client = gateway.client()
            while True:
                response = client.post(
                    f"/services/{service}/jobs/claim", headers={"X-TopChef-Worker": name}
                )
                if response.status_code == 204:
                    return
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["data"]["status"] == "WORKING"
                assert body["meta"]["worker"] == f"http:{name}"
                taken[name].append(body["data"]["id"])

        return run

    run_in_threads(claimer("a"), claimer("b"))

    a, b = set(taken["a"]), set(taken["b"])
    assert len(a) == len(taken["a"])  # nobody got one twice
    assert len(b) == len(taken["b"])
    assert not a & b
    assert a | b == {str(job) for job in jobs}
    assert a, "both claimers really competed"
    assert b
    assert stack.count_jobs(status="WORKING") == 500
    assert stack.redis.scard(keys.http_jobs(uuid.UUID(service))) == 500


@pytest.mark.slow  # > 1 s
def test_topchef_style_workers_drive_jobs_to_completion(gateway, stack):
    """Two unchanged TopChef loops: check in, next job, WORKING (409: skip), results, COMPLETED."""
    service = gateway.api.create_service()
    jobs = [gateway.api.submit(service, {"x": i}) for i in range(30)]
    completed: dict[str, list[str]] = {"java": [], "python": []}

    def topchef_worker(name, java):
        def patch(client, path, body=None):
            if java:  # HttpURLConnection cannot PATCH: the Java client overrides a POST
                override = {"X-HTTP-Method-Override": "PATCH"}
                return client.post(path, json=body, headers=override)
            return client.patch(path, json=body)

        def run():
            client = gateway.client()
            # Each is its own client program: known apart by User-Agent, as they name no worker.
            client.session.headers["User-Agent"] = "Java/17.0.12" if java else "python-requests"
            while True:
                assert patch(client, f"/services/{service}").status_code == 200  # check in
                if java:
                    queue = client.get(f"/services/{service}/queue")
                    if queue.status_code == 204:
                        return
                    job = queue.json()["data"][0]
                else:
                    following = client.get(f"/services/{service}/jobs/next")
                    if following.status_code == 204:
                        return
                    job = following.json()["data"]
                path = f"/jobs/{job['id']}"
                claim = patch(client, path, {**job, "status": "WORKING"})
                if claim.status_code == 409:
                    continue  # the other worker was faster
                assert claim.status_code == 200, claim.text
                results = {"square": job["parameters"]["x"] ** 2}
                if java:  # setResult, then setStatus(COMPLETED): both send the whole job back
                    current = client.get(path).json()["data"]
                    stored = patch(client, path, {**current, "results": results})
                    assert stored.status_code == 200, stored.text
                    current = client.get(path).json()["data"]
                    done = patch(client, path, {**current, "status": "COMPLETED"})
                else:
                    done = patch(client, path, {"status": "COMPLETED", "results": results})
                assert done.status_code == 200, done.text
                completed[name].append(job["id"])

        return run

    run_in_threads(topchef_worker("java", True), topchef_worker("python", False))

    assert sorted(completed["java"] + completed["python"]) == sorted(jobs)
    for index, job in enumerate(jobs):
        read = gateway.api.job(job)
        assert read["data"]["status"] == "COMPLETED"
        assert read["data"]["results"] == {"square": index**2}
        assert read["meta"]["attempts"] == 1
    assert stack.redis.scard(keys.http_jobs(uuid.UUID(service))) == 0


def test_a_waiting_claim_returns_the_job_submitted_meanwhile(gateway, stack):
    service = gateway.api.create_service()
    assert gateway.api.post(f"/services/{service}/jobs/claim?wait=0.2").status_code == 204
    answers = []
    waiter = threading.Thread(
        target=lambda: answers.append(
            gateway.client().post(f"/services/{service}/jobs/claim?wait=30")
        )
    )
    waiter.start()

    job = gateway.api.submit(service, {"x": 5})

    waiter.join(60)
    assert not waiter.is_alive()
    assert answers[0].status_code == 200
    assert answers[0].json()["data"]["id"] == job
    for bad in ("-1", "61", "soon", "nan"):
        response = gateway.api.post(f"/services/{service}/jobs/claim?wait={bad}")
        assert response.status_code == 400, bad


def test_the_mirror_agrees_with_what_the_gateway_wrote(gateway, stack):
    """The claim and the finish also go on the state stream; the mirror's copies are no-ops."""
    stack.start_mirror()
    api = gateway.api
    service = api.create_service()
    done, failed = api.submit(service, {"x": 3}), api.submit(service, {"x": 4})
    for _ in (done, failed):
        assert api.post(f"/services/{service}/jobs/claim").status_code == 200
    api.patch(f"/jobs/{done}", json={"status": "COMPLETED", "results": {"square": 9}})
    api.patch(f"/jobs/{failed}", json={"status": "ERROR", "detail": "laser off"})

    wait_for(lambda: stack.redis.xlen(keys.STATE_STREAM) == 0, 30, "the mirror to drain")

    assert stack.job(uuid.UUID(done))["results"] == {"square": 9}
    assert stack.job(uuid.UUID(done))["status"] == "COMPLETED"
    assert stack.job(uuid.UUID(failed))["detail"] == "laser off"
    assert stack.job(uuid.UUID(failed))["status"] == "ERROR"


def test_check_ins_renew_http_leases_and_a_silent_worker_loses_its_job(gateway, stack):
    api = gateway.api
    service = api.create_service(timeout=30)
    kept, gone = api.submit(service, {"x": 1}), api.submit(service, {"x": 2})
    for _ in range(2):
        assert api.post(f"/services/{service}/jobs/claim").status_code == 200
    lease = keys.lease(kept)
    assert 0 < stack.redis.pttl(lease) <= 30_000  # the service's timeout

    # One lease lapses (as after 30 s of silence): beat applies the policy to that job.
    stack.redis.delete(keys.lease(gone))
    stack.tick()
    assert stack.status(uuid.UUID(gone)) == "ERROR"
    assert stack.status(uuid.UUID(kept)) == "WORKING"

    # A check-in renews the lease of the job still held, and forgets the lost one.
    stack.redis.delete(lease)
    assert api.patch(f"/services/{service}").status_code == 200
    assert stack.redis.exists(lease)
    assert stack.redis.smembers(keys.http_jobs(uuid.UUID(service))) == {kept.encode()}

    # So does a PATCH of the job; silence lets beat give it up, and a late report is kept.
    stack.redis.delete(lease)
    assert api.patch(f"/jobs/{kept}", json={}).status_code == 200
    assert stack.redis.exists(lease)
    stack.redis.delete(lease)
    stack.tick()
    assert stack.status(uuid.UUID(kept)) == "ERROR"
    assert "worker lost" in stack.job(uuid.UUID(kept))["detail"]
    late = api.patch(f"/jobs/{kept}", json={"status": "COMPLETED", "results": {"square": 1}})
    assert late.status_code == 200
    stack.start_mirror()
    recorded = stack.wait_status(uuid.UUID(kept), "COMPLETED")
    assert recorded["results"] == {"square": 1}
    assert "presumed lost at" in recorded["detail"]


def test_a_lost_http_job_of_a_requeue_service_is_handed_out_again(gateway, stack):
    api = gateway.api
    service = api.create_service(timeout=30, worker_loss_policy="requeue", max_attempts=2)
    job = api.submit(service, {"x": 6})
    first = api.post(f"/services/{service}/jobs/claim", headers={"X-TopChef-Worker": "dead"})
    assert first.json()["data"]["id"] == job

    stack.redis.delete(keys.lease(job))  # its worker went silent
    assert stack.tick().requeued == [uuid.UUID(job)]
    second = api.post(f"/services/{service}/jobs/claim", headers={"X-TopChef-Worker": "alive"})
    assert second.status_code == 200
    assert second.json()["data"]["id"] == job
    assert stack.claims.state(uuid.UUID(job)) == "running"
    late = api.patch(
        f"/jobs/{job}",
        json={"status": "COMPLETED", "results": {"square": 1}},
        headers={"X-TopChef-Worker": "dead"},
    )
    assert late.status_code == 409

    done = api.patch(
        f"/jobs/{job}",
        json={"status": "COMPLETED", "results": {"square": 36}},
        headers={"X-TopChef-Worker": "alive"},
    )

    assert done.status_code == 200
    assert done.json()["meta"]["attempts"] == 2
    assert done.json()["data"]["results"] == {"square": 36}


@pytest.mark.slow
def test_http_and_celery_workers_never_run_the_same_job(gateway, stack):
    api = gateway.api
    stack.create_lab_services()  # the lab worker serves all of them
    service = str(stack.service(lab.HELD).id)
    stack.start_mirror()
    over_http = api.submit(service, {"tag": "http"})
    claimed = api.post(f"/services/{service}/jobs/claim", headers={"X-TopChef-Worker": "rig"})
    assert claimed.json()["data"]["id"] == over_http

    # A Celery worker gets the job's message too, and its claim refuses it.
    stack.worker()
    by_celery = api.submit(service, {"tag": "celery"})
    stack.wait_status(uuid.UUID(by_celery), "WORKING")
    assert api.post(f"/services/{service}/jobs/claim").status_code == 204
    stolen = api.patch(f"/jobs/{by_celery}", json={"status": "WORKING"})
    finished = api.patch(
        f"/jobs/{by_celery}", json={"status": "COMPLETED", "results": {"tag": "celery"}}
    )
    assert stolen.status_code == 409
    assert finished.status_code == 409
    assert "being run by the worker" in finished.json()["errors"][0]["detail"]
    stack.release("celery")
    stack.wait_status(uuid.UUID(by_celery), "COMPLETED")

    # The worker handled the queue in order: it saw the HTTP job first, and let it be.
    assert stack.runs("http") == 0
    assert stack.status(uuid.UUID(over_http)) == "WORKING"
    report = {"status": "COMPLETED", "results": {"tag": "x"}}
    assert api.patch(f"/jobs/{over_http}", json=report).status_code == 409  # not the holder
    done = api.patch(f"/jobs/{over_http}", json=report, headers={"X-TopChef-Worker": "rig"})
    assert done.status_code == 200
    assert api.job(over_http)["meta"]["worker"] == "http:rig"


@pytest.mark.slow  # starts `topchef api`
def test_topchef_api_serves_until_sigterm(stack):
    process = stack.process("api", "--port", "0")
    url = wait_for(
        lambda: re.search(r"TopChef API on (http://127\.0\.0\.1:\d+)/", process.log()),
        30,
        "topchef api to listen",
    ).group(1)

    response = requests.get(f"{url}/", timeout=10)

    assert response.status_code == 200
    assert response.json()["data"]["version"] == stack.settings.version
    assert process.stop() == 0
    assert "stopped" in process.log()
