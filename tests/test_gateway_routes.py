"""Every route of the HTTP gateway and its status codes, through a real server.

The gateway runs in waitress on 127.0.0.1 over the real Redis and PostgreSQL
of the ``stack`` fixture; requests go over TCP with ``requests``.
"""

from __future__ import annotations

import json
import uuid
from urllib.parse import parse_qsl, urljoin, urlsplit

import lab
import pytest

from broker.messaging import keys, priorities

pytest_plugins = ["gateway_support"]  # the gateway and api fixtures
pytestmark = [pytest.mark.postgres, pytest.mark.redis]
TOKEN = "s3cret-token"


def _errors(response):
    body = response.json()
    assert set(body) == {"errors"}
    for error in body["errors"]:
        assert set(error) == {"status_code", "title", "detail"}
    return body["errors"]


def _envelope(response, status=200):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"data", "meta", "links"}
    assert _same_resource(body["links"]["self"], response.url)
    return body


def _same_resource(link: str, url: str) -> bool:
    """Whether ``link``, resolved against the request's ``url``, names what ``url`` names."""
    assert link.startswith("/"), link  # an absolute path: no host a request could choose
    resolved, asked = urlsplit(urljoin(url, link)), urlsplit(url)
    return (resolved.netloc, resolved.path, parse_qsl(resolved.query)) == (
        asked.netloc,
        asked.path,
        parse_qsl(asked.query),
    )


# -- metadata, validator, OpenAPI, errors ------------------------------------------------


def test_metadata_describes_the_api_and_links_onwards(api, stack):
    body = _envelope(api.get("/"))
    assert body["data"]["version"] == stack.settings.version
    assert body["data"]["maintainer_email"] == stack.settings.maintainer_email
    assert set(body["links"]) >= {"self", "services", "jobs", "validator", "openapi"}


def test_validator_checks_objects_against_schemas(api):
    usage = _envelope(api.get("/validator"))
    assert usage["meta"]["validator_schema"]["required"] == ["schema", "object"]
    schema = {"type": "object", "properties": {"value": {"type": "integer", "maximum": 10}}}

    valid = _envelope(api.post("/validator", json={"schema": schema, "object": {"value": 1}}))
    invalid = api.post("/validator", json={"schema": schema, "object": {"value": 11}})
    bad_schema = api.post("/validator", json={"schema": {"type": 12}, "object": {}})
    remote = api.post("/validator", json={"schema": {"$ref": "http://x/s.json"}, "object": 1})
    missing = api.post("/validator", json={})

    assert valid["data"] == {"status": "Validation was successful"}
    assert invalid.status_code == 400
    assert "object.value: 11 is greater than the maximum of 10" in _errors(invalid)[0]["detail"]
    assert bad_schema.status_code == 400
    assert remote.status_code == 400
    assert missing.status_code == 400
    assert len(_errors(missing)) == 2  # both missing fields, reported at once


def test_openapi_document_is_served(api):
    response = api.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert "/services/{service_id}/jobs/claim" in document["paths"]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_unknown_route_and_wrong_method_are_enveloped_errors(api):
    unknown = api.get("/nothing/here")
    wrong = api.delete("/services")
    assert unknown.status_code == 404
    assert _errors(unknown)[0]["title"] == "Not found"
    assert wrong.status_code == 405
    assert "DELETE is not allowed" in _errors(wrong)[0]["detail"]
    assert "POST" in wrong.headers["Allow"]


def test_a_body_that_is_not_json_is_a_400(api):
    service = api.create_service()
    for path, method in [
        ("/services", "POST"),
        (f"/services/{service}", "PATCH"),
        (f"/services/{service}/jobs", "POST"),
        ("/validator", "POST"),
    ]:
        response = api.request(method, path, data=b"{not json")
        assert response.status_code == 400, (path, response.text)
        assert _errors(response)[0]["title"] == "Request not JSON"
    nan = api.post("/validator", data=b'{"schema": {}, "object": NaN}')
    array = api.post("/services", json=[1, 2])
    assert nan.status_code == 400
    assert array.status_code == 400


def test_malformed_and_unknown_ids_are_404(api):
    service = api.create_service()
    unknown = str(uuid.uuid4())
    paths = [
        ("GET", "/services/{}"),
        ("PATCH", "/services/{}"),
        ("GET", "/services/{}/jobs"),
        ("GET", "/services/{}/jobs/next"),
        ("GET", "/services/{}/queue"),
        ("POST", "/services/{}/jobs/claim"),
        ("GET", "/jobs/{}"),
        ("DELETE", "/jobs/{}"),
    ]
    for method, path in paths:
        for bad in ("not-a-uuid", unknown):
            response = api.request(method, path.format(bad))
            assert response.status_code == 404, (method, path, bad, response.text)
            _errors(response)
    submit = api.post(f"/services/{unknown}/jobs", json={"parameters": {"x": 1}})
    patch = api.patch("/jobs/12345", json={"status": "WORKING"})
    assert submit.status_code == 404
    assert patch.status_code == 404
    assert _envelope(api.get(f"/services/{service}"))["data"]["id"] == service


# -- services ------------------------------------------------------------------------------


def test_post_service_returns_201_with_location_and_id(api, stack):
    response = api.post(
        "/services",
        json={
            "name": "Rabi",
            "description": "pulses",
            "job_registration_schema": lab.NUMBER_SCHEMA,
            "job_result_schema": lab.SQUARE_RESULTS,
            "timeout": 12,
            "worker_loss_policy": "requeue",
            "max_attempts": 2,
        },
    )
    body = _envelope(response, 201)
    service_id = body["data"]["id"]
    assert response.headers["Location"].endswith(f"/services/{service_id}")
    row = stack.service("Rabi")
    assert str(row.id) == service_id
    assert (row.timeout, row.worker_loss_policy, row.max_attempts) == (12.0, "requeue", 2)
    # Created through the outbox: the workers' directory knows it at once.
    assert stack.redis.hget(keys.SERVICE_IDS, "Rabi").decode() == service_id

    shown = _envelope(api.get(response.headers["Location"].removeprefix(api.base_url)))
    assert shown["data"] == {
        "id": service_id,
        "name": "Rabi",
        "description": "pulses",
        "job_registration_schema": lab.NUMBER_SCHEMA,
        "job_result_schema": lab.SQUARE_RESULTS,
        "is_service_available": False,
        "has_timed_out": False,
        "timeout": 12,
    }
    assert shown["meta"]["worker_loss_policy"] == "requeue"
    listed = _envelope(api.get("/services"))
    assert listed["data"] == [{"id": service_id, "name": "Rabi", "description": "pulses"}]


def test_bad_services_are_refused_and_nothing_is_created(api, stack):
    good = {
        "name": "S",
        "description": "",
        "job_registration_schema": {},
        "job_result_schema": {},
    }
    missing = api.post("/services", json={"name": "S"})
    assert missing.status_code == 400
    assert len(_errors(missing)) == 3
    for change in [
        {"job_registration_schema": {"type": "nonsense"}},
        {"job_result_schema": {"pattern": "(?=a)"}},
        {"name": ""},
        {"description": 5},
        {"timeout": -1},
        {"timeout": 10**400},
        {"timeout": True},
        {"max_attempts": 10**12},
        {"worker_loss_policy": "retry"},
        {"name": "nul\u0000"},
    ]:
        response = api.post("/services", json={**good, **change})
        assert response.status_code == 400, (change, response.text)
    assert _envelope(api.get("/services"))["data"] == []
    api.create_service("S")
    duplicate = api.post("/services", json=good)
    assert duplicate.status_code == 409
    assert _errors(duplicate)[0]["title"] == "Duplicate service name"


def test_bodyless_patch_is_a_pure_check_in(api, stack):
    service = api.create_service(timeout=5)
    before = stack.service(lab.SQUARE).last_checked_in

    body = _envelope(api.patch(f"/services/{service}"))

    after = stack.service(lab.SQUARE)
    assert after.last_checked_in > before
    assert body["meta"]["message"].startswith("Service checked in at")
    assert body["data"]["name"] == lab.SQUARE
    assert after.is_service_available is False


def test_patch_changes_the_service_and_checks_it_in(api, stack):
    service = api.create_service(timeout=5)
    before = stack.service(lab.SQUARE).last_checked_in
    changes = {"is_available": True, "name": "Cube", "description": "d", "timeout": 7}

    body = _envelope(api.patch(f"/services/{service}", json=changes))

    row = stack.service("Cube")
    assert (row.is_service_available, row.description, row.timeout) == (True, "d", 7.0)
    assert row.last_checked_in > before
    assert body["data"]["name"] == "Cube"
    assert stack.redis.hget(keys.SERVICE_IDS, "Cube").decode() == service


def test_a_bad_patch_changes_nothing_not_even_the_check_in(api, stack):
    service = api.create_service(timeout=5)
    api.create_service("Taken")
    before = stack.service(lab.SQUARE)
    for body, status in [
        ({"is_available": "yes"}, 400),
        ({"timeout": 0}, 400),
        ({"name": 3}, 400),
        ({"description": "ok", "name": "Taken"}, 409),
    ]:
        response = api.patch(f"/services/{service}", json=body)
        assert response.status_code == status, (body, response.text)
    after = stack.service(lab.SQUARE)
    assert after.last_checked_in == before.last_checked_in
    assert after.description == before.description


def test_method_override_turns_a_post_into_a_patch(api, stack):
    service = api.create_service()
    before = stack.service(lab.SQUARE).last_checked_in
    override = {"X-HTTP-Method-Override": "PATCH"}

    check_in = api.post(f"/services/{service}", headers=override)
    job = api.submit(service, {"x": 2})
    claim = api.post(f"/jobs/{job}", json={"status": "WORKING"}, headers=override)
    ignored_on_get = api.get(f"/jobs/{job}", headers={"X-HTTP-Method-Override": "DELETE"})

    assert check_in.status_code == 200
    assert stack.service(lab.SQUARE).last_checked_in > before
    assert _envelope(claim)["data"]["status"] == "WORKING"
    assert _envelope(ignored_on_get)["data"]["status"] == "WORKING"


# -- jobs of a service ------------------------------------------------------------------------


def test_a_job_posted_over_http_is_the_same_job_as_one_from_python(api, stack):
    service = api.create_service()
    response = api.post(f"/services/{service}/jobs", json={"parameters": {"x": 4}})

    body = _envelope(response, 201)
    job_id = body["data"]["id"]
    assert response.headers["Location"].endswith(f"/jobs/{job_id}")
    assert body["data"] == {
        "id": job_id,
        "status": "REGISTERED",
        "parameters": {"x": 4},
        "results": None,
        "date_submitted": body["data"]["date_submitted"],
    }
    # The same row the producer reads, and the same Celery message on the service's queue.
    assert stack.producer.job(uuid.UUID(job_id))["parameters"] == {"x": 4}
    queue = priorities.queue_list(keys.service_queue(uuid.UUID(service)), priorities.DEFAULT)
    messages = stack.redis.lrange(queue, 0, -1)
    assert len(messages) == 1
    message = json.loads(messages[0])
    assert message["headers"]["id"] == f"{job_id}.1"
    assert message["headers"]["task"] == keys.JOB_TASK


def test_invalid_parameters_are_a_400_and_nothing_is_queued(api, stack):
    service = api.create_service()
    wrong = api.post(f"/services/{service}/jobs", json={"parameters": {"x": "two"}})
    missing = api.post(f"/services/{service}/jobs", json={})
    not_object = api.post(f"/services/{service}/jobs", json={"parameters": [1]})
    assert wrong.status_code == 400
    assert 'parameters.x: "two" is not of type "integer"' in _errors(wrong)[0]["detail"]
    assert missing.status_code == 400
    assert not_object.status_code == 400
    assert stack.count_jobs() == 0
    assert stack.queue_length(lab.SQUARE) == 0


def test_job_lists_are_paged_and_filtered_by_status(api):
    service = api.create_service()
    other = api.create_service("Other")
    jobs = [api.submit(service, {"x": i}) for i in range(5)]
    api.submit(other, {"x": 9})
    api.patch(f"/jobs/{jobs[0]}", json={"status": "WORKING"})
    api.delete(f"/jobs/{jobs[1]}")

    first = _envelope(api.get(f"/services/{service}/jobs?limit=2"))
    second = _envelope(api.get(first["links"]["next"].removeprefix(api.base_url)))
    registered = _envelope(api.get(f"/services/{service}/jobs?status=registered"))
    either = _envelope(api.get("/jobs?status=WORKING,CANCELLED"))
    everything = _envelope(api.get("/jobs?limit=1000"))

    assert [job["id"] for job in first["data"]] == jobs[:2]
    assert first["meta"]["total"] == 5
    assert first["meta"]["new_job_schema"]["properties"]["parameters"] == lab.NUMBER_SCHEMA
    assert [job["id"] for job in second["data"]] == jobs[2:4]
    assert second["links"]["prev"]
    assert [job["id"] for job in registered["data"]] == jobs[2:]
    assert {job["id"] for job in either["data"]} == set(jobs[:2])
    assert set(either["data"][0]) == {"id", "status", "date_submitted", "service_id"}
    assert everything["meta"]["total"] == 6
    for bad in ("status=DONE", "limit=0", "limit=abc", "offset=-1"):
        assert api.get(f"/jobs?{bad}").status_code == 400, bad
        assert api.get(f"/services/{service}/jobs?{bad}").status_code == 400, bad


def test_queue_and_next_show_the_oldest_unclaimed_jobs(api, stack):
    service = api.create_service()
    assert api.get(f"/services/{service}/queue").status_code == 204
    assert api.get(f"/services/{service}/jobs/next").status_code == 204
    jobs = [str(job) for job in stack.producer.submit_many(lab.SQUARE, [{"x": 0}] * 70)]
    rig = {"X-TopChef-Worker": "rig-1"}
    assert api.patch(f"/jobs/{jobs[0]}", json={"status": "WORKING"}, headers=rig).ok
    # Jobs Celery workers have claimed, before the mirror moved their rows: more
    # than one page of candidates, so the search goes on past them.
    for job in jobs[1:55]:
        stack.claims.claim(uuid.UUID(job), 1, "celery@lab", _working(stack, service, job))

    queue = _envelope(api.get(f"/services/{service}/queue"))
    after = _envelope(api.get(f"/services/{service}/jobs/next"))

    assert [job["id"] for job in queue["data"]] == jobs[55:65]
    assert after["data"]["id"] == jobs[55]
    assert after["data"]["status"] == "REGISTERED"
    # The holder of jobs[0] finds it first, as TopChef's clients re-read the queue mid-job.
    held = _envelope(api.get(f"/services/{service}/queue", headers=rig))
    assert [job["id"] for job in held["data"]] == [jobs[0], *jobs[55:64]]
    assert (
        _envelope(api.get(f"/services/{service}/jobs/next", headers=rig))["data"]["id"] == jobs[0]
    )
    assert _envelope(api.post(f"/services/{service}/jobs/claim"))["data"]["id"] == jobs[55]


def test_http_workers_take_the_highest_priority_first_then_the_oldest(api, stack):
    """The priority rule, over HTTP as for Celery workers, across pages and not-before."""
    service = api.create_service()
    later = "2099-01-01T00:00:00Z"

    def submit(priority: int, **extra) -> str:
        body = {"parameters": {"x": priority}, "priority": priority, **extra}
        answer = api.post(f"/services/{service}/jobs", json=body)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["data"]["id"])

    routine = [str(j) for j in stack.producer.submit_many(lab.SQUARE, [{"x": 1}] * 55, priority=1)]
    not_yet = submit(9, not_before=later)  # the highest, but not due: no one's yet
    urgent = [submit(7), submit(7)]
    middle = submit(5)

    queue = _envelope(api.get(f"/services/{service}/queue"))
    assert [job["id"] for job in queue["data"]] == [*urgent, middle, *routine[:7]]
    assert _envelope(api.get(f"/services/{service}/jobs/next"))["data"]["id"] == urgent[0]
    taken = [
        _envelope(api.post(f"/services/{service}/jobs/claim"))["data"]["id"] for _ in range(58)
    ]
    # Past a page of candidates (50) within one priority, and never the job not due.
    assert taken == [*urgent, middle, *routine]
    assert not_yet not in taken
    assert api.post(f"/services/{service}/jobs/claim").status_code == 204


def _working(stack, service, job):
    from broker.messaging.messages import StateMessage

    return StateMessage(
        "status", uuid.UUID(service), uuid.UUID(job), status="WORKING", worker="celery@lab"
    )


# -- jobs ----------------------------------------------------------------------------------------


def test_patch_working_is_a_compare_and_set(api, gateway):
    service = api.create_service()
    job = api.submit(service, {"x": 3})
    other = gateway.client()
    other.session.headers["User-Agent"] = "Java/17.0.12"  # another program on this machine

    first = api.patch(f"/jobs/{job}", json={"status": "WORKING"})
    second = other.patch(f"/jobs/{job}", json={"status": "WORKING"})

    assert _envelope(first)["data"]["status"] == "WORKING"
    assert first.json()["meta"]["worker"].startswith("http:127.0.0.1 (python-requests/")
    assert second.status_code == 409
    assert _errors(second)[0]["title"] == "Job already claimed"


def test_a_named_worker_may_repeat_its_claim_but_no_one_else_may(api):
    service = api.create_service()
    job = api.submit(service, {"x": 3})
    me, someone = {"X-TopChef-Worker": "rig-1"}, {"X-TopChef-Worker": "rig-2"}

    assert api.patch(f"/jobs/{job}", json={"status": "WORKING"}, headers=me).status_code == 200
    assert api.patch(f"/jobs/{job}", json={"status": "WORKING"}, headers=me).status_code == 200
    stolen = api.patch(f"/jobs/{job}", json={"status": "WORKING"}, headers=someone)
    by_other = api.patch(
        f"/jobs/{job}", json={"status": "COMPLETED", "results": {"square": 9}}, headers=someone
    )
    anonymous = api.patch(f"/jobs/{job}", json={"status": "COMPLETED", "results": {"square": 9}})
    done = api.patch(
        f"/jobs/{job}", json={"status": "COMPLETED", "results": {"square": 9}}, headers=me
    )

    assert stolen.status_code == 409
    assert by_other.status_code == 409
    # Only the claim's holder reports, whether or not the other caller names itself.
    assert anonymous.status_code == 409
    assert "held by http:rig-1" in anonymous.json()["errors"][0]["detail"]
    assert done.status_code == 200
    assert api.job(job)["meta"]["worker"] == "http:rig-1"
    assert api.job(job)["data"]["status"] == "COMPLETED"


def test_each_conflict_is_titled_by_what_the_caller_must_do_about_it(api, stack):
    """Someone else holds it; nobody does (claim it first); it runs no more; it may not start."""
    rig, other = {"X-TopChef-Worker": "rig-1"}, {"X-TopChef-Worker": "rig-2"}
    service = api.create_service()
    waiting, running, done = (api.submit(service, {"x": x}) for x in (1, 2, 3))
    for job in (running, done):
        assert api.patch(f"/jobs/{job}", json={"status": "WORKING"}, headers=rig).status_code == 200
    finished = {"status": "COMPLETED", "results": {"square": 9}}
    assert api.patch(f"/jobs/{done}", json=finished, headers=rig).status_code == 200
    held = api.create_service(name="Held oven")
    on_hold = api.submit(held, {"x": 4})
    assert api.post(f"/services/{held}/hold").status_code == 200

    def title(response, status=409):
        assert response.status_code == status, response.text
        return _errors(response)[0]["title"]

    assert title(api.patch(f"/jobs/{running}", json=finished, headers=other)) == (
        "Job already claimed"
    )
    assert title(api.patch(f"/jobs/{done}", json={"results": {"square": 1}}, headers=rig)) == (
        "Job not running"
    )
    legacy = api.request("PUT", f"/legacy/jobs/{waiting}", json={"result": {"square": 1}})
    assert title(legacy) == "Job not claimed"
    assert title(api.patch(f"/jobs/{on_hold}", json={"status": "WORKING"})) == (
        "Job cannot start now"
    )
    # None of them changed anything.
    assert [api.job(job)["data"]["status"] for job in (waiting, running, done, on_hold)] == [
        "REGISTERED",
        "WORKING",
        "COMPLETED",
        "REGISTERED",
    ]


def test_a_null_is_applied_or_refused_never_ignored(api, stack):
    rig = {"X-TopChef-Worker": "rig-1"}
    service = api.create_service()
    job = api.submit(service, {"x": 3})
    path = f"/jobs/{job}"

    for field in ("status", "detail"):
        refused = api.patch(path, json={field: None})
        assert refused.status_code == 400, refused.text
        assert _errors(refused)[0]["detail"].startswith(f"{field}: is null")
    # Null results on a job without results change nothing: they are what it has.
    assert api.patch(path, json={"status": "WORKING", "results": None}, headers=rig).ok
    # The holder of a running job may clear the results it kept (the Java client does).
    assert api.patch(path, json={"results": {"square": 4}}, headers=rig).ok
    assert api.job(job)["data"]["results"] == {"square": 4}
    stranger = api.patch(path, json={"results": None}, headers={"X-TopChef-Worker": "rig-2"})
    assert stranger.status_code == 409
    assert api.job(job)["data"]["results"] == {"square": 4}
    assert api.patch(path, json={"status": "WORKING", "results": None}, headers=rig).ok
    assert api.job(job)["data"]["results"] is None
    # A finished job's results are its record: a null is refused, saying so.
    assert api.patch(path, json={"status": "COMPLETED", "results": {"square": 9}}, headers=rig).ok
    kept = api.patch(path, json={"results": None}, headers=rig)
    assert kept.status_code == 400
    assert "omit the field to keep them" in _errors(kept)[0]["detail"]
    assert api.job(job)["data"]["results"] == {"square": 9}


def test_results_are_validated_and_status_only_moves_forward(api, stack):
    service = api.create_service()
    job = api.submit(service, {"x": 3})
    path = f"/jobs/{job}"

    assert api.patch(path, json={"status": "FINISHED"}).status_code == 400
    assert api.patch(path, json={"status": 3}).status_code == 400
    assert api.patch(path, json={"results": [1]}).status_code == 400
    assert api.patch(path, json={"status": "REGISTERED"}).status_code == 200  # no change
    assert api.job(job)["data"]["status"] == "REGISTERED"
    assert api.patch(path, json={"status": "WORKING"}).status_code == 200
    invalid = api.patch(path, json={"status": "COMPLETED", "results": {"square": "nine"}})
    assert invalid.status_code == 400
    assert "results.square" in _errors(invalid)[0]["detail"]
    assert api.job(job)["data"]["status"] == "WORKING"
    no_results = api.patch(path, json={"status": "COMPLETED"})
    assert no_results.status_code == 400
    stranger = {"X-TopChef-Worker": "rig-2"}
    backwards = api.patch(path, json={"status": "REGISTERED"}, headers=stranger)
    assert backwards.status_code == 409  # only the holder may give a job back

    done = _envelope(api.patch(path, json={"status": "COMPLETED", "results": {"square": 9}}))

    assert done["data"]["status"] == "COMPLETED"
    assert done["data"]["results"] == {"square": 9}
    assert stack.job(uuid.UUID(job))["status"] == "COMPLETED"
    for body in ({"status": "WORKING"}, {"status": "ERROR"}, {"status": "COMPLETED"}):
        assert api.patch(path, json=body).status_code == 409, body
    assert api.delete(path).status_code == 409


def test_error_reports_keep_their_detail(api):
    service = api.create_service()
    job = api.submit(service, {"x": 3})
    api.patch(f"/jobs/{job}", json={"status": "WORKING"})

    failed = _envelope(api.patch(f"/jobs/{job}", json={"status": "ERROR", "detail": "laser off"}))

    assert failed["data"]["status"] == "ERROR"
    assert failed["meta"]["detail"] == "laser off"
    assert failed["meta"]["date_finished"]


def test_delete_cancels_a_registered_job_only(api, stack):
    service = api.create_service()
    waiting, running = api.submit(service, {"x": 1}), api.submit(service, {"x": 2})
    api.patch(f"/jobs/{running}", json={"status": "WORKING"})

    cancelled = _envelope(api.delete(f"/jobs/{waiting}"))
    again = api.delete(f"/jobs/{waiting}")
    refused = api.delete(f"/jobs/{running}")

    assert cancelled["data"]["status"] == "CANCELLED"
    assert again.status_code == 200
    assert refused.status_code == 409
    assert api.patch(f"/jobs/{waiting}", json={"status": "WORKING"}).status_code == 409
    # Its message may still be queued, but the claim forbids every delivery from running it.
    assert stack.claims.state(uuid.UUID(waiting)) == "cancelled"
    other = api.submit(service, {"x": 3})
    cancel_by_patch = _envelope(api.patch(f"/jobs/{other}", json={"status": "CANCELLED"}))
    assert cancel_by_patch["data"]["status"] == "CANCELLED"


# -- auth and limits ---------------------------------------------------------------------------


def test_bearer_token_guards_every_route_but_the_root(make_gateway):
    served = make_gateway(token=TOKEN)
    anonymous, wrong, right = (
        served.client(token=""),
        served.client(token="s3cret-tokem"),
        served.client(),
    )
    assert anonymous.get("/").status_code == 200
    for method, path in [
        ("GET", "/services"),
        ("POST", "/services"),
        ("GET", "/jobs"),
        ("GET", f"/jobs/{uuid.uuid4()}"),
        ("PATCH", f"/services/{uuid.uuid4()}"),
        ("POST", "/validator"),
        ("GET", "/openapi.json"),
        ("GET", "/no/such/route"),
    ]:
        missing = anonymous.request(method, path)
        bad = wrong.request(method, path)
        assert missing.status_code == 401, (method, path)
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert _errors(missing)[0]["title"] == "Unauthorized"
        assert bad.status_code == 403, (method, path)
    basic = anonymous.get("/services", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    assert right.get("/services").status_code == 200
    assert right.create_service()


def test_bodies_over_the_limit_are_refused_with_413(make_gateway, stack):
    served = make_gateway(api_max_body_bytes=2048)
    api = served.api
    service = api.create_service()
    big = {"parameters": {"x": 1, "padding": "x" * 4096}}
    refused = api.post(f"/services/{service}/jobs", json=big)
    chunked = api.post(
        f"/services/{service}/jobs", data=iter([json.dumps(big).encode()])
    )  # no Content-Length: the limit applies while reading
    fits = api.post(f"/services/{service}/jobs", json={"parameters": {"x": 1}})
    assert refused.status_code == 413
    assert _errors(refused)[0]["title"] == "Payload too large"
    assert chunked.status_code == 413
    assert fits.status_code == 201
    assert stack.count_jobs() == 1
