"""Flower, started by ``topchef flower`` against the test broker, sees our jobs."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import lab
import pytest
from support import wait_for

from broker.messaging import keys

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str, auth: str | None = None):
    request = urllib.request.Request(url)
    if auth:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""
    except OSError:
        return None, b""


def test_flower_shows_each_job_with_its_service_name(stack, monkeypatch):
    stack.create_lab_services()
    port = _free_port()
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "lab:secret")
    flower = stack.process("flower", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _get(f"{base}/healthcheck")[0] == 200, 60, "Flower to answer")
    assert _get(f"{base}/api/tasks")[0] == 401  # basic auth is on

    def flower_lists_a_square_job():
        stack.producer.submit(lab.SQUARE, {"x": 2})  # sent events reach Flower once it listens
        status, body = _get(f"{base}/api/tasks", auth="lab:secret")
        if status != 200:
            return False
        tasks = json.loads(body).values()
        return any(lab.SQUARE in (task.get("kwargs") or "") for task in tasks)

    wait_for(flower_lists_a_square_job, 60, "Flower to list a job of the Square service")

    batch = stack.producer.submit_many(lab.SQUARE, [{"x": x} for x in range(5)], jobs_per_message=5)

    def flower_lists_the_batch():
        status, body = _get(f"{base}/api/tasks", auth="lab:secret")
        tasks = json.loads(body).values() if status == 200 else []
        return any(
            task.get("name") == keys.JOB_BATCH_TASK
            and all(str(job) in (task.get("kwargs") or "") for job in batch)
            for task in tasks
        )

    wait_for(flower_lists_the_batch, 60, "Flower to list the batch as one task with its 5 jobs")
    flower.stop()
