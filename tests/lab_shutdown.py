"""Handlers for the shutdown tests (``topchef worker lab_shutdown``): instruments with a safe state.

Each counts its runs (``lab.runs_key``) and makes its instrument safe in an
``on_abort`` callback that counts its calls (``shutter_key``), so that a test
sees the safe state reached, and reached once.
"""

from __future__ import annotations

import time
from typing import Any

from lab import _redis, release_key, runs_key

from broker.worker import Aborted, handles, on_abort, progress

#: Steps with ``progress()`` and returns partial results when aborted.
STEPPING = "Stepping"
#: Never looks for an abort: its exposure ends when the shutter closes (or when released).
EXPOSING = "Exposing"
#: Never looks, and goes on whatever happens to its shutter (until released).
STUCK = "Stuck"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"tag": {"type": "string"}},
    "required": ["tag"],
}
#: Complete results have both fields: partial ones (an aborted run's) may lack ``total``.
RESULTS: dict[str, Any] = {
    "type": "object",
    "properties": {"done": {"type": "integer"}, "total": {"type": "integer"}},
    "required": ["done", "total"],
}
STEPS = 100_000
#: How long a handler holds before giving up by itself, should a test forget it.
HOLD_LIMIT = 120.0


def shutter_key(tag: str) -> str:
    """Counts the closings of the run's shutter: its on_abort callback's calls."""
    return f"test:shutter:{tag}"


def _open_shutter(tag: str) -> None:
    client = _redis()
    client.incr(runs_key(tag))
    on_abort(lambda: client.incr(shutter_key(tag)))


def _closed(tag: str) -> bool:
    return bool(_redis().exists(shutter_key(tag)))


@handles(STEPPING)
def stepping(parameters: dict[str, Any]) -> dict[str, Any]:
    tag = parameters["tag"]
    _open_shutter(tag)
    done = 0
    try:
        for done in range(STEPS):
            progress(done / STEPS, f"step {done}")
            time.sleep(0.005)
    except Aborted:
        return {"done": done}
    return {"done": STEPS, "total": STEPS}


@handles(EXPOSING)
def exposing(parameters: dict[str, Any]) -> dict[str, Any]:
    """One long exposure that never calls ``progress`` or ``aborted``: it ends with the light."""
    tag = parameters["tag"]
    _open_shutter(tag)
    client = _redis()
    deadline = time.monotonic() + HOLD_LIMIT
    while not _closed(tag) and not client.exists(release_key(tag)):
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return {"done": 1, "total": 1}


@handles(STUCK)
def stuck(parameters: dict[str, Any]) -> dict[str, Any]:
    """Ignores everything but the test's release."""
    tag = parameters["tag"]
    _open_shutter(tag)
    client = _redis()
    deadline = time.monotonic() + HOLD_LIMIT
    while not client.exists(release_key(tag)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"done": 1, "total": 1}
