"""Serving the gateway with waitress: many threads, pure Python, no C build."""

from __future__ import annotations

import errno
import logging
import threading
from typing import Any

import waitress  # type: ignore[import-untyped]
from flask import Flask
from waitress import wasyncore

from broker.gateway.app import create_app
from broker.gateway.context import Gateway
from broker.settings import Settings

log = logging.getLogger(__name__)

#: Threads serving requests; each waiting claim (``?wait=``) holds one.
DEFAULT_THREADS = 16


class Server:
    """The gateway listening on ``host:port`` (port 0: any free one), until ``close``."""

    def __init__(
        self,
        settings: Settings,
        host: str = "127.0.0.1",
        port: int = 0,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        self.app: Flask = create_app(settings)
        self._map: dict[Any, Any] = {}
        self._server = waitress.create_server(
            self.app,
            map=self._map,
            host=host,
            port=port,
            threads=threads,
            ident="topchef",
            # Keep reading each connection while its request runs, so that a
            # long-polling claimer that hangs up is seen (``caller_gone``).
            channel_request_lookahead=1,
            # Waitress refuses what Flask would refuse anyway, before buffering it.
            max_request_body_size=settings.api_max_body_bytes * 2 + 65536,
        )
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        host = self._server.effective_host
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve in this thread until ``close`` is called (or SIGTERM's handler calls it)."""
        try:
            self._server.run()  # returns on Ctrl-C too
        finally:
            self._stop_serving()
            wasyncore.close_all(self._map)  # the loop has ended: safe to close here

    def start(self) -> Server:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._server.run, name="topchef-api", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving: finish the requests under way, then close every socket."""
        first = not self._stopped
        self._stop_serving()
        if first:
            # Sockets belong to the loop's thread: close them there, and the loop ends.
            try:
                self._server.trigger.pull_trigger(lambda: wasyncore.close_all(self._map))
            except OSError as error:
                if error.errno != errno.EBADF:
                    raise
                # The trigger's pipe is already closed, so the loop cannot be
                # woken: close the sockets from here (waitress's loop ignores
                # EBADF from sockets closed under it) and let it end.
                log.warning("the server's wake-up pipe was already closed; closing directly")
                wasyncore.close_all(self._map, ignore_all=True)
        if self._thread is not None:
            self._thread.join(10)

    def _stop_serving(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        shared = self.app.extensions["topchef"]
        assert isinstance(shared, Gateway)
        shared.closing.set()  # waiting claims return now
        self._server.task_dispatcher.shutdown(timeout=5)
