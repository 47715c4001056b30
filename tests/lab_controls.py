"""Handlers for the job-control tests (``topchef worker lab_controls``): aborts and retries."""

from __future__ import annotations

import time
from typing import Any

from lab import _redis, runs_key

from broker.worker import Aborted, Retry, aborted, handles, on_abort, progress

ABORTABLE = "Abortable"
ABORT_UNCAUGHT = "Abort uncaught"
SAFE_STATE = "Safe state"
DEAF = "Deaf"
FLAKY = "Flaky"
FLAKY_TYPED = "Flaky typed"
FLAKY_STRICT = "Flaky strict"

#: Parameters: a tag (the runs counter's key) and, for the flaky ones, the run that succeeds.
TAGGED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "tag": {"type": "string"},
        "succeed_on": {"type": "integer"},
        "after": {"type": "number"},
    },
    "required": ["tag"],
}
#: Complete results have both fields: partial ones (an aborted run's) may lack ``total``.
COUNT_RESULTS: dict[str, Any] = {
    "type": "object",
    "properties": {"done": {"type": "integer"}, "total": {"type": "integer"}},
    "required": ["done", "total"],
}
STEPS = 100_000


def safe_key(tag: str) -> str:
    return f"test:safe:{tag}"


def _count_run(parameters: dict[str, Any]) -> int:
    return int(_redis().incr(runs_key(parameters["tag"])))


@handles(ABORTABLE)
def abortable(parameters: dict[str, Any]) -> dict[str, Any]:
    """Steps until aborted; catches the abort, parks the instrument and returns partial results."""
    _count_run(parameters)
    done = 0
    try:
        for done in range(STEPS):
            progress(done / STEPS, "stepping")
            time.sleep(0.005)
    except Aborted:
        _redis().set(safe_key(parameters["tag"]), "parked")
        return {"done": done}
    return {"done": done, "total": STEPS}


@handles(ABORT_UNCAUGHT)
def abort_uncaught(parameters: dict[str, Any]) -> dict[str, Any]:
    """Steps until aborted, and lets the abort end its run."""
    _count_run(parameters)
    for done in range(STEPS):
        progress(done / STEPS)
        time.sleep(0.005)
    return {"done": STEPS, "total": STEPS}


@handles(SAFE_STATE)
def safe_state(parameters: dict[str, Any]) -> dict[str, Any]:
    """Registers a safe-state callback, then asks ``aborted()`` between steps."""
    _count_run(parameters)
    client = _redis()
    on_abort(lambda: client.incr(safe_key(parameters["tag"])))
    done = 0
    while not aborted() and done < STEPS:
        done += 1
        time.sleep(0.005)
    return {"done": done}


@handles(DEAF)
def deaf(parameters: dict[str, Any]) -> dict[str, Any]:
    """Never asks about aborts: runs until the test releases it, then completes."""
    from lab import release_key

    _count_run(parameters)
    client = _redis()
    deadline = time.monotonic() + 120
    while not client.exists(release_key(parameters["tag"])) and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"done": 1, "total": 1}


def _flaky(parameters: dict[str, Any], error: Exception) -> dict[str, Any]:
    run = _count_run(parameters)
    if run < parameters.get("succeed_on", 1):
        raise error
    return {"done": run, "total": run}


@handles(FLAKY)
def flaky(parameters: dict[str, Any]) -> dict[str, Any]:
    """Asks for a retry (``Retry(after=…)``) until its ``succeed_on``-th run."""
    return _flaky(parameters, Retry("instrument busy", after=parameters.get("after", 0.1)))


@handles(FLAKY_TYPED)
def flaky_typed(parameters: dict[str, Any]) -> dict[str, Any]:
    """Raises TimeoutError (its service retries those) until its ``succeed_on``-th run."""
    return _flaky(parameters, TimeoutError("no answer from the stage"))


@handles(FLAKY_STRICT)
def flaky_strict(parameters: dict[str, Any]) -> dict[str, Any]:
    """Asks for a retry, on a service that allows none."""
    return _flaky(parameters, Retry("instrument busy", after=0.1))
