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


def active_key() -> str:
    """How many runs are inside the handler now, counted atomically by Redis."""
    return "test:slots:active"


def most_active_key() -> str:
    """The largest value ``active_key`` reached: the most runs ever at once."""
    return "test:slots:most-active"


def release_key(tag: str) -> str:
    return f"test:slots:release:{tag}"


@handles(INSTRUMENT)
def measure(parameters: dict[str, Any]) -> dict[str, Any]:
    """Records its start; held ones wait for the test to release them (or to be killed)."""
    client = _redis()
    tag = parameters["tag"]
    client.rpush(starts_key(), tag)
    active = int(client.incr(active_key()))
    client.eval(_KEEP_MOST, 1, most_active_key(), active)
    try:
        if parameters.get("hold"):
            deadline = time.monotonic() + 120
            while not client.exists(release_key(tag)) and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            time.sleep(RUN_SECONDS)  # the instrument's own time, not a wait on another thread
    finally:
        client.decr(active_key())
    return {"tag": tag}


# Keeps the larger of the stored value and ARGV[1], in one step.
_KEEP_MOST = """
local most = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > most then redis.call('SET', KEYS[1], ARGV[1]) end
return most
"""
