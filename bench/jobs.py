"""TopChef's handlers for the benchmark (``topchef worker bench.jobs``).

``BenchNoop`` does nothing; ``BenchProbe`` records when it started, on the
machine-wide monotonic clock, so the latency workload can time submit →
handler start across processes. ``BenchInstrument`` and ``BenchExclusive``
(``bench.controls``) record the order their runs start in, and how many run at
once, counted atomically in Redis, and take ``seconds`` to run.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from bench.payload import EXCLUSIVE_SERVICE, INSTRUMENT_SERVICE, PROBE_SERVICE, SERVICE
from broker.worker import handles

STARTED = "bench:probe:started"
#: The instruments' ledger: each run's index as it starts; runs inside now; the most at once.
INSTRUMENT_STARTED = "bench:instrument:started"
INSTRUMENT_ACTIVE = "bench:instrument:active"
INSTRUMENT_MOST = "bench:instrument:most"


@handles(SERVICE)
def noop(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


_probe_client: redis.Redis | None = None


@handles(PROBE_SERVICE)
def probe(parameters: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    global _probe_client
    if _probe_client is None:
        _probe_client = redis.Redis.from_url(os.environ["TOPCHEF_BROKER_URL"])
    _probe_client.rpush(STARTED, f"{parameters['index']} {started!r}")
    return {"ok": True}


_instrument_client: redis.Redis | None = None

# Keeps the larger of the stored value and ARGV[1], in one step.
_KEEP_MOST = """
local most = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > most then redis.call('SET', KEYS[1], ARGV[1]) end
return most
"""


@handles(INSTRUMENT_SERVICE)
@handles(EXCLUSIVE_SERVICE)
def instrument(parameters: dict[str, Any]) -> dict[str, Any]:
    global _instrument_client
    if _instrument_client is None:
        _instrument_client = redis.Redis.from_url(os.environ["TOPCHEF_BROKER_URL"])
    client = _instrument_client
    client.rpush(INSTRUMENT_STARTED, parameters["index"])
    client.eval(_KEEP_MOST, 1, INSTRUMENT_MOST, client.incr(INSTRUMENT_ACTIVE))
    try:
        time.sleep(parameters["seconds"])  # the instrument's own time
    finally:
        client.decr(INSTRUMENT_ACTIVE)
    return {"ok": True}
