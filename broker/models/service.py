"""A service backed by its SQL row."""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from broker import actors
from broker.contract import Contract, compile_contract, schema_fingerprint, times
from broker.errors import (
    DeserializationError,
    DuplicateServiceNameError,
    ImmutableFieldError,
)
from broker.messaging import outbox, priorities
from broker.messaging.messages import JobMessage, requeues_lost_work
from broker.models.interfaces.job import JSON
from broker.models.interfaces.job import Job as JobInterface
from broker.models.interfaces.service import Service as ServiceInterface
from broker.models.job import Job
from broker.models.job_list import JobList
from broker.storage.tables import JobRow, ServiceRow, database_now

#: What happens to a job whose worker died while running it.
WORKER_LOSS_POLICIES = ("fail", "requeue")
DEFAULT_TIMEOUT = 30.0
#: Bounds that keep timeouts and attempt counts inside what datetime and SQL hold.
MAX_TIMEOUT = 1e9
MAX_ATTEMPTS = 1000
MAX_NAME_LENGTH = 200
#: The most a ``max_running`` may say; beyond it, say no limit (None).
MAX_RUNNING = 10_000
#: The most jobs one Celery message may carry (``jobs_per_message``).
MAX_PER_MESSAGE = 1000


def has_timed_out(last_checked_in: datetime, timeout: float, now: datetime) -> bool:
    """Whether a service last seen at ``last_checked_in`` has outlived its check-in timeout.

    The one definition: beat marks services by it, and the model, the status
    report and the metrics show it. ``now`` must be on the database's clock,
    the clock the mirror stamps check-ins with.
    """
    return now - last_checked_in > timedelta(seconds=timeout)


#: The job id of a message template, which no job has.
_NO_JOB = uuid.UUID(int=0)


def fill(
    template: JobMessage,
    job_id: uuid.UUID,
    parameters: dict[str, Any],
    *,
    attempt: int = 1,
    per_message: int = 1,
    priority: int = priorities.DEFAULT,
) -> JobMessage:
    """A service's message template (``Service.message_template``) made one job's message."""
    # Built directly, not by ``dataclasses.replace``: this runs once per job of a
    # bulk submit, and replace costs several times the constructor.
    return JobMessage(
        job_id=job_id,
        service_id=template.service_id,
        service_name=template.service_name,
        parameters=parameters,
        requeue=template.requeue,
        attempt=attempt,
        per_message=per_message,
        priority=priority,
    )


class Service(ServiceInterface):
    """A service whose state lives in a ``ServiceRow`` of the caller's session."""

    def __init__(
        self,
        database_service: ServiceRow,
        session_getter_for_model: Callable[[object], Session | None] = Session.object_session,
    ) -> None:
        self._row = database_service
        self._session_of = session_getter_for_model

    @property
    def _session(self) -> Session:
        session = self._session_of(self._row)
        if session is None:
            raise RuntimeError("this service's row is not attached to a session")
        return session

    @classmethod
    def new(
        cls,
        name: str,
        description: str,
        registration_schema: dict[str, Any],
        result_schema: dict[str, Any],
        database_session: Session,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        worker_loss_policy: str = "fail",
        max_attempts: int = 3,
        max_running: int | None = None,
        jobs_per_message: int | None = None,
        service_id: uuid.UUID | None = None,
        retries: bool = False,
        retry_on: list[str] | tuple[str, ...] = (),
        retry_backoff: float = 1.0,
    ) -> Service:
        """Create a service; its schemas are checked now, so a bad one changes nothing.

        ``service_id`` is for fixtures that must have a known id (a client's
        integration tests); a new service's id is otherwise random.

        ``worker_loss_policy`` says what becomes of a job whose worker dies
        mid-run: ``"fail"`` (the default, for physical actions that must not
        repeat) marks it ERROR; ``"requeue"`` runs it again, at most
        ``max_attempts`` times in all. ``max_running`` caps how many of its
        jobs are WORKING at once (an exclusive instrument: 1); None, no limit.
        ``jobs_per_message`` fixes how many of a ``submit_many``'s jobs share
        a Celery message; None (the default) lets ``broker.producer.packing``
        choose from the service's run times.

        ``retries=True`` lets a handler ask for its job to run again
        (``broker.worker.Retry``), and makes the exception types named in
        ``retry_on`` ask for it too, waiting ``retry_backoff`` seconds before
        the second attempt and twice as long before each next one, up to
        ``max_attempts`` runs in all. Off (the default), nothing retries.
        """
        name = _check_name(name, database_session)
        _check_description(description)
        compile_contract(registration_schema, source="job_registration_schema")
        compile_contract(result_schema, source="job_result_schema")
        _check_timeout(timeout)
        if worker_loss_policy not in WORKER_LOSS_POLICIES:
            raise DeserializationError(
                "worker_loss_policy",
                f"must be one of {', '.join(WORKER_LOSS_POLICIES)}, got {worker_loss_policy!r}",
            )
        check_count("max_attempts", max_attempts, MAX_ATTEMPTS)
        names = check_retries(retries, retry_on, retry_backoff)
        if max_running is not None:
            check_count("max_running", max_running, MAX_RUNNING)
        if jobs_per_message is not None:
            check_jobs_per_message(jobs_per_message)
        now = database_now(database_session)
        row = ServiceRow(
            id=service_id or uuid.uuid4(),
            name=name,
            description=description,
            job_registration_schema=registration_schema,
            job_result_schema=result_schema,
            timeout=float(timeout),
            is_service_available=False,
            last_checked_in=now,
            worker_loss_policy=worker_loss_policy,
            max_attempts=max_attempts,
            retries=retries,
            retry_on=names,
            retry_backoff=float(retry_backoff),
            max_running=max_running,
            jobs_per_message=jobs_per_message,
            created_at=now,
            schema_fingerprint=schema_fingerprint(registration_schema, result_schema),
        )
        database_session.add(row)
        outbox.record_service(database_session, row)
        return cls(row)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServiceInterface):
            return NotImplemented
        return self.id == other.id

    def __hash__(self) -> int:
        return hash(self._row.id)

    def __repr__(self) -> str:
        return f"<Service {self._row.name!r} {self._row.id}>"

    @property
    def id(self) -> uuid.UUID:
        return self._row.id

    @property
    def name(self) -> str:
        return self._row.name

    @name.setter
    def name(self, new_name: str) -> None:
        if checked_name(new_name) == self._row.name:
            return
        self._row.name = _check_name(new_name, self._session)
        outbox.record_service(self._session, self._row)

    @property
    def description(self) -> str:
        return self._row.description

    @description.setter
    def description(self, new_description: str) -> None:
        _check_description(new_description)
        self._row.description = new_description

    @property
    def job_registration_schema(self) -> dict[str, JSON]:
        return self._row.job_registration_schema

    @job_registration_schema.setter
    def job_registration_schema(self, _value: object) -> None:
        raise ImmutableFieldError("job_registration_schema")

    @property
    def job_result_schema(self) -> dict[str, JSON]:
        return self._row.job_result_schema

    @job_result_schema.setter
    def job_result_schema(self, _value: object) -> None:
        raise ImmutableFieldError("job_result_schema")

    @property
    def registration_contract(self) -> Contract:
        """The compiled registration schema (compiled once per process, then cached)."""
        return compile_contract(self._row.job_registration_schema, source="job_registration_schema")

    @property
    def timeout(self) -> float:
        return self._row.timeout

    @timeout.setter
    def timeout(self, new_timeout: float) -> None:
        _check_timeout(new_timeout)
        self._row.timeout = float(new_timeout)
        outbox.record_service(self._session, self._row)

    @property
    def worker_loss_policy(self) -> str:
        return self._row.worker_loss_policy

    @property
    def max_attempts(self) -> int:
        return self._row.max_attempts

    @property
    def max_running(self) -> int | None:
        """At most this many of the service's jobs WORKING at once; None: no limit."""
        return self._row.max_running

    @max_running.setter
    def max_running(self, most: int | None) -> None:
        if most is not None:
            check_count("max_running", most, MAX_RUNNING)
        self._row.max_running = most
        outbox.record_service(self._session, self._row)

    @property
    def jobs_per_message(self) -> int | None:
        """How many of a sweep's jobs share a message; None: chosen by ``producer.packing``."""
        return self._row.jobs_per_message

    @jobs_per_message.setter
    def jobs_per_message(self, count: int | None) -> None:
        if count is not None:
            check_jobs_per_message(count)
        self._row.jobs_per_message = count

    @property
    def held(self) -> bool:
        return self._row.held_at is not None

    def hold_record(self) -> dict[str, Any]:
        """Whether the service is held, since when, by whom and why (JSON-ready)."""
        held_at = self._row.held_at
        return {
            "held": held_at is not None,
            "held_at": held_at.isoformat() if held_at is not None else None,
            "held_by": self._row.held_by,
            "held_reason": self._row.held_reason,
        }

    def hold(self, by: str, reason: str | None = None) -> bool:
        """Start no more of the service's jobs until ``resume``; False if it was held already.

        Jobs are still accepted and queued meanwhile; one already running
        finishes. ``by`` names who held it (``broker.actors``), for the record.
        """
        if reason is not None:
            _check_description(reason, "reason")
        if self.held:
            return False
        self._row.held_at = database_now(self._session)
        self._row.held_by = by
        self._row.held_reason = reason
        outbox.record_service(self._session, self._row)
        return True

    def resume(self) -> bool:
        """End a hold; False if the service was not held. Its parked jobs go on in order."""
        if not self.held:
            return False
        self._row.held_at = self._row.held_by = self._row.held_reason = None
        outbox.record_service(self._session, self._row)
        return True

    @property
    def is_service_available(self) -> bool:
        return self._row.is_service_available

    @is_service_available.setter
    def is_service_available(self, available: bool) -> None:
        if not isinstance(available, bool):
            raise DeserializationError("is_service_available", "must be true or false")
        self._row.is_service_available = available

    @property
    def last_checked_in(self) -> Any:
        return self._row.last_checked_in

    @property
    def has_timed_out(self) -> bool:
        now = database_now(self._session)
        return has_timed_out(self._row.last_checked_in, self._row.timeout, now)

    def check_in(self) -> None:
        self._row.last_checked_in = database_now(self._session)
        self._row.timed_out_at = None

    @property
    def jobs(self) -> JobList:
        return JobList.of_service(self._session, self._row.id)

    def new_job(
        self,
        parameters: dict[str, JSON],
        *,
        job_id: uuid.UUID | None = None,
        submitted_by: str | None = None,
        not_before: datetime | None = None,
        priority: int = priorities.DEFAULT,
    ) -> Job:
        """Validate ``parameters`` and add a REGISTERED job; nothing is added if invalid.

        ``job_id``, like ``new``'s ``service_id``, is for fixtures with known ids;
        ``priority``: higher starts first (``broker.messaging.priorities``).
        ``submitted_by`` names who submits it (an HTTP caller); this process's
        person (``actors.person``) by default.

        The job's message is published to the service's queue when the
        session commits (see ``broker.messaging.outbox``), never before; a job
        ``not_before`` a time waits in the outbox until beat publishes it then.
        """
        # As registered, stored and sent: plain JSON, whole numbers as integers where the
        # schema says ``integer`` (``Contract.validate``).
        parameters = self.registration_contract.validate(parameters, source="parameters")
        if not_before is not None:
            not_before = times.aware(not_before)
        priorities.check(priority)
        if sa.inspect(self._row).pending:
            # The tables share no ORM relationship, so nothing else tells one
            # flush to insert a new service before the job that refers to it.
            self._session.flush()
        row = JobRow(
            id=job_id or uuid.uuid4(),
            service_id=self._row.id,
            status=JobInterface.JobStatus.REGISTERED.value,
            parameters=parameters,
            attempts=0,
            date_submitted=database_now(self._session),
            submitted_by=submitted_by or actors.person(),
            not_before=not_before,
            priority=priority,
        )
        self._session.add(row)
        if not_before is None:
            outbox.record_job(self._session, self.message_for(row))
        return Job(row)

    def message_template(self) -> JobMessage:
        """This service's part of every job message: the one place a job message is made.

        A job's message is this template with the job's id, parameters and
        attempt filled in (``message_for``); a producer keeps the template
        between submits (``broker.producer.submission.Destination``).
        """
        return JobMessage(
            job_id=_NO_JOB,
            service_id=self._row.id,
            service_name=self._row.name,
            parameters={},
            requeue=requeues_lost_work(self._row.worker_loss_policy),
        )

    def message_for(self, row: JobRow, attempt: int = 1) -> JobMessage:
        """The queue message of one of this service's jobs."""
        return fill(
            self.message_template(), row.id, row.parameters, attempt=attempt, priority=row.priority
        )

    def as_dict(self) -> dict[str, Any]:
        """The service as JSON-ready data."""
        return {
            "id": str(self.id),
            "name": self.name,
            "description": self.description,
            "job_registration_schema": self.job_registration_schema,
            "job_result_schema": self.job_result_schema,
            "timeout": self.timeout,
            "is_service_available": self.is_service_available,
            "has_timed_out": self.has_timed_out,
            "last_checked_in": self._row.last_checked_in.isoformat(),
            "worker_loss_policy": self.worker_loss_policy,
            "max_attempts": self.max_attempts,
            "retries": self._row.retries,
            "retry_on": list(self._row.retry_on or []),
            "retry_backoff": self._row.retry_backoff,
            "max_running": self.max_running,
            "jobs_per_message": self.jobs_per_message,
            **self.hold_record(),
        }


#: The longest first wait a service's retries may declare (an hour).
MAX_RETRY_BACKOFF = 3600.0


def check_retries(retries: object, retry_on: object, retry_backoff: object) -> list[str]:
    """Refuse retry options that say nothing clear; return ``retry_on`` as a list of names."""
    if not isinstance(retries, bool):
        raise DeserializationError("retries", "must be true or false")
    if isinstance(retry_on, str) or not isinstance(retry_on, list | tuple):
        raise DeserializationError("retry_on", "must be a list of exception type names")
    names = list(retry_on)
    for name in names:
        if (
            not isinstance(name, str)
            or not name
            or not all(part.isidentifier() for part in name.split("."))
        ):
            raise DeserializationError(
                "retry_on", f"must be exception type names like 'TimeoutError', got {name!r}"
            )
    if names and not retries:
        raise DeserializationError("retry_on", "needs retries=True: the service must allow retries")
    if (
        isinstance(retry_backoff, bool)
        or not isinstance(retry_backoff, int | float)
        or not 0 <= retry_backoff <= MAX_RETRY_BACKOFF
    ):
        raise DeserializationError(
            "retry_backoff",
            f"must be a number of seconds from 0 to {MAX_RETRY_BACKOFF:g}, got {retry_backoff!r}",
        )
    return names


def _check_description(description: object, field: str = "description") -> None:
    if not isinstance(description, str):
        raise DeserializationError(field, "must be a string")
    if "\x00" in description:
        raise DeserializationError(field, "may not contain NUL characters (\\u0000)")


def checked_name(name: object) -> str:
    """``name`` as a service is named: trimmed, then every character printable, else an error.

    A name is read off screens and logs, so what is stored must look like what
    it is: a newline or an ANSI escape forges lines in a listing, a
    right-to-left override or a zero-width character makes two names look
    alike, and ``"Echo "`` prints like ``"Echo"``. Surrounding whitespace is
    trimmed, since it never shows and nobody means it; anything else that
    does not print is refused, not removed, so that a name is never silently
    not the one given. Printable is Python's ``str.isprintable``: no control
    (Cc), format (Cf: bidirectional controls, zero-width characters),
    surrogate, private-use or unassigned character, no line or paragraph
    separator, and no space but U+0020 (a no-break space prints like one and
    compares otherwise).
    """
    if not isinstance(name, str) or not name.strip():
        raise DeserializationError("name", "must be a non-empty string")
    name = name.strip()
    if not name.isprintable():
        char = next(c for c in name if not c.isprintable())
        what = unicodedata.name(char, unicodedata.category(char))
        raise DeserializationError(
            "name",
            f"may not contain U+{ord(char):04X} ({what}): a name holds only printable "
            "characters, spaces (U+0020) between them",
        )
    if len(name) > MAX_NAME_LENGTH:
        raise DeserializationError("name", f"must be at most {MAX_NAME_LENGTH} characters")
    return name


def _check_name(name: object, session: Session) -> str:
    """The name, as ``checked_name`` makes it, if no other service has it."""
    name = checked_name(name)
    taken = session.scalar(sa.select(sa.literal(1)).where(ServiceRow.name == name).limit(1))
    if taken is not None:
        raise DuplicateServiceNameError(name)
    return name


def check_count(field: str, value: object, most: int) -> None:
    """Refuse ``value`` unless it is an integer from 1 to ``most`` (``True`` is not 1)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise DeserializationError(field, f"must be an integer from 1 to {most}, got {value!r}")


def check_jobs_per_message(value: object) -> None:
    """Refuse a batch size that is not an integer from 1 to ``MAX_PER_MESSAGE``."""
    check_count("jobs_per_message", value, MAX_PER_MESSAGE)


def _check_timeout(timeout: object) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise DeserializationError("timeout", f"must be a number of seconds > 0, got {timeout!r}")
    if not timeout <= MAX_TIMEOUT:  # also refuses NaN and infinity
        raise DeserializationError("timeout", f"must be at most {MAX_TIMEOUT:g} s, got {timeout!r}")
