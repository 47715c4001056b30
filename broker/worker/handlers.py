"""Declaring lab-worker handlers: ``@handles("Service name")``.

A worker module is plain Python: each decorated function takes a job's
parameters and returns its results. ``topchef worker MODULE`` imports the
module and serves every handler declared in it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Handler = Callable[[dict[str, Any]], dict[str, Any]]

#: Reports progress of the job running in this context (set by the runtime).
ProgressReporter = Callable[[float, str | None], None]


@dataclass(frozen=True, slots=True)
class Declaration:
    """One handler and the name of the service it serves."""

    service_name: str
    function: Handler


_declared: dict[str, Declaration] = {}
_reporter: contextvars.ContextVar[ProgressReporter | None] = contextvars.ContextVar(
    "topchef_progress", default=None
)


def handles(service_name: str) -> Callable[[Handler], Handler]:
    """Declare ``function`` as the handler of the service called ``service_name``.

    The function receives the job's parameters (already validated against the
    service's registration schema) and returns its results, which the worker
    validates against the result schema before reporting them. An exception
    it raises makes the job ERROR with the exception's type and message.
    """
    if not isinstance(service_name, str) or not service_name:
        raise TypeError("handles() needs the service's name, e.g. @handles('Echo')")

    def register(function: Handler) -> Handler:
        existing = _declared.get(service_name)
        if existing is not None and existing.function is not function:
            raise ValueError(
                f"service {service_name!r} already has a handler: {existing.function.__qualname__}"
            )
        _declared[service_name] = Declaration(service_name, function)
        return function

    return register


def declared() -> dict[str, Declaration]:
    """Every handler declared so far, by service name."""
    return dict(_declared)


def progress(fraction: float, message: str | None = None) -> None:
    """Report how far the running job has got (0 to 1), with an optional note.

    Call it from a handler as often as you like: reports are throttled before
    they reach the broker. Outside a job it does nothing, so handlers stay
    testable as plain functions.
    """
    reporter = _reporter.get()
    if reporter is not None:
        reporter(min(1.0, max(0.0, float(fraction))), message)


def reporting_to(reporter: ProgressReporter | None) -> contextvars.Token[ProgressReporter | None]:
    """Route ``progress`` calls in this context to ``reporter`` (the runtime's hook)."""
    return _reporter.set(reporter)


def stop_reporting(token: contextvars.Token[ProgressReporter | None]) -> None:
    _reporter.reset(token)
