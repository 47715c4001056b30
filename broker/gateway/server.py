"""Serving the gateway with waitress: many threads, pure Python, no C build.

Waitress's public API is used: ``create_server`` with documented
adjustments, and the server's ``run`` and ``close``; and the class its
connections take error answers from, so that what waitress refuses itself is
answered as every other error (``broker.gateway.refusals``). Waitress has no public
way to stop a server that is running (its maintainers say so:
Pylons/waitress#343) except the one ``run`` handles itself: a Ctrl-C, that is
an exception raised in the thread running its loop, after which waitress lets
its request threads finish (up to 5 s) and returns. ``Server.close`` ends the
loop that way, from inside the loop's thread, once nothing is left to lose:

1. waiting claims return at once (``Gateway.closing``), new connections are
   refused, and the requests under way finish while the loop still sends
   their answers;
2. every connection is hung up on (``shutdown``, which is safe from any
   thread: waitress's loop reads the end of the stream, finishes sending what
   it has, and closes the connection itself);
3. a connection of its own then reaches the listening socket, whose
   ``accept``, run by the loop, raises ``_Stop``; ``run`` returns, and the
   sockets left are closed in that thread, where nothing else uses them.

No socket is ever closed under a running loop, and waitress's wake-up pipe is
closed only after its request threads have stopped: closing it earlier, from
another thread, is what raised the intermittent EBADF in test teardown (and a
request thread could then write to whatever reused the descriptor).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import waitress  # type: ignore[import-untyped]
from flask import Flask
from werkzeug.wsgi import ClosingIterator

from broker.gateway.app import create_app
from broker.gateway.context import Gateway
from broker.gateway.refusals import answer_refusals_in_json
from broker.settings import Settings

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: Threads serving requests; each waiting claim holds one.
DEFAULT_THREADS = 16
#: Seconds ``close`` gives the requests under way, then the connections' last answers.
DRAIN_SECONDS = 5.0


class _Stop(SystemExit):
    """Raised in waitress's loop to end ``run`` the way Ctrl-C does."""


class _Listener(socket.socket):
    """The listening socket given to waitress (``sockets=``), which keeps track of what it accepted.

    Waitress accepts connections with this socket's ``accept``, in its loop's
    thread; so the socket knows every connection to hang up on when closing,
    refuses new ones once closing, and can end the loop from its thread.
    """

    def __init__(self, family: socket.AddressFamily) -> None:
        super().__init__(family, socket.SOCK_STREAM)
        self._lock = threading.Lock()
        self._accepted: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        #: Set by ``Server.close``: new connections are closed at once.
        self.refusing = False
        #: Set by ``Server.close`` last: the next connection ends the loop.
        self.stopping = False

    def accept(self) -> tuple[socket.socket, Any]:
        connection, address = super().accept()
        if not self.refusing:
            with self._lock:
                self._accepted.add(connection)
            return connection, address
        connection.close()
        if self.stopping:
            raise _Stop
        # What a connection gone before it was accepted raises; waitress skips it quietly.
        raise ConnectionAbortedError(errno.ECONNABORTED, "the gateway is closing")

    def open_connections(self) -> list[socket.socket]:
        """The accepted connections not closed yet (waitress closes them with this object)."""
        with self._lock:
            return [connection for connection in self._accepted if connection.fileno() != -1]


def _listen(host: str, port: int) -> _Listener:
    """A socket bound to the first address ``host`` names, as waitress would bind it."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = _Listener(family)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.bind(address)
    except BaseException:
        listener.close()
        raise
    return listener


class _Requests:
    """The application as waitress calls it, counting the requests under way (for ``close``)."""

    def __init__(self, app: WSGIApplication) -> None:
        self._app = app
        self._running = 0
        self._changed = threading.Condition()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        with self._changed:
            self._running += 1
        try:
            body = self._app(environ, start_response)
        except BaseException:
            self._finished()
            raise
        # A request ends when waitress closes its body, having written all of it.
        return ClosingIterator(body, self._finished)

    def _finished(self) -> None:
        with self._changed:
            self._running -= 1
            self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._running == 0, timeout)


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
        self._requests = _Requests(self.app)
        self._listener = _listen(host, port)
        self._address: tuple[str, int] = self._listener.getsockname()[:2]
        try:
            self._server = waitress.create_server(
                self._requests,
                sockets=[self._listener],
                threads=threads,
                ident="topchef",
                # Keep reading each connection while its request runs, so that a
                # long-polling claimer that hangs up is seen (``caller_gone``).
                channel_request_lookahead=1,
                # Flask refuses a body over the limit; waitress one far over it
                # (chunked framing counts), before buffering it (``refusals``).
                max_request_body_size=settings.api_max_body_bytes * 2 + 65536,
            )
            answer_refusals_in_json(self._server, settings.api_max_body_bytes)
        except BaseException:
            self._listener.close()
            raise
        self._thread: threading.Thread | None = None
        self._loop_thread: threading.Thread | None = None
        # Reentrant: SIGTERM's handler may call ``close`` in the middle of ``_after_loop``.
        self._lock = threading.RLock()
        self._closer: threading.Thread | None = None
        self._serving = threading.Event()
        self._loop_ended = threading.Event()
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        return int(self._address[1])

    @property
    def url(self) -> str:
        host = self._address[0]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve in this thread until ``close`` is called (or SIGTERM's handler calls it)."""
        self._loop_thread = threading.current_thread()
        self._serving.set()
        try:
            with contextlib.suppress(_Stop):  # waitress catches it; should it not
                self._server.run()  # returns on Ctrl-C too, having stopped its threads
        finally:
            self._after_loop()

    def start(self) -> Server:
        """Serve in a background thread."""
        self._serving.set()  # before the thread runs: ``close`` waits for it
        self._thread = threading.Thread(target=self.run, name="topchef-api", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving: finish the requests under way, then close every socket.

        Called in the serving thread itself (SIGTERM's handler runs there) it
        only starts the shutdown, which needs that thread's loop, and ``run``
        returns when it is done; from another thread it returns once serving
        has ended.
        """
        with self._lock:
            if self._closer is None:
                self._gateway().closing.set()  # waiting claims return now
                self._listener.refusing = True
                self._closer = threading.Thread(
                    target=self._shut_down, name="topchef-api-close", daemon=True
                )
                self._closer.start()
            closer = self._closer
        if threading.current_thread() is self._loop_thread:
            return
        closer.join(DRAIN_SECONDS * 4)
        if self._serving.is_set():
            self._stopped.wait(DRAIN_SECONDS * 2)

    def _shut_down(self) -> None:
        """Steps 1 to 3 of the module's docstring, in a thread of their own."""
        self._requests.wait_idle(DRAIN_SECONDS)
        deadline = time.monotonic() + DRAIN_SECONDS
        while not self._loop_ended.is_set() and time.monotonic() < deadline:
            connections = self._listener.open_connections()
            if not connections:
                break
            for connection in connections:
                with contextlib.suppress(OSError):  # closed meanwhile
                    connection.shutdown(socket.SHUT_RD)
            time.sleep(0.01)
        if not self._serving.is_set():  # never served: no loop to end
            self._after_loop()
            return
        self._listener.stopping = True
        with (
            contextlib.suppress(OSError),  # refused: the loop has ended already
            socket.create_connection(self._address, timeout=DRAIN_SECONDS),
        ):
            self._loop_ended.wait(DRAIN_SECONDS * 2)

    def _after_loop(self) -> None:
        """Close what is left; waitress's loop and request threads have stopped."""
        self._loop_ended.set()
        self._gateway().closing.set()
        with self._lock:
            if self._stopped.is_set():
                return
            self._server.close()  # the listening socket and the loop's wake-up pipe
            for connection in self._listener.open_connections():
                connection.close()
            self._stopped.set()

    def _gateway(self) -> Gateway:
        shared = self.app.extensions["topchef"]
        assert isinstance(shared, Gateway)
        return shared
