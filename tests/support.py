"""Test helpers: waiting on conditions with a deadline, and real TopChef processes."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import redis

from broker.settings import PUBLIC_KEY_FILE, SIGNING_KEY_FILE, Settings
from broker.trust.registrations import Registrar, ensure_pair

T = TypeVar("T")


def registration_keys(directory: Path) -> dict[str, str]:
    """A registration key pair made in ``directory``, as ``Settings`` fields.

    The test session makes one (``conftest``) and puts it in the environment,
    as a deployment gives its producers the private key and its workers the
    public one; ``keyed`` adds it to settings a test builds itself.
    """
    private, public = directory / SIGNING_KEY_FILE, directory / PUBLIC_KEY_FILE
    ensure_pair(private, public)
    return {"registration_signing_key": str(private), "registration_public_key": str(public)}


def signing_key_file() -> str:
    """The session's private registration key file (``registration_keys``)."""
    return os.environ["TOPCHEF_REGISTRATION_SIGNING_KEY"]


def registrar() -> Registrar:
    """What signs the session's jobs, for a test that signs by hand."""
    return Registrar.from_file(signing_key_file())


def keyed(settings: Settings) -> Settings:
    """``settings`` with the session's registration keys (``registration_keys``)."""
    return dataclasses.replace(
        settings,
        registration_signing_key=os.environ["TOPCHEF_REGISTRATION_SIGNING_KEY"],
        registration_public_key=os.environ["TOPCHEF_REGISTRATION_PUBLIC_KEY"],
    )


def free_port() -> int:
    """A loopback port nothing listens on now, for a server a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_in_threads(*targets: Callable[[], object]) -> None:
    """Run each target in its own thread; re-raise the first failure here."""
    failures: list[BaseException] = []

    def guarded(target: Callable[[], object]) -> None:
        try:
            target()
        except BaseException as error:  # reported to the test below
            failures.append(error)

    threads = [threading.Thread(target=guarded, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a worker thread hung"
    if failures:
        raise failures[0]


def wait_for(condition: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    interval = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
        interval = min(0.1, interval * 1.5)


def waiting_in_brpop(client: redis.Redis) -> int:
    """How many clients of ``client``'s database wait, blocked, in BRPOP now.

    An idle worker's consumer waits so on its queues' lists: a test that
    needs a worker to be waiting (not busy between two messages) waits for it.
    """
    db = int(client.connection_pool.connection_kwargs.get("db", 0))
    return sum(
        1
        for other in client.client_list()
        if other.get("cmd") == "brpop" and "b" in other.get("flags", "") and int(other["db"]) == db
    )


def popped_by_waiting_consumers(
    url: str, lists: Sequence[str], push: Callable[[], object], consumers: int = 1
) -> list[tuple[str, bytes]]:
    """The (list, message) that ``push`` hands each of ``consumers`` already waiting in BRPOP.

    Each consumer blocks on ``lists`` in turn, as idle workers do (kombu names
    a queue's lists highest priority first, ``priorities.queue_lists``), and
    only once all wait is ``push`` called; the answers come in the order they
    started waiting, the order Redis serves them in. A consumer that is not
    yet waiting would read the lists in the order it names them, and could
    not show which push reached it first.
    """
    names = [f"waiting-{uuid.uuid4().hex[:8]}" for _ in range(consumers)]
    clients = [redis.Redis.from_url(url, client_name=name) for name in names]
    observer = redis.Redis.from_url(url)
    popped: dict[int, tuple[bytes, bytes] | None] = {}

    def wait(index: int) -> None:
        popped[index] = clients[index].brpop(lists, 20)

    def waiting(name: str) -> bool:
        return any(
            other.get("name") == name and other.get("cmd") == "brpop"
            for other in observer.client_list()
        )

    threads = [threading.Thread(target=wait, args=(index,)) for index in range(consumers)]
    try:
        for thread, name in zip(threads, names, strict=True):
            thread.start()
            wait_for(lambda name=name: waiting(name), 10, "a consumer to wait in BRPOP")
        push()
    finally:
        for thread in threads:
            thread.join(30)
        for client in (*clients, observer):
            client.close()
    answers = [popped.get(index) for index in range(consumers)]
    assert None not in answers, f"a waiting consumer got nothing: {answers}"
    return [(key.decode(), message) for key, message in filter(None, answers)]


def environment(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process use ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOPCHEF_")}
    env.update(
        TOPCHEF_BROKER_URL=settings.broker_url,
        TOPCHEF_DATABASE_URL=settings.database_url,
        TOPCHEF_LEASE_SECONDS=str(settings.lease_seconds),
        TOPCHEF_BEAT_INTERVAL=str(settings.beat_interval),
        TOPCHEF_OUTBOX_GRACE_SECONDS=str(settings.outbox_grace_seconds),
        TOPCHEF_VISIBILITY_TIMEOUT=str(settings.visibility_timeout),
        TOPCHEF_REGISTRATION_SIGNING_KEY=settings.registration_signing_key,
        TOPCHEF_REGISTRATION_PUBLIC_KEY=settings.registration_public_key,
        TOPCHEF_WORKER_KEY=settings.worker_key,
        PYTHONPATH=str(Path(__file__).parent) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    if settings.artifacts_url:
        env["TOPCHEF_ARTIFACTS_URL"] = settings.artifacts_url
    return env


def unconfigured_environment(**variables: str) -> dict[str, str]:
    """This environment with no ``TOPCHEF_*`` or ``FLOWER_*`` variable, but ``variables``.

    What a user's shell has: a command falls back on the ``topchef up`` of
    its working directory, or says what is missing.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOPCHEF_", "FLOWER_"))}
    env.update(variables)
    return env


def topchef(*args: str) -> list[str]:
    """The argv of a ``topchef`` command, run by this interpreter."""
    return [sys.executable, "-m", "broker", *args]


def start_in_session(
    argv: list[str], cwd: Path, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """A process in a session of its own, as a terminal starts it, writing to ``log``."""
    with log.open("wb") as output:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop_session(process: subprocess.Popen[bytes], signum: int) -> int:
    """Send ``signum`` to the process's session (SIGINT: Ctrl-C); kill it if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signum)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait(10)


class Process:
    """A ``topchef`` subcommand running as a real child process, logging to a file."""

    def __init__(
        self, args: list[str], settings: Settings, log_path: Path, cwd: Path | None = None
    ) -> None:
        """``cwd``: where it runs (for one whose directory has a ``celeryconfig.py`` of its own)."""
        self.args = args
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "broker", *args],
            env=environment(settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process and everything it started (SIGSTOP: a frozen PC)."""
        os.killpg(self.popen.pid, signum)

    def kill(self) -> None:
        """``kill -9`` the process and everything it started."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        """A clean shutdown (SIGTERM); kill -9 if it does not stop in time."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.popen.returncode
