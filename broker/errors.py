"""Every error a TopChef user can see, under one root.

Each error carries the data that explains it (the failing path, the offending
id) as attributes, not only as text, and maps to an HTTP status code so that the
gateway and the CLI can report it without a table of their own.
"""

from __future__ import annotations

import abc
import difflib
import uuid
from collections.abc import Iterable, Sequence

import sqlalchemy.exc as sa_exc

__all__ = [
    "APIError",
    "BrokerUnavailableError",
    "ConfigurationError",
    "ConflictError",
    "DeserializationError",
    "DuplicateServiceNameError",
    "ImmutableFieldError",
    "InvalidSchemaError",
    "InvalidTransitionError",
    "JobCancelledError",
    "JobFailedError",
    "JobNotAbortableError",
    "JobReferenceError",
    "JobWithUUIDNotFound",
    "MethodNotAllowedError",
    "NotUUIDError",
    "SQLAlchemyError",
    "SerializationError",
    "ServiceNotFoundError",
    "ServiceWithNameNotFound",
    "ServiceWithUUIDNotFound",
    "TopChefError",
    "WaitTimeoutError",
    "aggregate_status_code",
]


class APIError(Exception, abc.ABC):
    """A reportable error: what went wrong, in words and as an HTTP status code."""

    def __new__(cls, *args: object, **kwargs: object) -> APIError:
        # ``Exception.__new__`` skips the ABC check that ``object.__new__`` makes,
        # so without this an incomplete error class would instantiate.
        if cls.__abstractmethods__:
            missing = ", ".join(sorted(cls.__abstractmethods__))
            raise TypeError(f"Can't instantiate abstract class {cls.__name__} without {missing}")
        return super().__new__(cls, *args, **kwargs)

    @property
    @abc.abstractmethod
    def status_code(self) -> int:
        """The HTTP status code that best describes this error (404 for a missing service)."""

    @property
    @abc.abstractmethod
    def title(self) -> str:
        """A title common to every error of this kind."""

    @property
    @abc.abstractmethod
    def detail(self) -> str:
        """What happened to this request in particular."""


class TopChefError(APIError):
    """The root of every TopChef error."""

    status_code: int = 500
    title: str = "TopChef error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self._detail = detail

    @property
    def detail(self) -> str:
        return self._detail

    def __str__(self) -> str:
        return f"{self.title}: {self.detail}"

    def as_dict(self) -> dict[str, object]:
        """The error as the gateway reports it."""
        return {"status_code": self.status_code, "title": self.title, "detail": self.detail}


class DeserializationError(TopChefError):
    """Input that does not match what was expected: bad JSON, a schema violation."""

    status_code = 400
    title = "Deserialization error"

    def __init__(
        self, source: str, validator_error_message: str, path: Sequence[object] = ()
    ) -> None:
        self.source = source
        self.path = tuple(path)
        where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in self.path)
        super().__init__(f"{source}{where}: {validator_error_message}")
        self.validator_error_message = validator_error_message


class InvalidSchemaError(DeserializationError):
    """A service's schema is not a usable JSON Schema (or is unsafe to evaluate)."""

    title = "Invalid JSON Schema"


class ImmutableFieldError(DeserializationError):
    """An attempt to change what cannot change (a service's schemas)."""

    title = "Immutable field"

    def __init__(self, field: str) -> None:
        super().__init__(field, "cannot be changed after the service is created")


class MethodNotAllowedError(TopChefError):
    """An HTTP method that this endpoint does not support."""

    status_code = 405
    title = "Method not allowed"

    def __init__(self, offending_method: str, allowed_methods: Iterable[str]) -> None:
        self.offending_method = offending_method
        self.allowed_methods = tuple(allowed_methods)
        super().__init__(
            f"{offending_method} is not allowed here; allowed: {', '.join(self.allowed_methods)}"
        )


class NotUUIDError(TopChefError):
    """A malformed id names nothing, so it is reported as not found (as in TopChef)."""

    status_code = 404
    title = "Not a UUID"

    def __init__(self, value: object) -> None:
        self.value = value
        shown = repr(value)
        if len(shown) > _SHOWN:  # a whole request body pasted as an id need not come back
            shown = f"{shown[: _SHOWN - 3]}..."
        super().__init__(f"{shown} is not a valid UUID")


#: The longest offending value an error quotes whole.
_SHOWN = 80


class SerializationError(TopChefError):
    """The server could not turn one of its own objects into JSON."""

    status_code = 500
    title = "Serialization error"


class ServiceNotFoundError(TopChefError):
    """No service matches the request."""

    status_code = 404
    title = "Service not found"

    def __init__(self, detail: str = "The requested service does not exist") -> None:
        super().__init__(detail)


class ServiceWithUUIDNotFound(ServiceNotFoundError):
    """No service has this id."""

    def __init__(self, offending_uuid: uuid.UUID) -> None:
        self.offending_uuid = offending_uuid
        super().__init__(f"No service has the id {offending_uuid}")


class ServiceWithNameNotFound(ServiceNotFoundError):
    """No service has this name; ``suggestions`` are the ``known`` names close to it.

    A name is typed by hand (``topchef jobs submit Rabi …``), so a near miss
    (a case, a letter, a missing word) is the common mistake: the error says
    which service was probably meant rather than leaving the user to list them.
    """

    def __init__(self, name: str, known: Iterable[str] = ()) -> None:
        self.name = name
        self.suggestions = close_names(name, known)
        hint = ""
        if self.suggestions:
            hint = f"; did you mean {' or '.join(repr(s) for s in self.suggestions)}?"
        super().__init__(f"No service is named {name!r}{hint}")


def close_names(name: str, known: Iterable[str], most: int = 3) -> tuple[str, ...]:
    """The names in ``known`` nearest ``name`` (``difflib``'s ratio, case ignored), best first."""
    by_folded: dict[str, str] = {}
    for candidate in known:
        by_folded.setdefault(candidate.casefold(), candidate)
    folded = difflib.get_close_matches(name.casefold(), by_folded, n=most, cutoff=0.6)
    return tuple(by_folded[match] for match in folded)


class JobWithUUIDNotFound(TopChefError):
    """No job has this id."""

    status_code = 404
    title = "Job not found"

    def __init__(self, offending_uuid: uuid.UUID) -> None:
        self.offending_uuid = offending_uuid
        super().__init__(f"No job has the id {offending_uuid}")


class JobReferenceError(TopChefError):
    """A job named by the start of its id (as ``topchef demo`` prints it) that names no one job.

    ``matches`` is how many jobs' ids start so (0 or several), or None when
    ``reference`` is not the start of any id at all (too short, not hex).
    """

    status_code = 404
    title = "Job not found"

    def __init__(self, reference: str, matches: int | None, shortest: int) -> None:
        self.reference = reference
        self.matches = matches
        if matches is None:
            detail = (
                f"{reference!r} is not a job id: give the whole id, "
                f"or at least its first {shortest} hex digits"
            )
        elif matches == 0:
            detail = f"No job has an id starting with {reference}"
        else:
            detail = f"{matches} jobs have an id starting with {reference}: give more of the id"
        super().__init__(detail)


class SQLAlchemyError(TopChefError):
    """The database failed; wraps SQLAlchemy's own exception."""

    status_code = 500
    title = "Database error"

    def __init__(self, underlying_exception: sa_exc.SQLAlchemyError) -> None:
        self.underlying_exception = underlying_exception
        super().__init__(f"{type(underlying_exception).__name__}: {underlying_exception}")


class ConflictError(TopChefError):
    """The request contradicts the current state (a taken name, a finished job)."""

    status_code = 409
    title = "Conflict"


class DuplicateServiceNameError(ConflictError):
    """Service names are unique, so that workers and producers can find them by name."""

    title = "Duplicate service name"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"A service named {name!r} already exists")


class ServiceSchemaMismatchError(ConflictError):
    """A service of that name exists with other schemas; schemas never change after creation.

    Raised by ``Producer.ensure_service``, so that a program written for one
    contract never submits to a service that has another.
    """

    title = "Service exists with other schemas"

    def __init__(self, name: str, fields: Sequence[str]) -> None:
        self.name = name
        self.fields = tuple(fields)
        super().__init__(
            f"A service named {name!r} already exists with another {' and '.join(self.fields)}"
        )


class InvalidTransitionError(ConflictError):
    """A job's status only moves forward; this move would not."""

    title = "Invalid status transition"

    def __init__(self, job_id: uuid.UUID, current: str, requested: str) -> None:
        self.job_id = job_id
        self.current = current
        self.requested = requested
        super().__init__(f"Job {job_id} is {current}; it cannot become {requested}")


class JobNotAbortableError(ConflictError):
    """An abort asked of a job that has finished, or is between two attempts."""

    title = "Job cannot be aborted"

    def __init__(self, job_id: uuid.UUID, status: str, why: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(f"Job {job_id} is {status}: {why}")


class JobFailedError(TopChefError):
    """A waited-for job ended in ERROR."""

    status_code = 500
    title = "Job failed"

    def __init__(self, job_id: uuid.UUID, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"Job {job_id} failed: {reason}")


class JobCancelledError(ConflictError):
    """A waited-for job was cancelled, so it has no results."""

    title = "Job cancelled"

    def __init__(self, job_id: uuid.UUID) -> None:
        self.job_id = job_id
        super().__init__(f"Job {job_id} was cancelled")


class WaitTimeoutError(TopChefError):
    """A job did not finish within the time its waiter allowed."""

    status_code = 504
    title = "Timed out waiting for a job"

    def __init__(self, job_id: uuid.UUID, status: str, timeout: float) -> None:
        self.job_id = job_id
        self.status = status
        self.timeout = timeout
        super().__init__(f"Job {job_id} is still {status} after {timeout:g} s")


class ConfigurationError(TopChefError):
    """A setting is missing or malformed."""

    status_code = 500
    title = "Configuration error"


class BrokerUnavailableError(TopChefError):
    """The message broker (Redis) cannot be reached."""

    status_code = 503
    title = "Message broker unavailable"


def aggregate_status_code(errors: Iterable[APIError]) -> int:
    """Reduce several errors to the one status code a response can carry.

    One distinct code is kept as it is. Any 5xx makes the whole 500 (the server
    failed, whatever the client did); several different 4xx become the general
    400 — so 400 with 404 is 400, which TopChef got wrong.
    """
    codes = {error.status_code for error in errors}
    if not codes:
        raise ValueError("aggregate_status_code needs at least one error")
    if len(codes) == 1:
        return codes.pop()
    if any(code >= 500 for code in codes):
        return 500
    return 400
