"""A whole TopChef stack on one PC: the processes ``topchef demo`` and ``topchef up`` run.

Each part runs as its own ``topchef`` child process — the same commands an
operator would start by hand — in its own process group, so that stopping the
stack stops everything it started, and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis

from broker.errors import ConfigurationError, TopChefError
from broker.messaging import keys
from broker.ops.embedded import EmbeddedRedis
from broker.ops.network import Listen
from broker.settings import (
    PREFIX,
    STATE_DIR,
    Settings,
    announced_url,
    masked,
    stack_database_url,
)

log = logging.getLogger(__name__)

#: The example workers a default stack serves.
EXAMPLE_WORKERS = ("workers.echo", "workers.rabi")


class ProcessExitedError(TopChefError):
    """A part of the stack stopped on its own."""

    title = "Process exited"


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class Supervisor:
    """Starts ``topchef`` subcommands with one environment; stops them all."""

    environment: dict[str, str]
    log_dir: Path
    children: list[Child] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start(self, name: str, *args: str) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        handle = log_path.open("ab")
        self._logs.append(handle)
        popen = subprocess.Popen(
            [sys.executable, "-m", "broker", *args],
            env=self.environment,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        child = Child(name, popen, log_path)
        self.children.append(child)
        return child

    def check(self) -> None:
        """Raise if a child has exited: a stack missing a part would hang silently."""
        for child in self.children:
            if child.popen.poll() is not None:
                raise ProcessExitedError(
                    f"{child.name} exited with code {child.popen.returncode}; "
                    f"its log ({child.log_path}) ends:\n{child.tail()}"
                )

    def stop(
        self,
        timeout: float = 20.0,
        names: Collection[str] | None = None,
        abort_within: float | None = None,
    ) -> None:
        """SIGTERM the children (all, or those ``names``), then SIGKILL what is left.

        A worker's SIGTERM is Celery's warm shutdown: it finishes the jobs it
        is running and reports them before it exits. ``abort_within``: the
        children still running after ``timeout`` are sent SIGQUIT first, and
        given that long more — a worker's SIGQUIT aborts its running jobs,
        bringing their instruments to a safe state, and exits within it.
        """
        stopping = [c for c in self.children if names is None or c.name in names]
        for child in stopping:
            _signal(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in stopping:
            try:
                child.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                if abort_within is None or not _aborted(child, abort_within):
                    log.warning("%s did not stop in time; killing it", child.name)
                    _signal(child, signal.SIGKILL)
                    child.popen.wait(5)
            _signal(child, signal.SIGKILL)  # anything its process group left behind
        self.children = [c for c in self.children if c not in stopping]
        if not self.children:
            for handle in self._logs:
                handle.close()
            self._logs.clear()

    def alive(self, name: str) -> bool:
        return any(c.name == name and c.popen.poll() is None for c in self.children)


def _aborted(child: Child, within: float) -> bool:
    """Whether ``child``, sent SIGQUIT, exits ``within`` that many seconds."""
    log.warning("%s is still running jobs: aborting them", child.name)
    _signal(child, signal.SIGQUIT)
    try:
        child.popen.wait(within)
    except subprocess.TimeoutExpired:
        return False
    return True


def _signal(child: Child, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.popen.pid, signum)


def child_environment(settings: Settings) -> dict[str, str]:
    """The environment that makes every child use ``settings``' broker and database."""
    env = dict(os.environ)
    env[PREFIX + "BROKER_URL"] = settings.broker_url
    env[PREFIX + "DATABASE_URL"] = settings.database_url
    return env


@contextlib.contextmanager
def local_stack(
    directory: Path,
    workers: Sequence[str] = EXAMPLE_WORKERS,
    concurrency: int = 4,
    settings: Settings | None = None,
    listen: Listen | None = None,
) -> Iterator[tuple[Settings, Supervisor]]:
    """Run mirror, beat and workers (and, unconfigured, an embedded Redis and SQLite).

    ``directory`` holds what the stack writes: the embedded Redis's data, the
    default SQLite file and the children's logs. ``listen`` opens the embedded
    Redis to other PCs (``broker.ops.network``); a configured broker is
    reached as it is configured, so it is refused with one.
    """
    from broker.ops.examples import ensure_example_services
    from broker.storage.migrate import upgrade

    # The variables alone: a stack makes its own broker and database, it does
    # not join another stack's (``from_env()`` would find one running here).
    settings = settings or Settings.from_env(os.environ)
    state = directory / STATE_DIR
    if listen is not None and settings.broker_url:
        raise ConfigurationError(
            f"--listen opens the Redis `topchef up` starts, but TOPCHEF_BROKER_URL is set "
            f"({masked(settings.broker_url)}): other PCs use that URL; unset it, or drop --listen"
        )
    if not settings.broker_url and (running := announced_url(directory)):
        raise ConfigurationError(
            f"a TopChef stack is already running in {directory} (its Redis answers at "
            f"{masked(running)}): stop it first, or use it"
        )
    with contextlib.ExitStack() as cleanup:
        if not settings.broker_url:
            embedded = cleanup.enter_context(EmbeddedRedis(state, listen))
            settings = _replace(settings, broker_url=embedded.url)
        if not settings.database_url:
            settings = _replace(settings, database_url=stack_database_url(directory))
        upgrade(settings.database_url)
        ensure_example_services(settings)
        supervisor = Supervisor(child_environment(settings), state / "logs")
        cleanup.callback(shut_down, supervisor, settings)
        supervisor.start("mirror", "mirror")
        supervisor.start("beat", "beat")
        if workers:
            supervisor.start("worker", "worker", *workers, "--concurrency", str(concurrency))
        yield settings, supervisor


def shut_down(supervisor: Supervisor, settings: Settings, drain_timeout: float = 30.0) -> None:
    """Stop a stack so that SQL ends up true: workers first, the mirror last.

    The workers' warm shutdown reports the jobs they finish (those that do
    not finish in time are aborted, their instruments made safe); the mirror
    then applies the state stream to its end before it stops, so that no job
    whose run ended is left WORKING until the stack's next start.
    """
    from broker.messaging.connections import redis_client
    from broker.worker.shutdown import exit_bound

    # A job still running after the warm shutdown's time is aborted, not killed.
    supervisor.stop(names={"worker"}, abort_within=exit_bound() + 1)
    client = redis_client(settings.broker_url)
    deadline = time.monotonic() + drain_timeout
    try:
        while supervisor.alive("mirror") and int(client.xlen(keys.STATE_STREAM)) > 0:
            if time.monotonic() > deadline:
                log.warning("the mirror did not apply every state change in time")
                break
            time.sleep(0.05)
    except redis.RedisError as error:
        log.warning("cannot see the state stream (%s); stopping the mirror now", error)
    supervisor.stop()


def _replace(settings: Settings, **changes: str) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)  # type: ignore[arg-type]
