"""TopChef's own clients, replayed: each one's requests, and the fields it reads back.

The Java client (``TopChef/JavaClient``, for TopChef's API since its 2017-08
rewrite; the MATLAB client wraps it) speaks the gateway's API at ``/``; the
Python client (``TopChef/TopChefClient``, for the API before it) speaks it
under ``/legacy``. Neither client runs here: these tests send what each sends
(method, path, headers, body) to the real gateway server and read what each
reads, so a change that would break a client fails them. The shapes come from
the clients' sources; the README says how to run the clients themselves.
"""

from __future__ import annotations

import functools
import json
import uuid
from typing import Any
from urllib.parse import urljoin

import requests
from client_fixtures import JAVA_JOB_ID, JAVA_SERVICE_ID, seed_java_fixture
from support import run_in_threads

from broker.messaging import keys
from broker.messaging.messages import StateMessage
from broker.mirror.process import Mirror

pytest_plugins = ["gateway_support"]  # the gateway and api fixtures

#: What each client sends as its User-Agent (``requests`` 2.11.1 is TopChefClient's pin).
PYTHON_AGENT = "python-requests/2.11.1"
JAVA_AGENT = "Java/1.8.0_151"
#: The fields of ``JobEndpoint.JobDetails`` and ``ServiceEndpoint``'s data classes:
#: Jackson refuses any other field in what the Java client maps.
JAVA_JOB_FIELDS = {"date_submitted", "id", "parameters", "status", "results"}
JAVA_SERVICE_FIELDS = {
    "name",
    "description",
    "job_registration_schema",
    "has_timed_out",
    "id",
    "job_result_schema",
    "is_service_available",
    "jobs",
    "timeout",
}
JAVA_LISTED_SERVICE_FIELDS = {"id", "description", "name"}
JAVA_ENVELOPE = {"data", "meta", "links"}


class JavaClient:
    """The requests of the Java client: ``HttpURLConnection``, one connection each, no PATCH."""

    def __init__(self, base: str) -> None:
        self.base = base

    def _send(self, method: str, path: str, body: Any = None) -> requests.Response:
        headers = {"User-Agent": JAVA_AGENT, "Connection": "close"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        if method == "PATCH":  # AbstractMutableJSONEndpoint: a POST that says PATCH
            method, headers["X-HTTP-Method-Override"] = "POST", "PATCH"
        return requests.request(method, self.base + path, headers=headers, data=data, timeout=30)

    def get(self, path: str) -> dict[str, Any]:
        answer = self._send("GET", path)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        assert set(body) <= JAVA_ENVELOPE, body
        return body

    def job(self, job_id: object) -> dict[str, Any]:
        data: dict[str, Any] = self.get(f"/jobs/{job_id}")["data"]
        assert set(data) == JAVA_JOB_FIELDS, data  # Jackson: no field more, none less
        return data

    def patch_job(self, job_id: object, details: dict[str, Any]) -> requests.Response:
        """``JobEndpoint.patchJobData``: the whole ``JobDetails`` it read, changed."""
        return self._send("PATCH", f"/jobs/{job_id}", details)

    def set_status(self, job_id: object, status: str) -> None:
        answer = self.patch_job(job_id, {**self.job(job_id), "status": status})
        assert answer.status_code == 200, answer.text

    def set_result(self, job_id: object, result: Any) -> None:
        answer = self.patch_job(job_id, {**self.job(job_id), "results": result})
        assert answer.status_code == 200, answer.text

    def next_job(self, service_id: object) -> str | None:
        answer = self._send("GET", f"/services/{service_id}/jobs/next")
        if answer.status_code == 204:
            return None
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
        assert set(data) <= JAVA_JOB_FIELDS, data
        return str(data["id"])

    def service(self, service_id: object) -> dict[str, Any]:
        data: dict[str, Any] = self.get(f"/services/{service_id}")["data"]
        assert set(data) <= JAVA_SERVICE_FIELDS, data
        return data

    def check_in(self, service_id: object) -> None:
        assert self._send("PATCH", f"/services/{service_id}").status_code == 200

    def validate(self, instance: Any, schema: Any) -> bool:
        answer = self._send("POST", "/validator", {"object": instance, "schema": schema})
        assert answer.status_code in (200, 400), answer.text
        return answer.status_code == 200


class PythonClient:
    """The requests of TopChefClient: module-level ``requests`` calls, JSON bodies, ``PUT``."""

    def __init__(self, address: str, agent: str = PYTHON_AGENT) -> None:
        self.address = address
        self.headers = {"Content-Type": "application/json", "User-Agent": agent}

    def get(self, path: str) -> requests.Response:
        return requests.get(self.address + path, headers=self.headers, timeout=30)

    def json_get(self, path: str) -> Any:
        """``ServiceListener._json_get``: anything but 200 is a ``NetworkError``."""
        answer = self.get(path)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def post(self, path: str, body: Any) -> requests.Response:
        return requests.post(
            self.address + path, headers=self.headers, data=json.dumps(body), timeout=30
        )

    def put_job(self, details: dict[str, Any]) -> requests.Response:
        """``_Job._update``: ``PUT`` of the whole job dict it read, changed."""
        path = f"/jobs/{details['id']}"
        return requests.put(
            self.address + path, headers=self.headers, data=json.dumps(details), timeout=30
        )

    def new_service(self, name: str, registration: Any, result: Any) -> str:
        """``ServiceListener.new_service``."""
        body = {
            "description": f"{name}, by TopChefClient",
            "name": name,
            "job_registration_schema": registration,
            "job_result_schema": result,
        }
        answer = self.post("/services", body)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["data"]["service_details"]["id"])

    def new_job(self, service_id: str, parameters: Any) -> str:
        """``Service.new_job``: validate remotely against the schema read, then submit."""
        schema = self.json_get(f"/services/{service_id}")["data"]["job_registration_schema"]
        checked = self.post("/validator", {"object": parameters, "schema": schema})
        assert checked.status_code == 200, checked.text
        answer = self.post(f"/services/{service_id}/jobs", {"parameters": parameters})
        assert answer.status_code == 201, answer.text
        return str(answer.json()["data"]["job_details"]["id"])

    def is_queue_empty(self, service_id: str) -> bool:
        return bool(self.json_get(f"/services/{service_id}/queue")["data"] == [])

    def current_job(self, service_id: str) -> dict[str, Any]:
        """``ServiceListener.current_job``: the first of the queue, read again."""
        first = self.json_get(f"/services/{service_id}/queue")["data"][0]["id"]
        details: dict[str, Any] = self.json_get(f"/jobs/{first}")["data"]
        return details

    def run_iteration(self, service_id: str, run: Any) -> tuple[str, list[int]]:
        """``ServiceListener.run_iteration``: each step re-reads ``current_job``."""
        parameters = self.current_job(service_id)["parameters"]
        schema = self.json_get(f"/services/{service_id}")["data"]["job_registration_schema"]
        assert self.post("/validator", {"object": parameters, "schema": schema}).ok
        claimed = self.current_job(service_id)  # the job its status setter PUTs
        codes = [self.put_job({**claimed, "status": "WORKING"}).status_code]
        job_id = str(claimed["id"])
        if codes[-1] != 200:
            return job_id, codes  # the client raises NetworkError here
        result = run(parameters)
        codes.append(self.put_job({**self.current_job(service_id), "result": result}).status_code)
        codes.append(
            self.put_job({**self.current_job(service_id), "status": "COMPLETED"}).status_code
        )
        return job_id, codes

    def result(self, job_id: str) -> Any:
        """``Job.result``."""
        return self.json_get(f"/jobs/{job_id}")["data"]["result"]


NUMBER = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
SQUARE = {"type": "object", "properties": {"y": {"type": "integer"}}, "required": ["y"]}


def _square(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"y": parameters["x"] ** 2}


# -- the Java client ---------------------------------------------------------------------------


def test_the_java_clients_integration_tests_in_the_order_gradle_runs_them(gateway, stack):
    """Its 9 integration tests, on the seeded ids, alphabetically: as one JVM runs them."""
    seed_java_fixture(stack.producer)
    java = JavaClient(gateway.url)
    job, service = JAVA_JOB_ID, JAVA_SERVICE_ID

    # job_endpoint.SetJobResult: results on a REGISTERED job (they claim it for the sender).
    original = java.job(job)["results"]
    assert java.job(job)["status"] == "REGISTERED"
    java.set_result(job, {"value": "Hello"})
    assert java.job(job)["results"] == {"value": "Hello"}
    java.set_result(job, original)  # @After: null, with status WORKING: a repeated claim
    assert java.job(job)["status"] == "WORKING"
    assert java.job(job)["results"] is None  # its holder cleared the results it kept
    # job_endpoint.SetStatus
    before = java.job(job)["status"]
    java.set_status(job, "WORKING")
    assert java.job(job)["status"] == "WORKING"
    java.set_status(job, before)
    # json_schema_validator.Validate: validationTest, stringValidationTest
    bounded = {"type": "integer", "minimum": 1, "maximum": 10}
    assert java.validate({"value": 5}, {"type": "object", "properties": {"value": bounded}})
    assert java.validate({}, {"type": "object"})
    # service_endpoint.CheckIn
    assert java.service(service)["has_timed_out"] is True
    java.check_in(service)
    assert java.service(service)["has_timed_out"] is False
    # service_endpoint.GetJobs
    jobs = java.get(f"/services/{service}/jobs")["data"]
    assert jobs
    assert all(set(listed) <= JAVA_JOB_FIELDS for listed in jobs)
    # service_endpoint.GetNextJob: the job it holds comes first for it
    assert java.next_job(service) == str(job)
    # services_endpoint.GetDataFromServer: nonEmptyServiceList, canGetIndividualService
    listed = java.get("/services")["data"]
    assert listed
    assert all(set(entry) <= JAVA_LISTED_SERVICE_FIELDS for entry in listed)
    assert java.service(listed[0]["id"])["id"] == listed[0]["id"]


def test_the_java_clients_worker_loop_completes_jobs(gateway):
    """``getNextJob`` → ``setStatus(WORKING)`` → ``setResult`` → ``setStatus(COMPLETED)``."""
    service = gateway.api.create_service("Java squares", NUMBER, SQUARE)
    jobs = [gateway.api.submit(service, {"x": x}) for x in range(4)]
    java = JavaClient(gateway.url)

    done = []
    while (job := java.next_job(service)) is not None:
        java.set_status(job, "WORKING")
        java.set_result(job, _square(java.job(job)["parameters"]))
        java.set_status(job, "COMPLETED")
        done.append(job)

    assert done == jobs
    assert [java.job(job)["results"] for job in jobs] == [{"y": x * x} for x in range(4)]
    assert {java.job(job)["status"] for job in jobs} == {"COMPLETED"}


def test_a_holder_gives_its_job_back_and_no_one_else_can(gateway, stack):
    """WORKING → REGISTERED is its holder's alone, and the job is anyone's to claim again."""
    service = gateway.api.create_service("Given back", NUMBER, SQUARE)
    job = gateway.api.submit(service, {"x": 2})
    java = JavaClient(gateway.url)
    java.set_result(job, {"y": 5})
    someone = {"X-TopChef-Worker": "rig-2"}

    taken = gateway.api.patch(f"/jobs/{job}", json={"status": "REGISTERED"}, headers=someone)
    assert taken.status_code == 409
    assert java.job(job)["status"] == "WORKING"
    java.set_status(job, "REGISTERED")
    released = java.job(job)
    claimed = gateway.api.post(f"/services/{service}/jobs/claim", headers=someone)

    assert released["status"] == "REGISTERED"
    assert released["results"] is None  # what the holder had kept went with its claim
    assert claimed.status_code == 200
    assert claimed.json()["data"]["id"] == job
    assert claimed.json()["meta"]["worker"] == "http:rig-2"
    assert java.patch_job(job, {**java.job(job), "status": "REGISTERED"}).status_code == 409
    # The mirror replays the claim, its release and the new claim in order.
    mirror = Mirror(stack.settings, block_ms=10)
    mirror.ensure_group()
    assert mirror.step() == 3
    assert stack.job(uuid.UUID(job))["status"] == "WORKING"
    assert gateway.api.job(job)["meta"]["worker"] == "http:rig-2"


def test_a_job_a_celery_worker_runs_is_never_given_back_over_http(gateway, stack):
    service = gateway.api.create_service("Celery's", NUMBER, SQUARE)
    job = gateway.api.submit(service, {"x": 2})
    java = JavaClient(gateway.url)
    running = StateMessage(
        "status", uuid.UUID(service), uuid.UUID(job), status="WORKING", worker="celery@lab"
    )

    stack.claims.claim(uuid.UUID(job), 1, "celery@lab", running)

    details = {**java.job(job), "status": "WORKING"}
    assert java.patch_job(job, details).status_code == 409
    assert java.patch_job(job, {**details, "results": {"y": 4}}).status_code == 409
    assert stack.claims.holder(uuid.UUID(job)).worker == "celery@lab"


# -- the Python client (under /legacy) ---------------------------------------------------------


def test_the_python_clients_quickstart_and_listener_under_legacy(gateway):
    python = PythonClient(gateway.url + "/legacy")
    assert python.get("").status_code == 200  # is_server_alive
    service = python.new_service("Squares", NUMBER, SQUARE)
    assert python.is_queue_empty(service)  # 200 and [] when empty
    assert any(entry["id"] == service for entry in python.json_get("/services")["data"])
    invalid = python.post("/validator", {"object": {"x": "a"}, "schema": NUMBER})
    assert invalid.status_code == 400
    jobs = [python.new_job(service, {"x": x}) for x in range(3)]
    assert python.result(jobs[0]) is None
    assert not python.is_queue_empty(service)

    ran = []
    while not python.is_queue_empty(service):
        job, codes = python.run_iteration(service, _square)
        assert codes == [200, 200, 200], codes
        ran.append(job)
        assert requests.patch(python.address + f"/services/{service}").status_code == 200

    assert ran == jobs
    assert [python.result(job) for job in jobs] == [{"y": x * x} for x in range(3)]
    assert {python.json_get(f"/jobs/{job}")["data"]["status"] for job in jobs} == {"COMPLETED"}


def test_each_api_keeps_its_own_shapes(gateway):
    """``result`` and ``PUT`` are the legacy API's; the Java client's answers stay exact."""
    service = gateway.api.create_service("Two APIs", NUMBER, SQUARE)
    job = gateway.api.submit(service, {"x": 1})
    legacy = PythonClient(gateway.url + "/legacy")

    current = gateway.api.get(f"/jobs/{job}").json()
    old = legacy.json_get(f"/jobs/{job}")
    put = requests.put(gateway.url + f"/jobs/{job}", json={"status": "WORKING"}, timeout=30)

    assert set(current["data"]) == JAVA_JOB_FIELDS
    assert set(old["data"]) == JAVA_JOB_FIELDS | {"result"}
    # A link is an absolute path, which the client resolves against the URL it asked.
    link = urljoin(f"{gateway.url}/legacy/jobs/{job}", old["links"]["service"])
    assert link == f"{gateway.url}/legacy/services/{service}"
    assert put.status_code == 405
    assert gateway.api.get(f"/services/{uuid.uuid4()}/queue").status_code == 404
    assert gateway.api.get(f"/services/{service}/queue").status_code == 200
    gateway.api.patch(f"/jobs/{job}", json={"status": "COMPLETED", "results": {"y": 1}})
    assert gateway.api.get(f"/services/{service}/queue").status_code == 204
    assert legacy.json_get(f"/services/{service}/queue")["data"] == []


def test_two_python_listeners_never_run_one_job(gateway):
    """TopChef's race, over the legacy API: each job runs once, whoever wins it."""
    python = PythonClient(gateway.url + "/legacy")
    service = python.new_service("Raced", NUMBER, SQUARE)
    jobs = [python.new_job(service, {"x": x}) for x in range(20)]
    runs: dict[str, list[str]] = {"rig-a": [], "rig-b": []}

    def listener(name: str) -> None:
        # Two machines: two callers (on one host, told apart here by User-Agent).
        mine = PythonClient(python.address, agent=f"{PYTHON_AGENT} {name}")
        while not mine.is_queue_empty(service):
            try:
                job, codes = mine.run_iteration(service, _square)
            except IndexError:
                continue  # the queue emptied between two of its reads
            if codes[0] == 409:
                continue  # the other listener claimed it first (the client would stop)
            assert codes == [200, 200, 200], codes
            runs[name].append(job)

    run_in_threads(*(functools.partial(listener, name) for name in runs))
    assert sorted(runs["rig-a"] + runs["rig-b"]) == sorted(jobs)  # each once, none twice
    # TopChefClient reads a job's parameters before it claims the first of its
    # queue, which another listener may have taken meanwhile: its results may
    # then be another job's. Each job still ran once, and is COMPLETED.
    assert {python.json_get(f"/jobs/{job}")["data"]["status"] for job in jobs} == {"COMPLETED"}


def test_a_second_python_listener_on_the_same_machine_never_runs_the_first_ones_job(gateway):
    """Two copies of TopChefClient on one host are one caller: the second's claim is refused."""
    python = PythonClient(gateway.url + "/legacy")
    service = python.new_service("One host", NUMBER, SQUARE)
    job = python.new_job(service, {"x": 2})
    first = python.current_job(service)
    assert python.put_job({**first, "status": "WORKING"}).status_code == 200

    second = python.current_job(service)  # the copy sees the held job first, as its holder would
    refused = python.put_job({**second, "status": "WORKING"})
    named = {"X-TopChef-Worker": "rig-1"}
    mine = gateway.api.post(f"/services/{service}/jobs/claim", headers=named)

    assert second["id"] == job
    assert refused.status_code == 409
    assert python.put_job({**second, "result": {"y": 4}}).status_code == 200  # the holder goes on
    assert python.put_job({**second, "result": {"y": 4}, "status": "COMPLETED"}).ok
    assert python.result(job) == {"y": 4}
    assert mine.status_code == 204
    repeat = gateway.api.patch  # a named worker repeats its claim at / and /legacy alike
    other = gateway.api.submit(service, {"x": 3})
    for prefix in ("", "/legacy"):
        answers = [
            repeat(f"{prefix}/jobs/{other}", json={"status": "WORKING"}, headers=named)
            for _ in range(2)
        ]
        assert [answer.status_code for answer in answers] == [200, 200]


def test_a_python_listener_never_reports_on_a_job_it_did_not_claim(gateway, stack):
    """Its claim lapsed, the first of its queue is another job: that job is left alone."""
    python = PythonClient(gateway.url + "/legacy")
    service = python.new_service("Lapsed", NUMBER, SQUARE)
    held, other = python.new_job(service, {"x": 2}), python.new_job(service, {"x": 3})
    assert python.put_job({**python.current_job(service), "status": "WORKING"}).ok
    stack.redis.delete(keys.lease(held))  # its lease lapsed: beat gives the job up
    stack.tick()
    assert python.json_get(f"/jobs/{held}")["data"]["status"] == "ERROR"

    first = python.current_job(service)
    result = python.put_job({**first, "result": {"y": 4}})
    done = python.put_job({**python.current_job(service), "status": "COMPLETED"})

    assert first["id"] == other
    assert (result.status_code, done.status_code) == (409, 409)
    untouched = python.json_get(f"/jobs/{other}")["data"]
    assert (untouched["status"], untouched["result"]) == ("REGISTERED", None)
