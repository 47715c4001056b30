"""One scenario's TopChef: fresh Redis data and tables, its processes, its producer.

Scenarios share the run's two servers but nothing else: each starts with an
empty Redis (``FLUSHALL``) and an empty database schema, its own ledger and
its own children, all stopped before the next scenario begins.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.chaos import ledger
from bench.chaos.audit import TERMINAL, Kill
from bench.chaos.handlers import SERVED_ENV
from bench.chaos.processes import Child
from bench.chaos.servers import PostgresCluster, RedisServer
from bench.chaos.services import SPECS
from bench.servers import python_env, registration_keys, wait_until
from broker.models.credentials import stack_credential
from broker.producer import Producer
from broker.settings import WORKER_KEY_FILE, Settings
from broker.storage.migrate import upgrade
from broker.storage.tables import forget_engine, open_session

log = logging.getLogger(__name__)

#: What each kind of child logs once it serves.
READY = {
    "worker": " ready.",
    "beat": " ready.",
    "mirror": "mirroring job states",
    "api": "TopChef API on",
}


@dataclass(frozen=True)
class Timings:
    """The broker's clocks, shortened so that a fault shows its effect in seconds."""

    lease_seconds: float = 3.0
    beat_interval: float = 1.0
    outbox_grace_seconds: float = 2.0
    visibility_timeout: float = 10.0

    def environment(self) -> dict[str, str]:
        return {
            "TOPCHEF_LEASE_SECONDS": str(self.lease_seconds),
            "TOPCHEF_BEAT_INTERVAL": str(self.beat_interval),
            "TOPCHEF_OUTBOX_GRACE_SECONDS": str(self.outbox_grace_seconds),
            "TOPCHEF_VISIBILITY_TIMEOUT": str(self.visibility_timeout),
        }


def poll_until(condition: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """``wait_until`` that answers False at the deadline instead of raising."""
    try:
        wait_until(condition, timeout, "a condition", interval)
        return True
    except TimeoutError:
        return False


class Stack:
    """The processes and the producer of one scenario."""

    def __init__(
        self,
        name: str,
        redis_server: RedisServer,
        postgres: PostgresCluster,
        directory: Path,
        timings: Timings,
    ) -> None:
        self.name = name
        self.redis = redis_server
        self.postgres = postgres
        self.timings = timings
        self.directory = directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ledger_path = self.directory / "ledger.jsonl"
        self.children: list[Child] = []
        self.kills: list[Kill] = []
        #: What the harness did beyond the scenario's script (restarts), for the report.
        self.notes: list[str] = []
        self.service_ids: dict[str, uuid.UUID] = {}
        self._served: dict[str, list[str]] = {}
        self._handled: set[str] = set()
        forget_engine(postgres.url)
        redis_server.flush()
        postgres.reset()
        upgrade(postgres.url)
        self.settings = Settings(
            database_url=postgres.url,
            broker_url=redis_server.url,
            lease_seconds=timings.lease_seconds,
            beat_interval=timings.beat_interval,
            outbox_grace_seconds=timings.outbox_grace_seconds,
            visibility_timeout=timings.visibility_timeout,
            **registration_keys(),
        )
        self.producer = Producer(self.settings)
        with open_session(postgres.url) as session, session.begin():
            #: The credential the workers sign their reports with, as ``topchef up``'s.
            self.worker_key = stack_credential(session, self.directory / WORKER_KEY_FILE)

    # -- processes -------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        tmp = self.directory / "tmp"  # beat keeps its schedule file in TMPDIR: not shared
        tmp.mkdir(exist_ok=True)
        return python_env(
            TOPCHEF_BROKER_URL=self.redis.url,
            TOPCHEF_DATABASE_URL=self.postgres.url,
            CHAOS_LEDGER=str(self.ledger_path),
            TOPCHEF_WORKER_KEY=str(self.worker_key),
            TMPDIR=str(tmp),
            **self.timings.environment(),
            **extra,
        )

    def start(self, role: str, *args: str, **env: str) -> Child:
        index = sum(1 for child in self.children if child.name.startswith(role + "-"))
        child = Child(f"{role}-{index}", list(args), self.env(**env), self.directory)
        self.children.append(child)
        return child

    def mirror(self) -> Child:
        return self.start("mirror", "mirror")

    def beat(self) -> Child:
        return self.start("beat", "beat")

    def worker(self, served: list[str], concurrency: int = 2) -> Child:
        args = ["worker", "bench.chaos.handlers", "--pool", "threads"]
        args += ["--concurrency", str(concurrency)]
        child = self.start("worker", *args, **{SERVED_ENV: ",".join(served)})
        self._served[child.name] = served
        return child

    def api(self, port: int) -> Child:
        return self.start("api", "api", "--port", str(port), "--threads", "32")

    @staticmethod
    def role(child: Child) -> str:
        return child.name.rsplit("-", 1)[0]

    def ready(self, *children: Child, timeout: float = 60.0) -> None:
        """Until every child says it serves (Celery's "ready.", the mirror's banner…)."""
        for child in children:
            child.wait_for_log(READY[self.role(child)], timeout)

    @staticmethod
    def is_ready(child: Child) -> bool:
        return READY[Stack.role(child)] in child.log()

    def event(self, what: str) -> None:
        """A fault, in the harness's log: the timeline to read the children's logs against."""
        log.info("%s: %s", self.name, what)

    def kill(self, child: Child) -> None:
        """SIGKILL a child on purpose; the audit excuses runs it cut off while reporting."""
        self._handled.add(child.name)
        self.event(f"SIGKILL {child.name} (pid {child.pid})")
        child.kill()
        assert child.killed_at is not None
        self.kills.append(Kill(child.pid, child.killed_at))

    def replace(self, child: Child) -> Child:
        """The same command again, in a new process."""
        self._handled.add(child.name)
        if self.role(child) == "worker":
            concurrency = int(child.args[child.args.index("--concurrency") + 1])
            return self.worker(self._served[child.name], concurrency)
        return self.start(self.role(child), *child.args)

    def revive(self) -> None:
        """Restart any child that exited on its own, and say so in the report.

        Not while a server is down: a process started then would only exit
        again (every TopChef command checks its servers as it starts).
        """
        if not (self.redis.responds() and self.postgres.responds()):
            return
        for child in list(self.children):
            if child.alive() or child.name in self._handled:
                continue
            self.notes.append(
                f"{child.name} exited on its own (code {child.returncode}); restarted it"
            )
            self.event(self.notes[-1])
            self.replace(child)

    def exited_on_their_own(self, role: str) -> list[Child]:
        return [
            c
            for c in self.children
            if self.role(c) == role and not c.alive() and c.killed_at is None and not c.stopped
        ]

    def living(self, role: str) -> list[Child]:
        return [c for c in self.children if self.role(c) == role and c.alive()]

    def stop(self, children: list[Child], timeout: float = 20.0, clean: bool = True) -> None:
        """SIGTERM them all at once (Celery finishes the jobs under way), then wait.

        Not ``clean``: SIGKILL, for processes whose last words nobody audits.
        """
        for child in children:
            self._handled.add(child.name)
            if child.alive():
                child.stopped = True
                child.thaw()
                child.signal(signal.SIGTERM if clean else signal.SIGKILL)
        deadline = time.monotonic() + timeout
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(max(0.1, deadline - time.monotonic()))
            child.stop(timeout=1)

    def close(self) -> None:
        self.stop(self.children)
        self.producer.app.close()
        forget_engine(self.postgres.url)

    # -- services, jobs and state ---------------------------------------------

    def create_services(self, names: list[str], timeout: float = 30.0) -> None:
        for name in names:
            spec = SPECS[name]
            self.service_ids[name] = self.producer.create_service(
                name,
                f"chaos instrument {name}",
                spec.parameters_schema,
                spec.results_schema,
                **spec.options(timeout),
            )

    def counts(self) -> dict[str, int] | None:
        """Jobs by status, read with plain SQL; None while the database cannot say."""
        try:
            with psycopg.connect(self.postgres.url, connect_timeout=5) as connection:
                rows = connection.execute("SELECT status, count(*) FROM jobs GROUP BY status")
                return {status: int(n) for status, n in rows}
        except psycopg.Error:
            return None

    def unfinished(self) -> int | None:
        counts = self.counts()
        if counts is None:
            return None
        return sum(n for status, n in counts.items() if status not in TERMINAL)

    def waiting(self) -> int | None:
        """REGISTERED jobs: those nobody has taken yet."""
        counts = self.counts()
        return None if counts is None else counts.get("REGISTERED", 0)

    def ledger(self) -> list[ledger.Line]:
        return ledger.read(self.ledger_path)

    def started_run(self, token: str) -> ledger.Line | None:
        """The ledger's first start of the job with ``token``, if it has started."""
        for line in self.ledger():
            params = line.params if isinstance(line.params, dict) else {}
            if line.event == "start" and params.get("token") == token:
                return line
        return None
