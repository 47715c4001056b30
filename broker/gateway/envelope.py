"""TopChef's response envelope, and reading what a request carries.

Every answer is ``{"data", "meta", "links": {"self"}}``; every failure is
``{"errors": [{"status_code", "title", "detail"}]}`` under the status code the
errors aggregate to. Request bodies are parsed strictly: JSON only, no NaN,
no strings PostgreSQL cannot store, so bad input is a 400 that changes nothing.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from flask import Response, request

from broker.contract.ids import as_uuid
from broker.errors import DeserializationError, TopChefError
from broker.gateway.errors import ErrorList, RequestNotJSONError
from broker.gateway.links import here
from broker.models.interfaces.job import Job

Status = Job.JobStatus

#: Job listings are paged; a page holds at most this many jobs.
MAX_PAGE = 1000
DEFAULT_PAGE = 100


def envelope(
    data: Any,
    status: int = 200,
    meta: Mapping[str, Any] | None = None,
    links: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A JSON response in TopChef's envelope; ``links.self`` is the request's resource."""
    body = {"data": data, "meta": dict(meta or {}), "links": {"self": here(), **(links or {})}}
    return _json(_dumps(body), status, headers)


def no_content() -> Response:
    """TopChef's answer when a queue is empty: 204 and no body."""
    return Response(status=204)


def error_response(error: TopChefError, headers: Mapping[str, str] | None = None) -> Response:
    """The errors of ``error`` (one, or an ``ErrorList``) under their aggregate status code."""
    return _json(error_document(error), error.status_code, headers)


def error_document(error: TopChefError) -> str:
    """The body of every failure: ``{"errors": [...]}`` (waitress's own refusals too)."""
    errors = error.errors if isinstance(error, ErrorList) else (error,)
    return _dumps({"errors": [item.as_dict() for item in errors]})


def _json(body: str, status: int, headers: Mapping[str, str] | None) -> Response:
    response = Response(body, status=status, mimetype="application/json")
    # What a request put in an answer is never read as a page by a browser that sniffs.
    response.headers["X-Content-Type-Options"] = "nosniff"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _dumps(body: object) -> str:
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


# -- request bodies ----------------------------------------------------------------


def has_body() -> bool:
    return bool(request.get_data(cache=True))


def json_body() -> dict[str, Any]:
    """The request body as a JSON object, whatever its Content-Type (curl's -d sends form's)."""
    raw = request.get_data(cache=True)
    if not raw:
        raise RequestNotJSONError("the body is empty")
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:
        raise RequestNotJSONError(str(error)[:200]) from None
    if not isinstance(value, dict):
        raise DeserializationError("body", "must be a JSON object")
    _check_storable(value, ())
    return value


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _check_storable(value: object, path: tuple[object, ...]) -> None:
    """Refuse strings no database can hold (NUL, lone surrogates) anywhere in the body."""
    stack: list[tuple[object, tuple[object, ...]]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            _check_string(item, where)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_string(key, where)
                stack.append((child, (*where, key)))
        elif isinstance(item, list):
            stack.extend((child, (*where, index)) for index, child in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            raise DeserializationError("body", "numbers must be finite", where)


def _check_string(text: str, where: tuple[object, ...]) -> None:
    if "\x00" in text:
        raise DeserializationError("body", "strings may not contain NUL (\\u0000)", where)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DeserializationError("body", "strings must be valid Unicode", where) from None


def field(body: Mapping[str, Any], name: str, kinds: type | tuple[type, ...], what: str) -> Any:
    """``body[name]`` if it is present and of ``kinds`` (never a bool for a number)."""
    value = body[name]
    numeric = kinds in (int, float) or (isinstance(kinds, tuple) and float in kinds)
    if not isinstance(value, kinds) or (numeric and isinstance(value, bool)):
        raise DeserializationError(name, f"must be {what}")
    return value


def require(body: Mapping[str, Any], names: Iterable[str]) -> None:
    """Report every missing field at once, as TopChef did."""
    missing = [DeserializationError(name, "is required") for name in names if name not in body]
    if len(missing) == 1:
        raise missing[0]
    if missing:
        raise ErrorList(missing)


# -- ids and query parameters --------------------------------------------------------


def parse_id(text: str) -> uuid.UUID:
    """A path id; a malformed one names nothing, so it is a 404 (as in TopChef)."""
    return as_uuid(text)  # NotUUIDError: 404


def query_int(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise DeserializationError(name, f"must be a whole number, got {raw[:100]!r}") from None
    if not low <= value <= high:
        raise DeserializationError(name, f"must be from {low} to {high}, got {value}")
    return value


def query_number(name: str, default: float, low: float, high: float) -> float:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise DeserializationError(name, f"must be a number, got {raw[:100]!r}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise DeserializationError(name, f"must be from {low:g} to {high:g}, got {raw[:100]!r}")
    return value


def query_statuses() -> list[Status]:
    """``?status=REGISTERED&status=WORKING`` or ``?status=REGISTERED,WORKING``."""
    wanted: list[Status] = []
    for raw in request.args.getlist("status"):
        for name in filter(None, (part.strip().upper() for part in raw.split(","))):
            try:
                wanted.append(Status(name))
            except ValueError:
                choices = ", ".join(status.value for status in Status)
                raise DeserializationError("status", f"must be one of {choices}") from None
    return wanted


def page_links(offset: int, limit: int, total: int) -> dict[str, str]:
    """``next``/``prev`` links for a paged listing, keeping its other query parameters."""
    links: dict[str, str] = {}
    others = [(k, v) for k, v in request.args.items(multi=True) if k not in ("offset", "limit")]

    def url(new_offset: int) -> str:
        return here([*others, ("offset", str(new_offset)), ("limit", str(limit))])

    if offset + limit < total:
        links["next"] = url(offset + limit)
    if offset > 0:
        links["prev"] = url(max(0, offset - limit))
    return links
