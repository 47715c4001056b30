"""Errors only the HTTP gateway can raise, under the one root ``TopChefError``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from urllib.parse import quote

from broker.errors import (
    ConflictError,
    DeserializationError,
    TopChefError,
    aggregate_status_code,
)


class RequestNotJSONError(DeserializationError):
    """A body that is not JSON (TopChef's "Request Not JSON")."""

    title = "Request not JSON"

    def __init__(self, reason: str) -> None:
        super().__init__("body", f"is not valid JSON ({reason})")


class UnauthorizedError(TopChefError):
    """No bearer token, where the gateway requires one."""

    status_code = 401
    title = "Unauthorized"

    def __init__(self) -> None:
        super().__init__("This API needs 'Authorization: Bearer <token>'")


class ForbiddenError(TopChefError):
    """A bearer token that is not the configured one."""

    status_code = 403
    title = "Forbidden"

    def __init__(self) -> None:
        super().__init__("The bearer token is not valid for this API")


class ArtifactNotFoundError(TopChefError):
    """An artifact the gateway cannot serve: a malformed digest, or one it does not keep."""

    status_code = 404
    title = "Artifact not found"

    def __init__(self, digest: str, reason: str) -> None:
        super().__init__(f"Artifact {digest[:80]!r} {reason}")


class RouteNotFoundError(TopChefError):
    """A URL that names no resource of this API."""

    status_code = 404
    title = "Not found"

    def __init__(self, path: str) -> None:
        self.path = path
        # Quoted and cut short: a path is the sender's to choose, and comes back inert.
        shown = quote(path, safe="/")
        shown = shown if len(shown) <= 200 else shown[:200] + "…"
        super().__init__(f"{shown} is not a route of this API")


class PayloadTooLargeError(TopChefError):
    """A request body over the configured limit (``TOPCHEF_API_MAX_BODY_BYTES``)."""

    status_code = 413
    title = "Payload too large"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"Request bodies may be at most {limit} bytes")


class ClaimConflictError(ConflictError):
    """A claim or report that the job's claim does not allow this caller; titled by why.

    Each subclass names one reason, so that a client reads from the title
    alone whether to try another job, claim this one first, or give up on it.
    """

    title = "Claim conflict"

    def __init__(self, job_id: uuid.UUID, detail: str) -> None:
        self.job_id = job_id
        super().__init__(detail)


class JobClaimedElsewhereError(ClaimConflictError):
    """Someone else holds the job (another HTTP caller, or a Celery worker)."""

    title = "Job already claimed"


class JobNotClaimedError(ClaimConflictError):
    """Nobody holds the job: a report on it must claim it first."""

    title = "Job not claimed"


class JobNotRunningError(ClaimConflictError):
    """The job's run has ended (or it was cancelled): there is nothing left to claim or report."""

    title = "Job not running"


class JobDeferredError(ClaimConflictError):
    """The job's service may not start it now: held, or running as many as ``max_running``."""

    title = "Job cannot start now"


class JobNotGivenBackError(ClaimConflictError):
    """Only the holder's first attempt gives a claim back; this one cannot."""

    title = "Job cannot be given back"


def claim_refused(job_id: uuid.UUID, state: str | None) -> ClaimConflictError:
    """The conflict of a claim or report that found the job's claim in ``state``."""
    if state == "deferred":
        return JobDeferredError(
            job_id,
            f"Job {job_id} cannot start now: its service is held, or runs as many jobs "
            "as its max_running allows",
        )
    if state == "running":
        return JobClaimedElsewhereError(job_id, f"Job {job_id} is running: someone else claimed it")
    if state in (None, "registered"):
        return JobNotClaimedError(job_id, f"Job {job_id} is not claimed: claim it before reporting")
    return JobNotRunningError(job_id, f"Job {job_id} is not running (its claim is {state})")


class ErrorList(TopChefError):
    """Several errors found in one request, reported together."""

    def __init__(self, errors: Sequence[TopChefError]) -> None:
        if not errors:
            raise ValueError("ErrorList needs at least one error")
        self.errors = tuple(errors)
        self.status_code = aggregate_status_code(self.errors)
        self.title = self.errors[0].title
        super().__init__("; ".join(error.detail for error in self.errors))


class ServerError(TopChefError):
    """A failure of the gateway or what it depends on, told without its internals."""

    def __init__(self, status_code: int, title: str, detail: str) -> None:
        self.status_code = status_code
        self.title = title
        super().__init__(detail)
