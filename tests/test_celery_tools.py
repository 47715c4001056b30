"""Celery's own command, ``celery -A broker …``, against real TopChef worker processes.

Each command runs as a real subprocess with the environment every ``topchef``
command gets, so it proves that ``-A broker`` finds the app and configures it
as ``Settings.from_env()`` does.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import lab
import pytest
from support import environment, wait_for

from broker.messaging import keys
from broker.producer import Producer

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def celery(stack, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "broker", *args],
        env=environment(stack.settings),
        cwd=stack.tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _serving(stack):
    stack.create_lab_services()
    stack.start_mirror()
    worker = stack.worker()
    stack.wait_available(lab.SQUARE)
    return worker


def _queue(stack, name: str) -> str:
    return keys.service_queue(stack.service(name).id)


def test_inspect_and_status_answer_from_the_running_workers(stack):
    _serving(stack)
    # A worker answers control commands once its consumer is up, a moment after it checks in.
    # A worker answers control commands once its consumer is up, a moment after
    # it checks in; each reply is awaited 1 s (Celery's default), so ask again.
    queues = _answered(stack, "inspect", "active_queues")
    assert _queue(stack, lab.SQUARE) in queues
    assert _queue(stack, lab.HELD) in queues

    registered = _answered(stack, "inspect", "registered")
    for task in (keys.JOB_TASK, keys.REQUEUE_JOB_TASK, keys.JOB_BATCH_TASK):
        assert f"* {task}\n" in registered

    status = _answered(stack, "status")
    assert "1 node online." in status
    assert "topchef-worker-" in status


def _answered(stack, *command: str) -> str:
    done = wait_for(
        lambda: (result := celery(stack, *command)).returncode == 0 and result,
        60,
        f"the worker to answer `celery {' '.join(command)}`",
    )
    return str(done.stdout)


def test_events_dump_shows_the_jobs_producers_send(stack):
    _serving(stack)
    dump = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "broker", "events", "--dump"],
        env=environment(stack.settings),
        cwd=stack.tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(dump.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    sent: list[uuid.UUID] = []
    last_submit = [0.0]

    def dumped_a_job() -> bool:
        """True once the dump shows a job sent; submits one a second until then.

        A producer asks whether anyone listens at most every few seconds, and
        the dump subscribes a moment after it starts, so the first jobs may go
        unannounced, as jobs sent before a Flower starts do.
        """
        if any(f"task sent: {keys.JOB_TASK}({job}.1)" in line for job in sent for line in lines):
            return True
        if time.monotonic() - last_submit[0] >= 1.0:
            last_submit[0] = time.monotonic()
            sent.append(Producer(stack.settings).submit(lab.SQUARE, {"x": len(sent)}))
        return False

    try:
        wait_for(dumped_a_job, 60, "the event dump to show a job sent")
        for job in sent:
            stack.wait_status(job, "COMPLETED")
    finally:
        dump.terminate()
        dump.wait(10)
        reader.join(10)
        dump.stdout.close()  # type: ignore[union-attr]


def test_purge_finds_the_service_queues_and_purged_jobs_stay_registered(stack):
    _serving(stack)
    running = uuid.uuid4().hex
    first = stack.producer.submit(lab.HELD, {"tag": running})
    stack.wait_status(first, "WORKING")  # the worker (concurrency 1) is busy: the rest wait
    waiting_tag = uuid.uuid4().hex
    stack.release(waiting_tag)
    waiting = [stack.producer.submit(lab.HELD, {"tag": waiting_tag}) for _ in range(2)]
    wait_for(lambda: stack.queue_length(lab.HELD) == 2, 30, "two messages queued")

    purged = celery(stack, "purge", "-f")
    assert purged.returncode == 0, purged.stderr
    assert "Purged 2 messages" in purged.stdout
    assert stack.queue_length(lab.HELD) == 0
    assert [stack.status(job) for job in waiting] == ["REGISTERED", "REGISTERED"]

    # As the README says: beat sends a purged job again once a job submitted
    # after it has run on its service.
    stack.release(running)
    stack.wait_status(first, "COMPLETED")
    later = stack.producer.submit(lab.HELD, {"tag": waiting_tag})
    stack.wait_status(later, "COMPLETED")
    wait_for(
        lambda: set(waiting) <= set(stack.tick_looking_for_overtaken(stale=0.01).republished),
        30,
        "beat to send the purged jobs again",
    )
    for job in waiting:
        stack.wait_status(job, "COMPLETED")


def test_a_plain_celery_worker_or_beat_is_refused_with_the_command_to_use(stack):
    worker = celery(stack, "worker", "--pool", "solo")
    assert worker.returncode != 0
    assert "run `topchef worker MODULE`" in worker.stderr
    assert "Traceback" not in worker.stderr

    beat = celery(stack, "beat")
    assert beat.returncode != 0
    assert "run `topchef beat`" in beat.stderr
    assert not list(Path(stack.tmp_path).glob("celerybeat-schedule*"))


def test_a_bad_setting_is_one_line_not_a_traceback(stack):
    env = environment(stack.settings) | {"TOPCHEF_BROKER_URL": "http://nowhere"}
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "broker", "status"],
        env=env,
        cwd=stack.tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "Error: Configuration error: TOPCHEF_BROKER_URL must be a Redis URL "
        "(redis://, rediss:// or redis+socket://), got 'http://nowhere'"
    ]
