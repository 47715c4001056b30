"""The gateway's Flask application: TopChef's REST API on this broker.

``create_app(settings)`` builds it; ``broker.gateway.server`` serves it with
waitress. Every handler shares one ``Gateway``: the settings, a producer whose
sessions publish the jobs they commit (the outbox), Redis, and the dispatcher
that hands jobs to HTTP workers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import redis
import sqlalchemy as sa
from flask import Flask, Response, request
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import (
    HTTPException,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
)

from broker.errors import (
    BrokerUnavailableError,
    ConflictError,
    DeserializationError,
    MethodNotAllowedError,
    TopChefError,
)
from broker.gateway import artifacts, jobs, metadata, openapi, queue, services, validator
from broker.gateway.auth import check_token
from broker.gateway.context import GENERATION_KEY, LEGACY_PREFIX, Gateway, gateway
from broker.gateway.envelope import error_response
from broker.gateway.errors import PayloadTooLargeError, RouteNotFoundError, ServerError
from broker.settings import Settings

log = logging.getLogger(__name__)

#: Errors that mean the database cannot be reached, not that the request is wrong.
_DATABASE_DOWN = (sa.exc.OperationalError, sa.exc.InterfaceError)


def create_app(settings: Settings | None = None) -> Flask:
    """The WSGI application, configured by ``settings`` (default: ``TOPCHEF_*``)."""
    settings = (settings or Settings.from_env()).require(broker=True, database=True)
    app = Flask("broker.gateway", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.api_max_body_bytes
    app.extensions["topchef"] = Gateway(settings)
    app.before_request(_before_request)
    app.register_error_handler(Exception, _error)
    for module in (metadata, services, queue, jobs, validator, openapi, artifacts):
        module.register(app)
    app.wsgi_app = Generations(MethodOverride(app.wsgi_app))  # type: ignore[method-assign]
    return app


def _before_request() -> None:
    """A body over the limit is refused first, token or not, as waitress refuses one far over it."""
    settings = gateway().settings
    if (request.content_length or 0) > settings.api_max_body_bytes:
        raise PayloadTooLargeError(settings.api_max_body_bytes)
    check_token(settings.api_token)


def _error(error: Exception) -> Response:
    """Every failure, in TopChef's error envelope; internals are logged, never sent."""
    reported = _reported(error)
    headers = {}
    if reported.status_code == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="topchef"'
    if isinstance(reported, MethodNotAllowedError):
        headers["Allow"] = ", ".join(reported.allowed_methods)
    return error_response(reported, headers)


def _reported(error: Exception) -> TopChefError:
    if isinstance(error, TopChefError):
        return error
    if isinstance(error, RequestEntityTooLarge):
        return PayloadTooLargeError(gateway().settings.api_max_body_bytes)
    if isinstance(error, NotFound):
        return RouteNotFoundError(request.path)
    if isinstance(error, MethodNotAllowed):
        return MethodNotAllowedError(request.method, sorted(error.valid_methods or ()))
    if isinstance(error, HTTPException):
        code = error.code or 500
        return ServerError(code, error.name, error.description or error.name)
    if isinstance(error, StaleDataError):
        return ConflictError("The job changed while this request ran; read it and try again")
    if isinstance(error, sa.exc.DataError):
        log.info("the database refused a value: %s", error)
        return DeserializationError("body", "a value is out of the range the database can store")
    if isinstance(error, _DATABASE_DOWN):
        log.warning("database unavailable: %s", error)
        return ServerError(503, "Database unavailable", "The database cannot be reached")
    if isinstance(error, redis.RedisError):
        log.warning("message broker unavailable: %s", error)
        return BrokerUnavailableError("The message broker cannot be reached")
    log.exception("unexpected error in %s %r", request.method, request.path, exc_info=error)
    return ServerError(500, "Internal error", "An unexpected error; see the gateway's log")


StartResponse = Any


class MethodOverride:
    """Honour ``X-HTTP-Method-Override`` on POST: Java's HttpURLConnection cannot send PATCH.

    Only POST is rewritten, and only into a method that may carry a body, so a
    link someone follows (a GET) can never become a DELETE.
    """

    #: What ``X-HTTP-Method-Override`` may turn a POST into.
    OVERRIDABLE = frozenset({"PATCH", "PUT", "DELETE"})

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        wanted = str(environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "")).strip().upper()
        if str(environ.get("REQUEST_METHOD", "")).upper() == "POST" and wanted in self.OVERRIDABLE:
            environ["REQUEST_METHOD"] = wanted
        result: Iterable[bytes] = self.app(environ, start_response)
        return result


class Generations:
    """Serve TopChefClient's older API under ``/legacy``, beside the current one at ``/``.

    The prefix moves to ``SCRIPT_NAME``, so the same routes answer and every
    link the gateway writes (``links.link``) stays under the prefix the client was
    given; the handlers ask ``context.legacy()`` where the two APIs differ.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        if path == LEGACY_PREFIX or path.startswith(LEGACY_PREFIX + "/"):
            environ[GENERATION_KEY] = "legacy"
            environ["SCRIPT_NAME"] = str(environ.get("SCRIPT_NAME", "")) + LEGACY_PREFIX
            environ["PATH_INFO"] = path[len(LEGACY_PREFIX) :] or "/"
        result: Iterable[bytes] = self.app(environ, start_response)
        return result
