"""Declaring lab-worker handlers: ``@handles("Service name")``, and what they may call.

A worker module is plain Python: each decorated function takes a job's
parameters and returns its results. ``topchef worker MODULE`` imports the
module and serves every handler declared in it.

While it runs, a handler may report ``progress``, learn whether its job was
aborted (``aborted``, or the ``Aborted`` that ``progress`` raises) and register
a safe-state callback (``on_abort``), or ask to run again later (``Retry``).
Aborts are cooperative because an instrument must be brought to a safe state
by the code that drives it: nothing interrupts a handler that does not ask.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

Handler = Callable[[dict[str, Any]], dict[str, Any]]

#: Reports progress of the job running in this context (set by the runtime).
ProgressReporter = Callable[[float, str | None], None]


class Aborted(Exception):
    """The running job was aborted: bring the instrument to a safe state and return.

    Raised by ``progress`` once an abort was requested. A handler may catch it,
    make its instrument safe and return partial results (kept, unvalidated, on
    the CANCELLED job), or let it propagate. A control-flow signal, outside the
    ``TopChefError`` tree.
    """

    def __init__(self, reason: str, by: str, at: str) -> None:
        super().__init__(f"aborted at {at} by {by}" + (f": {reason}" if reason else ""))
        self.reason = reason
        self.by = by
        self.at = at


class Retry(Exception):
    """Ask for the job to run again, ``after`` seconds from now (or the service's backoff).

    Only a service created with ``retries=True`` runs it again, up to its
    ``max_attempts`` runs in all; elsewhere the job ends ERROR, saying so. A
    control-flow signal, outside the ``TopChefError`` tree.
    """

    def __init__(self, reason: str = "", *, after: float | None = None) -> None:
        if after is not None and not 0 <= after <= MAX_RETRY_AFTER:
            raise ValueError(f"after must be from 0 to {MAX_RETRY_AFTER:g} seconds, got {after!r}")
        super().__init__(reason or "the handler asked for a retry")
        self.reason = reason
        self.after = after


#: The longest wait a retry may ask for (a day): longer is a new job, not a retry.
MAX_RETRY_AFTER = 86_400.0


class AbortWatch(Protocol):
    """The runtime's view of the running job's abort request (``aborted``, ``on_abort``)."""

    def requested(self) -> Aborted | None:
        """The abort, once requested (polled at most every few hundred ms)."""
        ...

    def on_abort(self, callback: Callable[[], object]) -> None: ...


@dataclass(frozen=True, slots=True)
class Declaration:
    """One handler and the name of the service it serves."""

    service_name: str
    function: Handler


_declared: dict[str, Declaration] = {}
_reporter: contextvars.ContextVar[ProgressReporter | None] = contextvars.ContextVar(
    "topchef_progress", default=None
)
_watch: contextvars.ContextVar[AbortWatch | None] = contextvars.ContextVar(
    "topchef_abort", default=None
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
    testable as plain functions. Raises ``Aborted`` once the job was aborted.
    """
    reporter = _reporter.get()
    if reporter is not None:
        reporter(min(1.0, max(0.0, float(fraction))), message)
    watch = _watch.get()
    if watch is not None and (abort := watch.requested()) is not None:
        raise abort


def aborted() -> bool:
    """Whether the running job was aborted (False outside a job); cheap to call in a loop."""
    watch = _watch.get()
    return watch is not None and watch.requested() is not None


def on_abort(callback: Callable[[], object]) -> None:
    """Call ``callback`` (in the worker, once) when the running job's abort is first seen.

    For the safe state of an instrument: close a shutter, park a stage. It
    runs in the handler's thread, at the ``progress`` or ``aborted`` call that
    sees the abort first; or, when the worker is shut down (a second Ctrl-C)
    and the handler does not look in time, in the worker's own thread, so that
    the instrument is made safe even by a handler that never looks. Outside a
    job it does nothing.
    """
    watch = _watch.get()
    if watch is not None:
        watch.on_abort(callback)


def watching(watch: AbortWatch | None) -> contextvars.Token[AbortWatch | None]:
    """Route ``aborted``/``on_abort`` in this context to ``watch`` (the runtime's hook)."""
    return _watch.set(watch)


def stop_watching(token: contextvars.Token[AbortWatch | None]) -> None:
    _watch.reset(token)


def reporting_to(reporter: ProgressReporter | None) -> contextvars.Token[ProgressReporter | None]:
    """Route ``progress`` calls in this context to ``reporter`` (the runtime's hook)."""
    return _reporter.set(reporter)


def stop_reporting(token: contextvars.Token[ProgressReporter | None]) -> None:
    _reporter.reset(token)
