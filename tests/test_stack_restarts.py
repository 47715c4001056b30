"""``topchef up`` outlives its parts: a dead worker, mirror or beat is started again.

Real stacks, started as a user starts them: handlers that end their worker's
process mid-job (``lab_crash``), a worker module that ends it as it is
imported (``lab_doomed``), and ``kill -9`` of the parts and of Redis.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from pathlib import Path

import lab_crash
import pytest
import redis
from support import start_in_session, stop_session, topchef, unconfigured_environment, wait_for

from broker.producer import Producer
from broker.settings import Settings, announced_url, stack_database_url

pytestmark = pytest.mark.slow  # every test starts a stack

psutil = pytest.importorskip("psutil")

TESTS = str(Path(__file__).parent)
#: One death line: which part, its pid, how it ended, and when it starts again.
DEATH = re.compile(
    r"^(?P<name>.+?) \(pid (?P<pid>\d+)\) (?P<how>exited with code -?\d+|was killed by \w+) "
    r"after \d+ s up; starting it again in (?P<delay>\d+) s \(at \d\d:\d\d:\d\d\); log: \S+$",
    re.M,
)


def _deaths(out: Path, name: str) -> list[re.Match[str]]:
    return [m for m in DEATH.finditer(out.read_text()) if m["name"] == name]


def _up(directory: Path, *modules: str, **variables: str):  # type: ignore[no-untyped-def]
    """``topchef up`` serving ``modules`` in ``directory``, once it is up; and its output file."""
    argv = topchef("up", "-c", "1", *(a for m in modules for a in ("--worker", m)))
    env = unconfigured_environment(PYTHONPATH=TESTS, **variables)
    out = directory / "up.out"
    up = start_in_session(argv, directory, env, out)
    wait_for(lambda: up.poll() is not None or "Only this PC" in out.read_text(), 60, "topchef up")
    assert up.poll() is None, out.read_text()
    return up, out


def _part(up, *command: str):  # type: ignore[no-untyped-def]
    """The running child of ``up`` whose command line ends with ``command``."""
    found = [
        child
        for child in psutil.Process(up.pid).children()
        if child.is_running() and tuple(child.cmdline()[-len(command) :]) == command
    ]
    return found[0] if len(found) == 1 else None


def _producer(directory: Path) -> Producer:
    url = announced_url(directory)
    assert url is not None
    return Producer(Settings(broker_url=url, database_url=stack_database_url(directory)))


def _redis_pid(directory: Path) -> int:
    url = announced_url(directory)
    assert url is not None
    with redis.Redis.from_url(url.replace("redis+socket://", "unix://")) as client:
        return int(client.info("server")["process_id"])


def _ran_on(producer: Producer, job: uuid.UUID) -> int:
    """The pid of the worker process that ran ``job`` (its provenance names it)."""
    return int(producer.provenance(job)["run"]["worker"].rpartition(":")[2])  # host:pid


def _finished(producer: Producer, job: uuid.UUID, status: str) -> dict:  # type: ignore[type-arg]
    return wait_for(
        lambda: (row := producer.job(job))["status"] == status and row,
        60,
        f"job {job} to be {status}",
    )


def test_a_dead_worker_is_started_again_and_its_jobs_meet_their_policy(tmp_path):
    # A short lease, so that beat finds a dead worker's job within seconds.
    up, out = _up(
        tmp_path,
        "lab_crash",
        "lab_doomed",
        TOPCHEF_LEASE_SECONDS="3",
        TOPCHEF_BEAT_INTERVAL="0.5",
    )
    crash = "worker lab_crash"
    try:
        producer = _producer(tmp_path)
        for name, policy in ((lab_crash.CRASH_FAIL, "fail"), (lab_crash.CRASH_REQUEUE, "requeue")):
            producer.create_service(
                name, "ends its process", lab_crash.SCHEMA, lab_crash.RESULTS,
                worker_loss_policy=policy,
            )  # fmt: skip
        mirror, beat = _part(up, "mirror"), _part(up, "beat")
        redis_pid = _redis_pid(tmp_path)
        first = _part(up, "worker", "lab_crash", "-c", "1")
        assert mirror
        assert beat
        assert first

        # fail: the job is lost with its worker; the worker is started again and runs the next.
        lost = producer.submit(lab_crash.CRASH_FAIL, {"tag": uuid.uuid4().hex, "exit": True})
        wait_for(lambda: _deaths(out, crash), 60, "the worker's death to be told")
        (death,) = _deaths(out, crash)
        assert (int(death["pid"]), death["how"], death["delay"]) == (
            first.pid,
            "exited with code 3",
            "1",
        )
        assert "worker lost" in _finished(producer, lost, "ERROR")["detail"]
        tag = uuid.uuid4().hex
        after = producer.submit(lab_crash.CRASH_FAIL, {"tag": tag, "exit": False})
        assert _finished(producer, after, "COMPLETED")["results"] == {"tag": tag, "runs": 1}
        second = _ran_on(producer, after)
        assert second != first.pid
        assert producer.job(lost)["status"] == "ERROR"  # never ran again

        # requeue: the job runs again, on the worker started after its death.
        tag = uuid.uuid4().hex
        again = producer.submit(lab_crash.CRASH_REQUEUE, {"tag": tag, "exit": True})
        wait_for(lambda: len(_deaths(out, crash)) == 2, 60, "the second death")
        death = _deaths(out, crash)[1]
        assert (int(death["pid"]), death["delay"]) == (second, "2")  # dead again soon: doubled
        row = _finished(producer, again, "COMPLETED")
        assert (row["results"], row["attempts"]) == ({"tag": tag, "runs": 2}, 2)
        third = _ran_on(producer, again)
        assert third not in (first.pid, second)

        # kill -9, of the worker and of the mirror and beat: each is started again.
        os.kill(third, signal.SIGKILL)
        wait_for(lambda: len(_deaths(out, crash)) == 3, 60, "the third death")
        assert _deaths(out, crash)[2]["how"] == "was killed by SIGKILL"
        assert mirror.is_running()  # untouched by the workers' deaths
        assert beat.is_running()
        assert _redis_pid(tmp_path) == redis_pid
        mirror.kill()
        beat.kill()
        wait_for(lambda: _deaths(out, "mirror") and _deaths(out, "beat"), 30, "their deaths")
        assert _deaths(out, "mirror")[0]["how"] == "was killed by SIGKILL"
        tag = uuid.uuid4().hex
        last = producer.submit(lab_crash.CRASH_FAIL, {"tag": tag, "exit": False})
        _finished(producer, last, "COMPLETED")  # through the new mirror, on the fourth worker
        assert _ran_on(producer, last) not in (first.pid, second, third)

        # A worker that dies as it starts waits twice as long each time: no busy loop.
        starts = tmp_path / ".topchef" / "logs" / "worker-lab_doomed.log"

        def waiting_long() -> list[re.Match[str]]:
            """Its deaths once it waits 16 s or more to start again (one start per death)."""
            deaths = _deaths(out, "worker lab_doomed")
            started = starts.read_text().count("lab_doomed: starting")
            return deaths if len(deaths) >= 5 and started == len(deaths) else []

        doomed = wait_for(waiting_long, 120, "the doomed worker to wait 16 s")
        delays = [int(m["delay"]) for m in doomed]
        assert delays == [2**n for n in range(len(delays))], delays
        waited = len(doomed)
        parts = psutil.Process(up.pid).children()
        began = time.monotonic()
        os.kill(up.pid, signal.SIGTERM)
        assert up.wait(60) == 0, out.read_text()
        took = time.monotonic() - began
    finally:
        stop_session(up, signal.SIGINT)  # a failed test leaves no Redis behind
    assert took < delays[-1], took  # stopped at once, not after the backoff's wait
    _gone, alive = psutil.wait_procs(parts, timeout=10)
    assert not alive
    assert starts.read_text().count("lab_doomed: starting") == waited  # not started again
    # One line per death, and none for the parts that stopped with the stack.
    assert len(_deaths(out, crash)) == 3
    assert len(_deaths(out, "mirror")) == len(_deaths(out, "beat")) == 1
    said = out.read_text()
    assert "Traceback" not in said
    assert said.rstrip().endswith("stopped")


def test_a_stack_whose_redis_dies_stops_whole_and_says_why(tmp_path):
    up, out = _up(tmp_path, "workers.echo")
    try:
        parts = psutil.Process(up.pid).children()
        assert len(parts) == 3  # mirror, beat, the worker
        redis_pid = _redis_pid(tmp_path)
        os.kill(redis_pid, signal.SIGKILL)
        assert up.wait(90) == 1
    finally:
        stop_session(up, signal.SIGINT)  # a failed test leaves no Redis behind
    _gone, alive = psutil.wait_procs(parts, timeout=10)
    assert not alive, [part.cmdline() for part in alive]
    said = out.read_text()
    assert "Error: Process exited: the embedded Redis stopped: the stack stops with it" in said
    assert "Traceback" not in said
    assert not DEATH.search(said)  # nothing was started again meanwhile
