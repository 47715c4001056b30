"""A shutdown leaves no finished job WORKING, and an instrument in its safe state.

``topchef up`` stopped with Ctrl-C while a job runs: its worker finishes the job
during the warm shutdown, and the mirror applies the report before it stops,
so SQL is true at once, not at the next start, and the job's end is stamped
when it happened.

``topchef worker`` (each pool, a real process) stopped with Ctrl-C twice, or
SIGQUIT: its running handlers are aborted as a user's abort would, their
``on_abort`` callbacks run once, and the worker exits within a bound in one
line, even past a handler that ignores the abort.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import lab
import lab_shutdown as ls
import pytest
from support import environment, wait_for

from broker.ops.supervisor import Supervisor
from broker.storage.tables import JobRow, open_session
from broker.worker.running import REPORT_GRACE
from broker.worker.shutdown import EXIT_MARGIN, SHUTDOWN_REASON

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def test_ctrl_c_on_topchef_up_records_the_job_finished_during_shutdown(stack, tmp_path):
    stack.create_lab_services()
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "broker", "up", "--worker", "lab", "--concurrency", "1"],
        cwd=tmp_path,
        env=environment(stack.settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    worker_log = tmp_path / ".topchef" / "logs" / "worker-lab.log"  # one log per module
    try:
        tag = uuid.uuid4().hex
        job = stack.producer.submit(lab.HELD, {"tag": tag})
        stack.wait_status(job, "WORKING", timeout=60)

        up.send_signal(signal.SIGINT)  # Ctrl-C
        wait_for(
            lambda: "warm shutdown" in worker_log.read_text(errors="replace").lower(),
            30,
            "the worker's warm shutdown",
        )
        released_at = datetime.now(UTC)
        stack.release(tag)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
        log.close()

    # SQL is already true: no mirror runs any more.
    with open_session(stack.settings.database_url) as session:
        row = session.get(JobRow, job)
        assert (row.status, row.results) == ("COMPLETED", {"tag": tag})
        # Stamped when the run ended, not when a mirror got round to it.
        assert abs((row.date_finished - released_at).total_seconds()) < 2.0
    assert not stack.service(lab.HELD).is_service_available


# -- a lab worker's Ctrl-C, once and twice ---------------------------------------------

#: The handlers' time to stop after a second Ctrl-C, in these tests.
GRACE = 2.0
#: How long after it a worker has exited at the latest, whatever its handlers do.
EXITED_WITHIN = GRACE + REPORT_GRACE + EXIT_MARGIN
POOLS = ["solo", "threads", "prefork"]


def _serving(stack, pool):
    for name in (ls.STEPPING, ls.EXPOSING, ls.STUCK):
        stack.producer.create_service(name, "a shutter", ls.SCHEMA, ls.RESULTS)
    stack.start_mirror()
    return stack.worker("--pool", pool, "--abort-grace", str(GRACE), module="lab_shutdown")


def _running(stack, service):
    tag = uuid.uuid4().hex
    job = stack.producer.submit(service, {"tag": tag})
    stack.wait_status(job, "WORKING")
    wait_for(lambda: stack.runs(tag) == 1, 30, "the handler to start")
    return tag, job


def _line(worker, text):
    """The worker's log line that contains ``text``, once there is one."""
    return next((line for line in worker.log().splitlines() if text in line), None)


def _shutter_closings(stack, tag):
    return int(stack.redis.get(ls.shutter_key(tag)) or 0)


def _exits_in_time(worker):
    """The worker's exit code, and whether it exited within its bound of the signal just sent.

    A second more than the bound, for the signal to arrive and the exit to be seen.
    """
    began = time.monotonic()
    code = worker.popen.wait(EXITED_WITHIN + 10)
    return code, time.monotonic() - began < EXITED_WITHIN + 1


@pytest.mark.parametrize("pool", POOLS)
def test_ctrl_c_once_names_the_job_it_waits_for_and_twice_aborts_it_to_its_safe_state(stack, pool):
    worker = _serving(stack, pool)
    tag, job = _running(stack, ls.STEPPING)

    worker.signal(signal.SIGINT)  # Ctrl-C in its terminal: its whole process group
    waiting = wait_for(lambda: _line(worker, "warm shutdown: waiting for"), 30, "the line")
    assert f"job {job.hex[:8]} ({ls.STEPPING})" in waiting
    assert "Ctrl-C again (or SIGQUIT) aborts it: the on_abort callbacks run" in waiting
    assert stack.status(job) == "WORKING"
    assert _shutter_closings(stack, tag) == 0

    worker.signal(signal.SIGINT)
    code, in_time = _exits_in_time(worker)

    ended = stack.wait_status(job, "CANCELLED")
    assert ended["detail"].startswith("aborted while running at ")
    assert ended["detail"].endswith(f": {SHUTDOWN_REASON}")
    assert set(ended["results"]) == {"done"}  # partial, as the handler returned them
    assert _shutter_closings(stack, tag) == 1
    assert stack.runs(tag) == 1
    assert (code, in_time) == (0, True)
    assert _line(worker, f"aborting job {job.hex[:8]} ({ls.STEPPING})")
    assert "Traceback" not in worker.log()


@pytest.mark.parametrize("pool", POOLS)
def test_sigquit_makes_safe_a_handler_that_never_looks_and_says_so_in_its_outcome(stack, pool):
    worker = _serving(stack, pool)
    tag, job = _running(stack, ls.EXPOSING)

    worker.signal(signal.SIGQUIT)
    code, in_time = _exits_in_time(worker)

    ended = stack.wait_status(job, "CANCELLED")
    assert _shutter_closings(stack, tag) == 1
    # What it measured with its shutter closed is kept, as partial results are.
    assert ended["results"] == {"done": 1, "total": 1}
    assert f": {SHUTDOWN_REASON}; its handler had not looked for the abort" in ended["detail"]
    assert ended["detail"].endswith("so the worker called its on_abort")
    assert stack.runs(tag) == 1
    assert (code, in_time) == (0, True)
    assert "Traceback" not in worker.log()


@pytest.mark.parametrize("pool", POOLS)
def test_a_handler_that_ignores_the_abort_is_left_to_its_policy_and_the_worker_exits(stack, pool):
    worker = _serving(stack, pool)
    tag, job = _running(stack, ls.STUCK)

    worker.signal(signal.SIGINT)
    wait_for(lambda: _line(worker, "warm shutdown: waiting for"), 30, "the warm shutdown")
    worker.signal(signal.SIGINT)
    code, in_time = _exits_in_time(worker)

    assert (code, in_time) == (1, True)
    exiting = _line(worker, "exiting: ")
    assert exiting.endswith(
        f"exiting: job {job.hex[:8]} ({ls.STUCK}): its handler did not stop within"
        f" {GRACE:g} s of the abort; as after a crash, it ends ERROR (worker lost) once its"
        " lease lapses"
    )
    assert "Traceback" not in worker.log()
    assert _shutter_closings(stack, tag) == 1  # made safe all the same
    ended = wait_for(
        lambda: stack.tick() is not None and stack.status(job) == "ERROR" and stack.job(job),
        30,
        "beat to apply the worker-loss policy",
    )
    assert "worker lost" in ended["detail"]
    stack.release(tag)
    assert stack.runs(tag) == 1


@pytest.mark.parametrize("pool", POOLS)
def test_ctrl_c_twice_mid_batch_aborts_its_running_job_and_hands_back_the_rest(stack, pool):
    worker = _serving(stack, pool)
    tags = [uuid.uuid4().hex for _ in range(3)]
    jobs = stack.producer.submit_many(
        ls.EXPOSING, [{"tag": tag} for tag in tags], jobs_per_message=3
    )
    stack.wait_status(jobs[0], "WORKING")
    wait_for(lambda: stack.runs(tags[0]) == 1, 30, "the batch's first handler to start")

    worker.signal(signal.SIGINT)
    waiting = wait_for(lambda: _line(worker, "warm shutdown: waiting for"), 30, "the line")
    assert "(3 jobs of Exposing)" in waiting
    worker.signal(signal.SIGINT)
    assert _exits_in_time(worker)[0] == 0

    assert stack.wait_status(jobs[0], "CANCELLED")["results"] == {"done": 1, "total": 1}
    assert [stack.status(job) for job in jobs[1:]] == ["REGISTERED", "REGISTERED"]
    assert [stack.runs(tag) for tag in tags] == [1, 0, 0]
    for tag in tags[1:]:
        stack.release(tag)
    stack.worker("--pool", pool, module="lab_shutdown")
    wait_for(
        lambda: (
            stack.tick() is not None
            and [stack.status(job) for job in jobs[1:]] == ["COMPLETED", "COMPLETED"]
        ),
        30,
        "beat to re-queue the rest and a new worker to run them",
    )
    assert [stack.runs(tag) for tag in tags] == [1, 1, 1]
    assert [_shutter_closings(stack, tag) for tag in tags] == [1, 0, 0]


def test_a_stack_stopping_aborts_the_jobs_its_worker_has_not_finished_in_time(stack, tmp_path):
    """``topchef up``'s Ctrl-C: a job still running when the warm shutdown's time is up."""
    for name in (ls.STEPPING, ls.EXPOSING, ls.STUCK):
        stack.producer.create_service(name, "a shutter", ls.SCHEMA, ls.RESULTS)
    stack.start_mirror()
    supervisor = Supervisor(environment(stack.settings), tmp_path / "logs")
    worker = supervisor.start("worker", "worker", "lab_shutdown", "--abort-grace", str(GRACE))
    tag, job = _running(stack, ls.STEPPING)

    supervisor.stop(timeout=1.0, names={"worker"}, abort_within=EXITED_WITHIN + 1)

    assert worker.popen.returncode == 0  # it exited by itself, not killed
    ended = stack.wait_status(job, "CANCELLED")
    assert ended["detail"].endswith(f": {SHUTDOWN_REASON}")
    assert _shutter_closings(stack, tag) == 1
    assert stack.runs(tag) == 1
