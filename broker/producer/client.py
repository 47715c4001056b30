"""The producer's API: create services, submit jobs, wait for results, cancel.

    from broker.producer import Producer

    producer = Producer()                      # TOPCHEF_* settings
    job = producer.submit("Echo", {"message": "hello"})
    print(producer.wait(job, timeout=30))      # the job's results

Every call opens its own short transaction; jobs are published when it commits
(the outbox), so a job is either in SQL and on its way, or nowhere.

Ids are taken as ``uuid.UUID`` or as their text (what ``topchef`` prints).
Reading jobs needs only the database: a ``Producer()`` in the directory of a
stopped ``topchef up`` reads its jobs, and only a call that needs the message
broker (submitting, cancelling, changing a service) says the stack is not running.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from celery import Celery
from sqlalchemy.orm import Session

from broker import actors
from broker.app import make_app
from broker.artifacts import DirectoryStore, store_for
from broker.artifacts.values import offload, resolve
from broker.contract import times
from broker.contract.ids import Id, as_uuid
from broker.errors import (
    ConfigurationError,
    DuplicateServiceNameError,
    InvalidTransitionError,
    JobNotAbortableError,
    JobWithUUIDNotFound,
    ServiceSchemaMismatchError,
)
from broker.messaging import outbox, priorities
from broker.messaging.claims import ClaimResult, Claims
from broker.messaging.connections import redis_client
from broker.messaging.publisher import CeleryPublisher
from broker.models import lifecycle
from broker.models.moves import Move
from broker.models.service import Service, check_jobs_per_message, checked_name
from broker.models.service_list import ServiceList
from broker.producer import packing, submission
from broker.producer.reader import Outcome, Reader, Watch
from broker.settings import Settings
from broker.storage.tables import JobRow, ServiceRow, database_now, engine_for, open_session

Status = lifecycle.Status

#: Polling of SQL while waiting starts fast and backs off to this interval.
MAX_POLL_INTERVAL = 0.25


class Producer:
    """A producer bound to one database and one message broker."""

    def __init__(self, settings: Settings | None = None, app: Celery | None = None) -> None:
        #: Where an unconfigured producer looks for a ``topchef up`` that starts later.
        self._stack_directory = Path.cwd() if settings is None else None
        settings = settings or Settings.from_env()
        # The database is needed at once; the broker only by what changes Redis. With
        # neither, both are named, as every command names what it lacks.
        self.settings = settings.require(database=True, broker=not settings.database_url)
        self.reader = Reader(self.settings.database_url)
        self._app = app
        self._destinations: dict[str, submission.Destination] = {}
        if self.settings.broker_url:  # known: made now, so threads sharing it never make two
            _ = (self.publisher, self._claims)

    # -- the message broker, met when first needed ----------------------------------

    @functools.cached_property
    def app(self) -> Celery:
        """The Celery app jobs are published with (on the broker: ``_with_broker``)."""
        return self._app or make_app(self._with_broker())

    @functools.cached_property
    def _client(self) -> redis.Redis:
        return redis_client(self._with_broker().broker_url)

    @functools.cached_property
    def publisher(self) -> CeleryPublisher:
        """Publishes this producer's jobs, signed, and its services."""
        return CeleryPublisher(self.app, self._client, self._with_broker().registration_signing_key)

    def require_signing_key(self) -> None:
        """Raise, naming the setting, unless this producer can sign the jobs it is to commit."""
        _ = self.publisher.registrar

    @functools.cached_property
    def _claims(self) -> Claims:
        return Claims.configured(self._client, self.settings)

    def _with_broker(self) -> Settings:
        """The settings, naming a message broker; else why this call cannot run.

        An unconfigured producer looks again for the ``topchef up`` of its
        directory, which may have started since.
        """
        if not self.settings.broker_url and self._stack_directory is not None:
            self.settings = self.settings.with_stack_in(self._stack_directory)
        try:
            return self.settings.require(broker=True)
        except ConfigurationError as missing:
            raise ConfigurationError(
                f"this call needs the message broker: {missing.detail} "
                "(reading jobs does not: job, wait, history and provenance work without it)"
            ) from None

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session that publishes its jobs when it commits; committed on success."""
        with open_session(self.settings.database_url) as session:
            outbox.attach(session, self.publisher)
            with session.begin():
                yield session

    # -- services -----------------------------------------------------------

    def create_service(
        self,
        name: str,
        description: str,
        registration_schema: dict[str, Any],
        result_schema: dict[str, Any],
        **options: Any,
    ) -> uuid.UUID:
        """Create a service (options: ``timeout``, ``worker_loss_policy``, ``max_attempts``,
        ``max_running``)."""
        with self.session() as session:
            service = Service.new(
                name, description, registration_schema, result_schema, session, **options
            )
            return service.id

    def ensure_service(
        self,
        name: str,
        description: str,
        registration_schema: dict[str, Any],
        result_schema: dict[str, Any],
        **options: Any,
    ) -> uuid.UUID:
        """The service ``name``, created as ``create_service`` would if it does not exist.

        A program can then run again, or beside another one, without failing
        on a name it created itself. Schemas never change after creation, so
        an existing service with other schemas is an error
        (``ServiceSchemaMismatchError``), never silently served; its
        description and options are left as they are.
        """
        name = checked_name(name)  # looked up as it would be stored
        for _ in range(2):
            existing = self._schemas_of(name)
            if existing is not None:
                service_id, registration, result = existing
                differ = [
                    field
                    for field, theirs, ours in (
                        ("job_registration_schema", registration, registration_schema),
                        ("job_result_schema", result, result_schema),
                    )
                    if theirs != ours
                ]
                if differ:
                    raise ServiceSchemaMismatchError(name, differ)
                return service_id
            try:
                return self.create_service(
                    name, description, registration_schema, result_schema, **options
                )
            except (DuplicateServiceNameError, sa.exc.IntegrityError):
                continue  # created meanwhile by another producer: compare with that one
        raise DuplicateServiceNameError(name)

    def hold_service(self, name: str, reason: str | None = None, *, by: str | None = None) -> bool:
        """Start none of the service's jobs until ``resume_service``; False if held already.

        Jobs are still accepted and queued while it is held; one already
        running finishes. The hold is in SQL, with who held it (``by``; this
        process, ``user@host:pid``, by default) and ``reason``; beat keeps
        Redis in step with it.
        """
        with self.session() as session:
            return ServiceList(session).by_name(name).hold(by or actors.person(), reason)

    def resume_service(self, name: str) -> bool:
        """End the service's hold: its waiting jobs start, in their order. False if not held."""
        with self.session() as session:
            service = ServiceList(session).by_name(name)
            resumed, service_id = service.resume(), service.id
        if resumed:
            # The hold is gone from Redis since the commit; the parked jobs go back now
            # (beat would within a tick).
            self.release_parked(service_id)
        return resumed

    def set_max_running(self, name: str, max_running: int | None) -> None:
        """Let at most ``max_running`` of the service's jobs be WORKING at once (None: no limit)."""
        with self.session() as session:
            service = ServiceList(session).by_name(name)
            service.max_running = max_running
            service_id = service.id
        self.release_parked(service_id)  # a raised limit frees slots now

    def set_jobs_per_message(self, name: str, jobs_per_message: int | None) -> None:
        """Fix how many of a sweep's jobs share a message (None: chosen from run times)."""
        with self.session() as session:
            ServiceList(session).by_name(name).jobs_per_message = jobs_per_message

    def release_parked(self, service_id: Id) -> int:
        """Let the service's parked jobs go as far as its slots allow (beat does each tick)."""
        return self._claims.release_parked(as_uuid(service_id))

    def _schemas_of(self, name: str) -> tuple[uuid.UUID, Any, Any] | None:
        with open_session(self.settings.database_url) as session:
            row = session.execute(
                sa.select(
                    ServiceRow.id, ServiceRow.job_registration_schema, ServiceRow.job_result_schema
                ).where(ServiceRow.name == name)
            ).first()
            return None if row is None else (row[0], row[1], row[2])

    # -- jobs ---------------------------------------------------------------

    def submit(
        self,
        service_name: str,
        parameters: dict[str, Any],
        *,
        not_before: datetime | timedelta | None = None,
        priority: int = priorities.DEFAULT,
    ) -> uuid.UUID:
        """Validate and submit one job; returns its id.

        ``priority`` (0 to 9, higher first; default 5): a service's workers start
        its highest-priority waiting job first (``broker.messaging.priorities``).

        After the first submit to a service, PostgreSQL takes the job in one
        autocommitted statement (``submission.add_job_at_once``).

        ``not_before`` (an aware time, or a ``timedelta`` from now on the
        database's clock) holds the job back until then: it waits REGISTERED,
        cancellable, and beat publishes it when due, so it starts within about
        a second of that time (``Settings.due_interval``).
        """
        priorities.check(priority)
        self.require_signing_key()
        parameters = offload(parameters, self.artifacts)
        destination = self._destinations.get(service_name)
        if destination is not None and not_before is None:
            engine = engine_for(self.settings.database_url)
            job_id, registered = submission.add_job_at_once(
                engine, destination, parameters, actors.person(), priority
            )
            if job_id is not None:
                message = destination.message(job_id, registered, priority=priority)
                outbox.publish_committed(self.publisher, engine, [message])
                return job_id
            del self._destinations[service_name]  # renamed or deleted: look it up again
        return self._add(service_name, [parameters], None, not_before, priority, sweep=False)[0]

    def submit_many(
        self,
        service_name: str,
        parameter_sets: Iterable[dict[str, Any]],
        *,
        jobs_per_message: int | None = None,
        not_before: datetime | timedelta | None = None,
        priority: int = priorities.DEFAULT,
    ) -> list[uuid.UUID]:
        """Validate every parameter set, then add all jobs in one transaction.

        One invalid set refuses the whole batch, and nothing is queued; the
        error names the set by its index (``parameters[137].points``).

        Jobs of a sweep share Celery messages, run one after another by one
        worker, so that Celery's cost per message (about a millisecond of
        worker CPU) does not dominate a sweep of short jobs. How many share
        one is chosen from the service's recent run times, and shrinks
        towards the sweep's end so that every free worker has its share
        (``broker.producer.packing``): long jobs go one per message.
        ``jobs_per_message`` fixes the number instead (1: each job on its
        own), as does the service's own ``jobs_per_message``.

        ``not_before`` holds every job back until then (see ``submit``);
        ``priority`` is every job's (see ``submit``).
        """
        if jobs_per_message is not None:
            check_jobs_per_message(jobs_per_message)
        kept: dict[int, Any] = {}  # an array every point passes is stored once
        points = [offload(point, self.artifacts, kept) for point in parameter_sets]
        return self._add(service_name, points, jobs_per_message, not_before, priority, sweep=True)

    def _add(
        self,
        service_name: str,
        points: list[dict[str, Any]],
        jobs_per_message: int | None,
        not_before: datetime | timedelta | None,
        priority: int,
        *,
        sweep: bool,
    ) -> list[uuid.UUID]:
        """``submit_many``'s work; ``sweep`` says whether errors name a point by its index."""
        delay = times.delay(not_before) if isinstance(not_before, timedelta) else None
        when = times.aware(not_before) if not_before is not None and delay is None else None
        priorities.check(priority)
        self.require_signing_key()
        with self.session() as session:
            service, now = _service_and_clock(session, service_name)
            if session.get_bind().dialect.name == "postgresql":
                self._destinations[service_name] = submission.Destination.of(service)
            per_message = jobs_per_message or service.jobs_per_message
            return submission.add_jobs(
                session,
                service,
                now,
                points,
                per_message or packing.choose(session, service.id, len(points)),
                not_before=now + delay if delay is not None else when,
                priority=priority,
                indexed=sweep,
            )

    def resubmit(self, job_id: Id, *, by: str | None = None) -> uuid.UUID:
        """Submit a new job with another job's parameters; returns the new job's id.

        The parameters are validated again, against the service's contract as
        it is now: what runs is always what the contract accepts today, not
        what it accepted when the original was submitted. The new job names
        its original (``resubmitted_from``) and the original lists it among its
        ``resubmissions``; the original itself is left exactly as it was.
        ``by`` is who resubmits (the new job's ``submitted_by``): this
        process's person unless told (the gateway names its caller).
        """
        job_id = as_uuid(job_id)
        self.require_signing_key()
        with self.session() as session:
            original = session.get(JobRow, job_id)
            if original is None:
                raise JobWithUUIDNotFound(job_id)
            service_row = session.get(ServiceRow, original.service_id)
            assert service_row is not None, "jobs.service_id is a foreign key"
            service = Service(service_row)
            [new_id] = submission.add_jobs(
                session,
                service,
                database_now(session),
                [original.parameters],
                submitted_by=by,
                priority=original.priority,  # the same place in the queue's order
            )
            session.execute(
                sa.update(JobRow)
                .where(JobRow.id == new_id)
                .values(resubmitted_from=job_id)
                .execution_options(synchronize_session=False)
            )
            return new_id

    def job(self, job_id: Id) -> dict[str, Any]:
        """A snapshot of the job as SQL has it now."""
        return self.reader.job(job_id)

    def history(self, job_id: Id) -> list[dict[str, Any]]:
        """Every move of the job, oldest first: at, from, to, by, attempt, detail.

        The first is its submission (``from`` None, ``by`` who submitted it).
        """
        return self.reader.history(job_id)

    def provenance(self, job_id: Id) -> dict[str, Any]:
        """Who submitted the job, its schemas' fingerprint, and what ran it (``run``)."""
        return self.reader.provenance(job_id)

    def cancel(
        self, job_id: Id, *, detail: str = "cancelled before it ran", by: str | None = None
    ) -> bool:
        """Cancel a REGISTERED job: it becomes CANCELLED and never runs.

        ``by`` is who cancels, as the job's history records it: this process's
        person (``user@host:pid``) unless told (the HTTP gateway names its caller).

        The claim is taken first, in Redis: from then on no delivery of the
        job's message can start it, even one already queued. A job a worker
        has already claimed cannot be cancelled. Returns False if the job was
        cancelled already (cancelling is idempotent, but a user wants to know).
        """
        job_id = as_uuid(job_id)
        claims = self._claims  # a stopped stack is said before anything is read
        with open_session(self.settings.database_url) as session, session.begin():
            row = session.get(JobRow, job_id)
            if row is None:
                raise JobWithUUIDNotFound(job_id)
            status = Status(row.status)
            if status is Status.CANCELLED:
                return False
            lifecycle.check_move(job_id, status, Status.CANCELLED)
            claimed = claims.cancel(job_id)
            if claimed is not ClaimResult.CANCELLED:
                raise InvalidTransitionError(job_id, Status.WORKING.value, Status.CANCELLED.value)
            who = by or actors.person()
            move = Move(job_id, database_now(session), {"detail": detail}, by=who)
            if not lifecycle.advance(session, Status.CANCELLED, [move]):
                raise InvalidTransitionError(job_id, row.status, Status.CANCELLED.value)
            return True

    def abort(self, job_id: Id, reason: str = "", *, by: str | None = None) -> str:
        """Stop a job: cancel it if it has not started, or ask its running handler to stop.

        Returns ``"cancelled"`` (it had not started: the same as ``cancel``),
        ``"requested"`` (its handler learns of it at its next ``progress()`` or
        ``aborted()``, and the job ends CANCELLED saying when and by whom) or
        ``"already"`` (an abort was requested before; the first one stands).
        A finished job raises ``JobNotAbortableError``. ``by`` names who asks
        (the gateway's caller); a Python or CLI caller is ``user@host:pid``.
        """
        job_id, who = as_uuid(job_id), by or actors.person()
        claims = self._claims  # a stopped stack is said before anything is read
        status = Status(self.reader.job(job_id)["status"])
        if status is Status.REGISTERED:
            cause = f": {reason}" if reason else ""
            try:
                self.cancel(job_id, detail=f"aborted before it ran by {who}{cause}", by=who)
                return "cancelled"
            except InvalidTransitionError as error:
                if error.current != Status.WORKING.value:
                    raise JobNotAbortableError(job_id, error.current, _FINISHED) from None
                status = Status.WORKING  # a worker took it meanwhile: abort its run
        if status in lifecycle.TERMINAL:
            raise JobNotAbortableError(job_id, status.value, _FINISHED)
        outcome, _at = claims.abort(job_id, reason, who)
        if outcome in ("requested", "already"):
            return outcome
        if outcome == ClaimResult.RETRYING.value:
            raise JobNotAbortableError(
                job_id, status.value, "it is between two attempts; abort it again in a moment"
            )
        raise JobNotAbortableError(job_id, status.value, f"{_FINISHED} (its claim is {outcome})")

    def wait(
        self, job_id: Id, timeout: float = 60.0, *, watch: Watch | None = None
    ) -> dict[str, Any]:
        """Wait for a job to finish and return its results.

        Raises ``JobFailedError`` (ERROR), ``JobCancelledError`` (CANCELLED) or
        ``WaitTimeoutError`` (still running after ``timeout`` seconds).
        ``watch`` is called with a ``Standing`` (the job's status, progress and
        progress message) each time the wait looks: to show how far it got.
        """
        return self.wait_all([job_id], timeout, watch=watch)[0]

    def wait_all(
        self, job_ids: Sequence[Id], timeout: float = 60.0, *, watch: Watch | None = None
    ) -> list[dict[str, Any]]:
        """Wait for every job; return their results in order (see ``wait``).

        An artifact among them (``broker.artifacts``) comes back as what it
        holds: an array as a NumPy array mapped from the store, a file as its
        path; its bytes checked against its digest first. With no store
        configured, as its reference.
        """
        every = self.reader.wait_all(job_ids, timeout, watch=watch)
        if self.artifacts is None:  # no store here: the references, as SQL has them
            return every
        return [resolve(results, self.artifacts) for results in every]

    @functools.cached_property
    def artifacts(self) -> DirectoryStore | None:
        """The store the workers keep large results in, if one is configured."""
        url = self.settings.artifacts_url
        if not url and self._stack_directory is not None:
            url = self.settings.with_stack_in(self._stack_directory).artifacts_url
        return store_for(url) if url else None

    def outcomes(
        self, job_ids: Sequence[Id], timeout: float = 60.0, *, watch: Watch | None = None
    ) -> list[Outcome]:
        """Wait up to ``timeout`` s; every job's outcome, failures and all, in order.

        ``watch`` is called with the sweep's ``Standing`` (jobs finished, failed,
        cancelled, of how many) each time the wait looks.
        """
        return self.reader.outcomes(job_ids, timeout, watch=watch)

    def find_job(self, reference: str) -> uuid.UUID:
        """The job whose id is, or uniquely starts with, ``reference`` (e.g. ``8a94d8b8``)."""
        return self.reader.find(reference)


_FINISHED = "it has finished, and there is nothing left to abort"


def _service_and_clock(session: Session, name: str) -> tuple[Service, datetime]:
    """``ServiceList.by_name`` and ``database_now`` in one round trip where the database allows.

    A submit's latency is its round trips to the database; this saves one of them.
    """
    if session.get_bind().dialect.name != "postgresql":
        return ServiceList(session).by_name(name), database_now(session)
    found = session.execute(
        sa.select(ServiceRow, sa.func.clock_timestamp()).where(ServiceRow.name == name)
    ).first()
    if found is None:  # the one owner of the miss: it names the services close to ``name``
        return ServiceList(session).by_name(name), database_now(session)
    row, now = found
    return Service(row), now.astimezone(UTC)
