"""What every request handler of the gateway shares."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from flask import current_app, request
from sqlalchemy.orm import Session

from broker.errors import JobWithUUIDNotFound, ServiceWithUUIDNotFound
from broker.gateway.dispatch import HTTP_PREFIX, Dispatcher
from broker.gateway.envelope import parse_id
from broker.messaging.connections import redis_client
from broker.models.service import Service
from broker.producer import Producer
from broker.settings import Settings
from broker.storage.tables import JobRow, ServiceRow, open_session


class Gateway:
    """What every request handler shares."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = Producer(settings)
        self.producer.require_signing_key()  # it publishes the jobs it is sent: it signs them
        self.redis = redis_client(settings.broker_url)
        #: Set when the server shuts down, so that waiting claims return at once.
        self.closing = threading.Event()
        self.dispatcher = Dispatcher(self.redis, settings, self.closing)

    def writing(self) -> contextlib.AbstractContextManager[Session]:
        """A transaction that commits on success and publishes the jobs it added."""
        return self.producer.session()

    @contextlib.contextmanager
    def reading(self) -> Iterator[Session]:
        with open_session(self.settings.database_url) as session:
            yield session


def gateway() -> Gateway:
    """The ``Gateway`` of the application handling this request."""
    shared = current_app.extensions["topchef"]
    assert isinstance(shared, Gateway)
    return shared


#: An HTTP worker may name itself; claims then recognise it, and repeats are idempotent.
WORKER_HEADER = "X-TopChef-Worker"


#: The path under which the gateway speaks the API TopChefClient (Python, 2017-07) was written for.
LEGACY_PREFIX = "/legacy"
#: Where ``Generations`` records which of TopChef's APIs a request speaks.
GENERATION_KEY = "topchef.api_generation"


def _printable(value: str, limit: int) -> str:
    return "".join(c for c in value if c.isprintable()).strip()[:limit]


def http_worker() -> tuple[str, bool]:
    """The worker name of this request's claims, and whether the client chose it.

    TopChef's own clients never name themselves, so a caller without
    ``X-TopChef-Worker`` is known by its address and its ``User-Agent``: the
    Java client and the Python client on one machine are two callers, and
    each may repeat its own claim. Two copies of one client on one machine
    cannot be told apart by anything they send; they are one caller.
    """
    given = _printable(request.headers.get(WORKER_HEADER, ""), 200)
    if given:
        return HTTP_PREFIX + given, True
    address = request.remote_addr or "unknown"
    agent = _printable(request.headers.get("User-Agent", ""), 100)
    return HTTP_PREFIX + (f"{address} ({agent})" if agent else address), False


def legacy() -> bool:
    """Whether this request came under ``LEGACY_PREFIX``: TopChefClient's older API.

    TopChef's two client generations read conflicting shapes (TopChefClient
    reads ``result`` from a job; the Java client refuses any field it does not
    know), so the base URL a client is given chooses which one it is answered in.
    """
    return bool(request.environ.get(GENERATION_KEY) == "legacy")


def caller_gone() -> Callable[[], bool]:
    """Whether this request's client has closed its connection (waitress tells, when it can).

    A long-polling claimer that went away must not be handed a job it will
    never run: the claim loop asks this before each claim and after one wins.
    Servers other than waitress (Flask's test client) never report a disconnect.
    """
    check = request.environ.get("waitress.client_disconnected")
    if not callable(check):
        return lambda: False
    return lambda: bool(check())


def find_service(session: Session, service_id: str) -> Service:
    """The service a path names: 404 when the id is malformed or unknown."""
    key = parse_id(service_id)
    row = session.get(ServiceRow, key)
    if row is None:
        raise ServiceWithUUIDNotFound(key)
    return Service(row)


def find_job(session: Session, job_id: str) -> JobRow:
    """The row of the job a path names: 404 when the id is malformed or unknown."""
    key = parse_id(job_id)
    row = session.get(JobRow, key)
    if row is None:
        raise JobWithUUIDNotFound(key)
    return row
