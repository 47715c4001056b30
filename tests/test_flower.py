"""Flower, started by ``topchef flower`` against the test broker, shows each job as it ended.

Everything is read through Flower's own HTTP API (``/api/tasks``,
``/api/workers``, and the JSON of its Workers page, which holds the per-worker
counts the page shows), from a real Flower watching real worker and beat
processes.
"""

from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.request
import uuid
from typing import Any

import lab
import lab_controls as lc
import pytest
from support import free_port, wait_for

from broker.app import make_app
from broker.messaging import keys
from broker.tasks.beat import TICK_TASK

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

AUTH = "lab:secret"


def _get(url: str, auth: str | None = None) -> tuple[int | None, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""
    except OSError:
        return None, b""


class Flower:
    """A running ``topchef flower`` (behind basic auth) and the parts of its API we read."""

    def __init__(self, stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        port = free_port()
        monkeypatch.setenv("FLOWER_BASIC_AUTH", AUTH)
        self.process = stack.process("flower", "--port", str(port))
        self.base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _get(f"{self.base}/healthcheck")[0] == 200, 60, "Flower to answer")

    def json(self, path: str) -> Any:
        status, body = _get(self.base + path, auth=AUTH)
        assert status == 200, f"GET {path}: {status}"
        return json.loads(body)

    def tasks(self) -> dict[str, dict[str, Any]]:
        return dict(self.json("/api/tasks"))

    def task(self, task_id: str) -> dict[str, Any]:
        return self.tasks().get(task_id) or {}

    def wait_state(self, task_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(
            lambda: (task := self.task(task_id)).get("state") == state and task,
            timeout,
            f"Flower to show task {task_id} as {state} (it shows {self.task(task_id)})",
        )

    def nodes(self) -> set[str]:
        """The Celery nodes that answer Flower's inspection (``/api/workers?refresh=1``)."""
        return set(self.json("/api/workers?refresh=1"))

    def counts(self) -> dict[str, dict[str, Any]]:
        """Each node's row of the Workers page: its event counts (Succeeded, Failed…)."""
        return {row["hostname"]: row for row in self.json("/workers?json=1")["data"]}


@pytest.fixture
def flower(stack: Any, monkeypatch: pytest.MonkeyPatch) -> Flower:
    return Flower(stack, monkeypatch)


def _node(process: Any) -> str:
    return f"topchef-worker-{process.pid}@{socket.gethostname()}"


def _task_events_on(stack: Any, node: str) -> None:
    """Switch on ``node``'s task events, as Flower does every few seconds, and wait for its yes.

    A worker sends task events only once told to: a job it ran before that
    would be missing from Flower's counts.
    """
    control = make_app(stack.settings).control

    def answered() -> bool:
        replies = control.enable_events(destination=[node], reply=True, timeout=1)
        return any(node in reply for reply in replies or [])

    wait_for(answered, 60, f"{node} to switch its task events on")


def _serving(stack: Any, flower: Flower, *extra: str) -> tuple[Any, str]:
    worker = stack.worker(*extra)
    node = _node(worker)
    wait_for(lambda: node in flower.nodes(), 60, f"Flower to see {node}")
    _task_events_on(stack, node)
    return worker, node


def _task_id(job: uuid.UUID, attempt: int = 1) -> str:
    return f"{job}.{attempt}"


def test_flower_shows_each_job_with_its_service_name(stack, flower):
    stack.create_lab_services()
    assert _get(f"{flower.base}/api/tasks")[0] == 401  # basic auth is on

    def flower_lists_a_square_job():
        stack.producer.submit(lab.SQUARE, {"x": 2})  # sent events reach Flower once it listens
        tasks = flower.tasks().values()
        return any(lab.SQUARE in (task.get("kwargs") or "") for task in tasks)

    wait_for(flower_lists_a_square_job, 60, "Flower to list a job of the Square service")

    batch = stack.producer.submit_many(lab.SQUARE, [{"x": x} for x in range(5)], jobs_per_message=5)

    def flower_lists_the_batch():
        return any(
            task.get("name") == keys.JOB_BATCH_TASK
            and all(str(job) in (task.get("kwargs") or "") for job in batch)
            for task in flower.tasks().values()
        )

    wait_for(flower_lists_the_batch, 60, "Flower to list the batch as one task with its 5 jobs")


def test_an_error_job_is_a_failed_task_and_the_counts_are_sqls(stack, flower):
    stack.create_lab_services()
    stack.start_mirror()
    worker, node = _serving(stack, flower)
    completed = [stack.producer.submit(lab.SQUARE, {"x": x}) for x in range(3)]
    raised = [stack.producer.submit(lab.FAILING, {"x": x}) for x in range(2)]
    invalid = stack.producer.submit(lab.INVALID, {"x": 1})

    for x, job in enumerate(completed):
        stack.wait_status(job, "COMPLETED")
        succeeded = flower.wait_state(_task_id(job), "SUCCESS")
        assert succeeded["exception"] is None
        # The job's results, as SQL records them; not the word COMPLETED.
        assert stack.job(job)["results"] == {"square": x * x}
        assert succeeded["result"] == repr({"square": x * x}), succeeded["result"]
    for job in [*raised, invalid]:
        detail = stack.wait_status(job, "ERROR")["detail"]
        failed = flower.wait_state(_task_id(job), "FAILURE")
        assert detail
        assert detail in failed["exception"], (detail, failed["exception"])
        assert failed["retries"] == 0
    assert "boom 0" in flower.task(_task_id(raised[0]))["exception"]
    assert "invalid results" in flower.task(_task_id(invalid))["exception"]

    def counts_match_sql() -> bool:
        row = flower.counts().get(node, {})
        return (row.get("task-succeeded", 0), row.get("task-failed", 0)) == (
            stack.count_jobs(status="COMPLETED"),
            stack.count_jobs(status="ERROR"),
        )

    wait_for(counts_match_sql, 30, f"Flower's counts for {node} to be SQL's (3 and 3)")
    assert stack.count_jobs(status="COMPLETED") == 3
    assert stack.count_jobs(status="ERROR") == 3
    # Acknowledged, not redelivered: nothing is left queued, and each job ran once.
    for name in (lab.SQUARE, lab.FAILING, lab.INVALID):
        assert stack.queue_length(name) == 0
    # Celery logs each failed job in one line, without a traceback of its own.
    log = worker.log()
    assert log.count("raised expected: JobError(") == 3, log
    assert "raised unexpected" not in log


def test_a_cancelled_job_or_a_refused_delivery_is_no_success(stack, flower):
    stack.create_lab_services()
    stack.start_mirror()
    _worker, node = _serving(stack, flower)
    control = make_app(stack.settings).control
    queue = keys.service_queue(stack.service(lab.SQUARE).id)
    # Stop taking from the queue, so that the job is cancelled before its message is taken.
    assert control.cancel_consumer(queue, destination=[node], reply=True, timeout=5)
    cancelled = stack.producer.submit(lab.SQUARE, {"x": 7})
    stack.producer.cancel(cancelled)
    forged = uuid.uuid4()
    make_app(stack.settings).send_task(
        keys.JOB_TASK,
        kwargs={
            "job_id": str(forged),
            "service_id": str(stack.service(lab.SQUARE).id),
            "parameters": {"x": 1},
        },
        queue=queue,
        task_id=_task_id(forged),
    )
    assert control.add_consumer(queue, destination=[node], reply=True, timeout=5)

    revoked = flower.wait_state(_task_id(cancelled), "REVOKED")
    assert revoked["succeeded"] is None
    refused = flower.wait_state(_task_id(forged), "FAILURE")
    assert refused["exception"] == (
        "RefusedDelivery('refused (forged): it carries no signature of the core')"
    )
    assert stack.status(cancelled) == "CANCELLED"
    assert flower.counts()[node].get("task-succeeded", 0) == 0


def test_a_batch_row_names_its_jobs_and_their_outcomes(stack, flower):
    stack.create_lab_services()
    stack.start_mirror()
    _serving(stack, flower)
    # 60 jobs: more than the 1024 characters Celery keeps of a task's arguments by default.
    squares = stack.producer.submit_many(
        lab.SQUARE, [{"x": x} for x in range(60)], jobs_per_message=60
    )
    failing = stack.producer.submit_many(
        lab.FAILING, [{"x": x} for x in range(3)], jobs_per_message=3
    )
    for job in squares:
        stack.wait_status(job, "COMPLETED")
    for job in failing:
        stack.wait_status(job, "ERROR")

    def batch_row(jobs: list[uuid.UUID], state: str) -> dict[str, Any] | None:
        """The batch's row, found by its first job's id (the row is named after the service)."""
        for task in flower.tasks().values():
            text = (task.get("result") or "") + (task.get("exception") or "")
            if str(jobs[0]) in text:
                return task if task.get("state") == state else None
        return None

    done = wait_for(lambda: batch_row(squares, "SUCCESS"), 30, "the Square batch's row")
    assert all(str(job) in done["result"] for job in squares), done["result"]
    assert done["result"].startswith("{'COMPLETED': [")
    assert "ERROR" not in done["result"]
    failed = wait_for(lambda: batch_row(failing, "FAILURE"), 30, "the Failing batch's row")
    assert all(str(job) in failed["exception"] for job in failing), failed["exception"]
    assert "3 of 3 jobs ended ERROR" in failed["exception"], failed["exception"]
    assert "boom 2" in failed["exception"]


def test_nodes_carry_the_host_name_and_beat_ticks_stay_out_of_the_task_list(
    stack, flower, tmp_path, monkeypatch
):
    stack.create_lab_services()
    stack.start_mirror()
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))  # where beat kept its schedule file
    stack.process("beat", "--loglevel", "INFO")
    _serving(stack, flower)
    beat = f"topchef-beat@{socket.gethostname()}"
    wait_for(lambda: beat in flower.nodes(), 60, f"Flower to see {beat}")
    assert not any("%h" in name for name in flower.nodes()), flower.nodes()
    _task_events_on(stack, beat)

    inspect = make_app(stack.settings).control.inspect(destination=[beat], timeout=2)

    def ticks() -> int:
        stats = (inspect.stats() or {}).get(beat, {})
        return int(stats.get("total", {}).get(TICK_TASK, 0))

    first = wait_for(ticks, 30, "beat's first tick")
    wait_for(lambda: ticks() >= first + 3, 30, "three more ticks, with Flower watching")
    # A job sent after those ticks, seen to its end: Flower has read the events before it.
    job = stack.producer.submit(lab.SQUARE, {"x": 3})
    flower.wait_state(_task_id(job), "SUCCESS")

    names = [task.get("name") for task in flower.tasks().values()]
    assert TICK_TASK not in names, names
    assert flower.counts()[beat].get("task-succeeded", 0) == 0
    assert not [path.name for path in temporary.iterdir() if "schedule" in path.name]


def test_an_aborted_job_is_revoked_with_its_detail_not_started_forever(stack, flower):
    stack.producer.create_service(lc.ABORTABLE, "aborts", lc.TAGGED_SCHEMA, lc.COUNT_RESULTS)
    stack.start_mirror()
    node = _node(stack.worker(module="lab_controls"))
    wait_for(lambda: node in flower.nodes(), 60, f"Flower to see {node}")
    _task_events_on(stack, node)
    tag = uuid.uuid4().hex
    job = stack.producer.submit(lc.ABORTABLE, {"tag": tag})
    flower.wait_state(_task_id(job), "STARTED")
    stack.producer.abort(job, reason="sample drifted")
    detail = stack.wait_status(job, "CANCELLED")["detail"]
    revoked = flower.wait_state(_task_id(job), "REVOKED")
    assert "sample drifted" in (detail or "")
    assert revoked["result"].startswith(detail), revoked["result"]
    assert "partial results: {'done': " in revoked["result"], revoked["result"]
    assert flower.counts()[node].get("task-succeeded", 0) == 0
