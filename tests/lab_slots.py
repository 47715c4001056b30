"""Handlers for the service-control tests' workers (``topchef worker lab_slots``).

Each run writes itself into a ledger of its own in Redis (``starts``), apart
from the broker's record, so a test can count what actually ran, how often,
and in which order, against what SQL says.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from broker.worker import handles

#: One service, started one job at a time (``max_running``) or held, per test.
INSTRUMENT = "Instrument"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"tag": {"type": "string"}, "hold": {"type": "boolean"}},
    "required": ["tag"],
}
RESULTS: dict[str, Any] = {"type": "object", "properties": {"tag": {"type": "string"}}}
#: How long a run that is not held lasts: long enough for two runs at once to overlap.
RUN_SECONDS = 0.02


def _redis() -> redis.Redis:
    url = os.environ["TOPCHEF_BROKER_URL"].replace("redis+socket://", "unix://")
    return redis.Redis.from_url(url)


def starts_key() -> str:
    return "test:slots:starts"


def release_key(tag: str) -> str:
    return f"test:slots:release:{tag}"


@handles(INSTRUMENT)
def measure(parameters: dict[str, Any]) -> dict[str, Any]:
    """Records its start; held ones wait for the test to release them (or to be killed)."""
    client = _redis()
    tag = parameters["tag"]
    client.rpush(starts_key(), tag)
    if parameters.get("hold"):
        deadline = time.monotonic() + 120
        while not client.exists(release_key(tag)) and time.monotonic() < deadline:
            time.sleep(0.02)
    else:
        time.sleep(RUN_SECONDS)  # the instrument's own time, not a wait on another thread
    return {"tag": tag}
