"""The servers a chaos run owns: a persistent Redis and a private PostgreSQL cluster.

Both can be killed or restarted mid-scenario on the same port and the same
data directory, which is the point: a restart must find what was there before
(Redis replays its append-only file; PostgreSQL its data directory). Neither
touches the machine's own servers, and both are removed when the run ends,
however it ends (``close`` is idempotent and also registered with ``atexit``).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg
import redis

from bench.servers import free_port, wait_until

#: Where to look for PostgreSQL's server binaries, newest version first.
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


class RedisServer:
    """A redis-server with the append-only file on, as production runs it.

    ``appendfsync everysec`` is what docker-compose's Redis uses by default; a
    SIGKILL of the server loses nothing it acknowledged (the file is written
    before the reply, only its fsync is deferred), so a restart here must give
    back every queue, claim and stream entry.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.popen: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        atexit.register(self.close)
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=2)

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        self.popen = subprocess.Popen(
            [
                "redis-server",
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--maxmemory-policy", "noeviction",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        wait_until(self.responds, 20, "the chaos redis-server to accept commands", 0.02)

    def responds(self) -> bool:
        try:
            with self.client() as client:
                # A server still loading its append-only file answers LOADING.
                return bool(client.ping())
        except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final rewrite of the append-only file."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()
        self.restarts += 1

    def flush(self) -> None:
        with self.client() as client:
            client.flushall()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def _pg_bin() -> Path:
    override = os.environ.get("TOPCHEF_CHAOS_PG_BIN")
    if override:
        return Path(override)
    found = sorted(glob.glob(PG_BIN_GLOB), key=lambda p: int(Path(p).parent.name), reverse=True)
    if found:
        return Path(found[0])
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("no PostgreSQL server binaries (set TOPCHEF_CHAOS_PG_BIN)")
    return Path(initdb).parent


class PostgresCluster:
    """A PostgreSQL cluster of our own (``initdb``), on a free loopback port.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the
    ``postgres`` user and every server command runs through ``runuser``.
    """

    def __init__(self, directory: Path) -> None:
        self.bin = _pg_bin()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.data = directory / "data"
        self.log = directory / "postgresql.log"
        self.port = free_port()
        self.running = False
        self.restarts = 0
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(directory, owner.pw_uid, owner.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        atexit.register(self.close)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync")  # fmt: skip
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [*self._as_user, str(self.bin / tool), *args]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            start_new_session=True,  # the postmaster must not share our terminal's signals
            cwd=self.directory,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr[-2000:]}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            # Durability against an OS crash is not what is tested; a fast
            # shutdown still checkpoints everything.
            "-c fsync=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "60", "start")  # fmt: skip
        self.running = True
        wait_until(self.responds, 30, "the chaos PostgreSQL to accept connections", 0.05)

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
            self.running = False

    def restart(self) -> None:
        self.stop()
        self.start()
        self.restarts += 1

    def responds(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2) as connection:
                connection.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def reset(self) -> None:
        """Drop every table: a scenario starts from an empty database."""
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute("SET lock_timeout = '10s'")
            connection.execute("DROP SCHEMA IF EXISTS public CASCADE")
            connection.execute("CREATE SCHEMA public")

    def close(self) -> None:
        if self.running:
            try:
                self.stop("fast")
            except (RuntimeError, subprocess.TimeoutExpired):
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self.stop("immediate")
            self._kill_leftovers()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """A postmaster that ignored pg_ctl (it should not) is killed by its pid file."""
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
        self.running = False


def run_directory() -> Path:
    """A private temporary directory; world-traversable, so ``postgres`` can reach its own."""
    path = Path(tempfile.mkdtemp(prefix="topchef-chaos-"))
    path.chmod(0o755)
    return path
