"""The servers and processes a run owns: a private Redis, a PostgreSQL schema, children.

Nothing here touches a server the harness did not start, except the one
PostgreSQL schema it creates and drops: a run can go beside tests and other
runs on the same machine.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import redis
from sqlalchemy.engine import make_url

from broker.settings import PUBLIC_KEY_FILE, SIGNING_KEY_FILE
from broker.storage.tables import create_schema, engine_for
from broker.trust.registrations import ensure_pair

REPO = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get(
    "TOPCHEF_BENCH_POSTGRES_URL",
    os.environ.get("TOPCHEF_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
)


def wait_until(condition, timeout: float, what: str, interval: float = 0.01):
    """Poll ``condition`` until truthy; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A redis-server of our own on a free loopback port, without persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="topchef-bench-redis-")
        self.popen = subprocess.Popen(
            [
                "redis-server",
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", self.directory,
                "--maxmemory-policy", "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        wait_until(lambda: self._ping(client), 10, "the bench's redis-server")

    @staticmethod
    def _ping(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


class PostgresSchema:
    """A schema of our own on the configured PostgreSQL, with TopChef's tables."""

    def __init__(self, base_url: str = POSTGRES_URL) -> None:
        self.base = make_url(base_url)
        self.libpq = self.base.set(drivername="postgresql").render_as_string(hide_password=False)
        self.name = f"topchef_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        url = self.base.update_query_dict({"options": f"-csearch_path={self.name}"})
        self.url = url.render_as_string(hide_password=False)
        with psycopg.connect(self.libpq, autocommit=True) as connection:
            connection.execute(f'CREATE SCHEMA "{self.name}"')
        create_schema(self.url)

    def connect(self) -> psycopg.Connection:
        """A plain psycopg connection whose search path is the bench's schema."""
        connection = psycopg.connect(self.libpq, autocommit=True)
        connection.execute(f'SET search_path TO "{self.name}"')
        return connection

    def truncate_jobs(self) -> None:
        with self.connect() as connection:
            connection.execute("SET lock_timeout = '10s'")
            connection.execute("TRUNCATE jobs CASCADE")

    def close(self) -> None:
        engine_for(self.url).dispose()
        with psycopg.connect(self.libpq, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')


class Child:
    """A child process in its own process group, logging to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_dir: Path, name: str) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            args,
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def peak_rss_mib(self) -> float:
        """Peak resident memory (VmHWM) of the process and its children, in MiB."""
        pids = [self.pid]
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
            pids += [int(child) for child in children]
        except OSError:
            pass
        total = 0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total / 1024

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
            except ProcessLookupError:
                pass
        self._log.close()


@functools.cache
def registration_keys() -> dict[str, str]:
    """The run's registration key pair, as ``Settings`` fields: what signs and checks its jobs.

    Made once, in a directory removed when the run ends, and handed to every
    child (``python_env``): producers sign, workers verify, as deployed.
    """
    directory = Path(tempfile.mkdtemp(prefix="topchef-bench-keys-"))
    atexit.register(shutil.rmtree, directory, True)
    private, public = directory / SIGNING_KEY_FILE, directory / PUBLIC_KEY_FILE
    ensure_pair(private, public)
    return {"registration_signing_key": str(private), "registration_public_key": str(public)}


def python_env(**extra: str) -> dict[str, str]:
    """The environment of a child: this repository importable, no stray TOPCHEF_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOPCHEF_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update({f"TOPCHEF_{name.upper()}": value for name, value in registration_keys().items()})
    env.update(extra)
    return env


PYTHON = sys.executable
