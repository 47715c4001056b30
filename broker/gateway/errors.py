"""Errors only the HTTP gateway can raise, under the one root ``TopChefError``."""

from __future__ import annotations

from collections.abc import Sequence

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


class RouteNotFoundError(TopChefError):
    """A URL that names no resource of this API."""

    status_code = 404
    title = "Not found"

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path} is not a route of this API")


class PayloadTooLargeError(TopChefError):
    """A request body over the configured limit (``TOPCHEF_API_MAX_BODY_BYTES``)."""

    status_code = 413
    title = "Payload too large"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"Request bodies may be at most {limit} bytes")


class ClaimConflictError(ConflictError):
    """Someone else holds (or ended) the job: the compare-and-set of a claim lost."""

    title = "Job already claimed"


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
