"""TopChef's worker loop over HTTP: many clients claiming and completing jobs at once.

``jobs`` jobs are submitted to a service no Celery worker serves; then
``clients`` client threads, in a process of their own (the load generator),
each run the loop of TopChef's HTTP workers against ``topchef api`` on
PostgreSQL: ``POST /services/<id>/jobs/claim?wait=0``, then ``PATCH
/jobs/<id>`` with ``COMPLETED`` and results, on a kept-alive connection, until
no job is left to claim. The figures: jobs completed per second (first claim to
last PATCH), each job's claim → COMPLETED answer time, and the requests that
failed (any answer but 200, or 204 for the last claim). SQL is then checked:
every job COMPLETED.

``submit_rate`` is the other side: ``clients`` threads each submit ``jobs``
jobs (``POST /services/<id>/jobs``), all to one service or each to its own.

``python -m bench.http_loop PORT SERVICE_ID CLIENTS`` is the load generator
(``python -m bench.http_loop PORT submit JOBS SERVICE_ID...`` for submits).
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from bench.ours import OurStack
from bench.payload import PARAMETERS_SCHEMA, RESULTS_SCHEMA, parameters
from bench.servers import PYTHON, free_port, wait_until
from bench.stats import percentile

SERVICE = "BenchHttp"


@dataclass(frozen=True)
class Loop:
    rate: float
    p50_ms: float
    p99_ms: float
    failures: int
    completed_in_sql: int


def measure(ours: OurStack, jobs: int, clients: int, threads: int) -> Loop:
    service_id = ours.producer.ensure_service(
        SERVICE, "http workers", PARAMETERS_SCHEMA, RESULTS_SCHEMA, timeout=60
    )
    ours.service_ids[SERVICE] = service_id
    ours.purge()
    port = free_port()
    api = ours._start(f"api-{threads}", "api", "--port", str(port), "--threads", str(threads))
    try:
        wait_until(lambda: _answers(port), 60, "topchef api to answer")
        job_ids = ours.producer.submit_many(
            SERVICE, [parameters(i) for i in range(jobs)], jobs_per_message=1
        )
        ours.mark_published()
        generator = [PYTHON, "-m", "bench.http_loop", str(port), str(service_id), str(clients)]
        done = subprocess.run(
            generator, env=ours.env(), capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            raise RuntimeError(f"the load generator failed: {done.stderr[-2000:]}")
        found = json.loads(done.stdout)
        completed = ours.completed(job_ids)
        latencies = found["latencies_ms"]
        return Loop(
            len(latencies) / found["seconds"],
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
            found["failures"],
            completed,
        )
    finally:
        api.stop()
        ours.purge()


def submit_rate(ours: OurStack, clients: int, jobs: int, one_service: bool) -> tuple[float, int]:
    """Jobs per second, and failed requests, of ``clients`` HTTP clients submitting."""
    names = [f"BenchHttpSubmit{0 if one_service else index}" for index in range(clients)]
    ids = {
        name: ours.producer.ensure_service(
            name, "http producers", PARAMETERS_SCHEMA, RESULTS_SCHEMA, timeout=60
        )
        for name in set(names)
    }
    ours.service_ids.update(ids)
    ours.purge()
    port = free_port()
    api = ours._start("api-submit", "api", "--port", str(port), "--threads", "8")
    try:
        wait_until(lambda: _answers(port), 60, "topchef api to answer")
        generator = [PYTHON, "-m", "bench.http_loop", str(port), "submit", str(jobs)]
        generator += [str(ids[name]) for name in names]
        done = subprocess.run(
            generator, env=ours.env(), capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            raise RuntimeError(f"the load generator failed: {done.stderr[-2000:]}")
        found = json.loads(done.stdout)
        return found["submitted"] / found["seconds"], found["failures"]
    finally:
        api.stop()
        ours.purge()


def _submitter(port: int, service_id: str, jobs: int, out: list[int], failures: list[int]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    for index in range(jobs):
        body = json.dumps({"parameters": parameters(index)})
        connection.request("POST", f"/services/{service_id}/jobs", body=body, headers=headers)
        answer = connection.getresponse()
        answer.read()
        if answer.status == 201:
            out.append(1)
        else:
            failures.append(answer.status)


def submit(port: int, jobs: int, service_ids: list[str]) -> dict[str, object]:
    submitted: list[int] = []
    failures: list[int] = []
    threads = [
        threading.Thread(target=_submitter, args=(port, service, jobs, submitted, failures))
        for service in service_ids
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "seconds": time.perf_counter() - started,
        "submitted": len(submitted),
        "failures": len(failures),
    }


def _answers(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/")
        return connection.getresponse().status == 200
    except OSError:
        return False


# -- the load generator (a process of its own) ------------------------------------


def _client(port: int, service_id: str, name: str, out: list[float], failures: list[int]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"X-TopChef-Worker": name, "Content-Type": "application/json"}
    body = json.dumps({"status": "COMPLETED", "results": {"ok": True}})
    while True:
        started = time.perf_counter()
        connection.request("POST", f"/services/{service_id}/jobs/claim?wait=0", headers=headers)
        claimed = connection.getresponse()
        answer = claimed.read()
        if claimed.status == 204:
            return
        if claimed.status != 200:
            failures.append(claimed.status)
            continue
        job = json.loads(answer)["data"]["id"]
        connection.request("PATCH", f"/jobs/{job}", body=body, headers=headers)
        patched = connection.getresponse()
        patched.read()
        if patched.status != 200:
            failures.append(patched.status)
            continue
        out.append((time.perf_counter() - started) * 1000)


def generate(port: int, service_id: str, clients: int) -> dict[str, object]:
    latencies: list[float] = []
    failures: list[int] = []
    workers = [
        threading.Thread(
            target=_client,
            args=(port, service_id, f"bench-{uuid.uuid4().hex[:6]}", latencies, failures),
        )
        for _ in range(clients)
    ]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {
        "seconds": time.perf_counter() - started,
        "latencies_ms": latencies,
        "failures": len(failures),
    }


if __name__ == "__main__":
    if sys.argv[2] == "submit":
        print(json.dumps(submit(int(sys.argv[1]), int(sys.argv[3]), sys.argv[4:])))
    else:
        print(json.dumps(generate(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))))
